// Small dense linear algebra the baselines need, written to be deterministic: fixed operation
// order, no threads, no BLAS, only IEEE-exact primitives (+ - * / sqrt). Matrices are row-major
// double.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvwire::baseline {

/// Eigen-decomposition of the symmetric n x n matrix `a` (only values matter, it is copied):
/// Householder reduction to tridiagonal form, then implicit QR steps with Wilkinson shifts.
/// `values` gets the n eigenvalues in descending order; `vectors` (n x n) gets the matching
/// orthonormal eigenvectors as rows, each signed so that its first largest-magnitude component
/// is positive.
void SymmetricEigen(size_t n, std::vector<double> a, std::vector<double>* values,
                    std::vector<double>* vectors);

/// A random orthogonal dim x dim matrix (row-major) determined by (seed, dim): a Gaussian matrix
/// from splitmix64 (state seeded with seed ^ (dim * 0x9e3779b97f4a7c15)) through the polar
/// method (baseline_math.h), filled row by row, then orthonormalized row by row with modified
/// Gram-Schmidt applied twice.
std::vector<double> RandomOrthogonal(size_t dim, uint64_t seed);

}  // namespace kvwire::baseline
