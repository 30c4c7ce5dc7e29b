#include "codec/baseline_linalg.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "codec/baseline_math.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace kvwire::baseline {
namespace {

// Householder reduction of the symmetric `a` to tridiagonal T = Q^T a Q. Returns the diagonal in
// d, the sub-diagonal in e (n - 1 entries) and Q^T (rows = Q's columns) in qt.
void Tridiagonalize(size_t n, std::vector<double>& a, std::vector<double>* d,
                    std::vector<double>* e, std::vector<double>* qt) {
  qt->assign(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) (*qt)[i * n + i] = 1.0;
  std::vector<double> v(n), p(n), w(n), s(n);
  for (size_t k = 0; k + 2 < n; ++k) {
    double below = 0.0;  // energy of column k under the sub-diagonal
    for (size_t i = k + 2; i < n; ++i) below += a[i * n + k] * a[i * n + k];
    if (below == 0.0) continue;  // this column is already tridiagonal
    const double sub = a[(k + 1) * n + k];
    const double norm = std::sqrt(below + sub * sub);
    const double alpha = sub > 0.0 ? -norm : norm;  // opposite sign: no cancellation in v
    for (size_t i = k + 1; i < n; ++i) v[i] = a[i * n + k];
    v[k + 1] = sub - alpha;
    const double beta = 2.0 / (below + v[k + 1] * v[k + 1]);  // H = I - beta v v^T
    // a_sub <- H a_sub H = a_sub - v w^T - w v^T with p = beta a_sub v, w = p - beta/2 (v.p) v.
    double vp = 0.0;
    for (size_t i = k + 1; i < n; ++i) {
      double acc = 0.0;
      for (size_t j = k + 1; j < n; ++j) acc += a[i * n + j] * v[j];
      p[i] = beta * acc;
      vp += v[i] * p[i];
    }
    for (size_t i = k + 1; i < n; ++i) w[i] = p[i] - 0.5 * beta * vp * v[i];
    for (size_t i = k + 1; i < n; ++i) {
      for (size_t j = k + 1; j < n; ++j) a[i * n + j] -= v[i] * w[j] + w[i] * v[j];
    }
    a[(k + 1) * n + k] = a[k * n + k + 1] = alpha;
    for (size_t i = k + 2; i < n; ++i) a[i * n + k] = a[k * n + i] = 0.0;
    // Q <- Q H, i.e. rows k+1.. of Q^T <- H (rows k+1.. of Q^T).
    std::fill(s.begin(), s.end(), 0.0);
    for (size_t i = k + 1; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) s[j] += v[i] * (*qt)[i * n + j];
    }
    for (size_t i = k + 1; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) (*qt)[i * n + j] -= beta * v[i] * s[j];
    }
  }
  d->resize(n);
  e->assign(n > 0 ? n - 1 : 0, 0.0);
  for (size_t i = 0; i < n; ++i) (*d)[i] = a[i * n + i];
  for (size_t i = 0; i + 1 < n; ++i) (*e)[i] = a[(i + 1) * n + i];
}

// Rotates rows k and k+1 of the n-column row-major `m`: (r_k, r_k1) <- (c r_k + s r_k1,
// -s r_k + c r_k1).
void RotateRows(double* m, size_t n, size_t k, double c, double s) {
  double* x = m + k * n;
  double* y = m + (k + 1) * n;
  for (size_t j = 0; j < n; ++j) {
    const double xj = x[j], yj = y[j];
    x[j] = c * xj + s * yj;
    y[j] = -s * xj + c * yj;
  }
}

// Implicit symmetric QR on the tridiagonal (d, e), accumulating the rotations into the rows of
// vt (which start as Q^T). On return d holds the eigenvalues and row i of vt its eigenvector.
void TridiagonalQr(size_t n, std::vector<double>& d, std::vector<double>& e,
                   std::vector<double>& vt) {
  constexpr double kEps = 2.220446049250313e-16;
  constexpr double kTiny = 1e-150;
  auto negligible = [&](size_t i) {  // e[i] couples d[i] and d[i+1]
    // The absolute floor keeps e^2 out of the subnormal range, where the Wilkinson shift below
    // would divide 0 by 0 (a fuzzer found this on a rank-deficient 4-token chunk).
    return std::fabs(e[i]) <= kEps * (std::fabs(d[i]) + std::fabs(d[i + 1])) ||
           std::fabs(e[i]) < kTiny;
  };
  size_t budget = 64 * n + 64;  // QR steps; convergence normally needs about 2 per eigenvalue
  size_t hi = n - 1;
  while (hi > 0 && budget > 0) {
    if (negligible(hi - 1)) {
      e[hi - 1] = 0.0;
      --hi;
      continue;
    }
    size_t lo = hi - 1;
    while (lo > 0 && !negligible(lo - 1)) --lo;
    if (lo > 0) e[lo - 1] = 0.0;
    --budget;
    // Wilkinson shift: the eigenvalue of the trailing 2x2 block closer to d[hi].
    const double delta = 0.5 * (d[hi - 1] - d[hi]);
    const double b = e[hi - 1];
    const double root = std::sqrt(delta * delta + b * b);
    const double denom = delta + (delta >= 0.0 ? root : -root);
    const double mu = denom != 0.0 ? d[hi] - b * b / denom : d[hi];
    // Chase the bulge from lo down to hi with Givens rotations T <- R T R^T.
    double x = d[lo] - mu, z = e[lo];
    for (size_t k = lo; k < hi; ++k) {
      const double r = std::sqrt(x * x + z * z);
      const double c = r > 0.0 ? x / r : 1.0;
      const double s = r > 0.0 ? z / r : 0.0;
      if (k > lo) e[k - 1] = r;
      const double p = d[k], q = d[k + 1], f = e[k];
      d[k] = c * c * p + 2.0 * c * s * f + s * s * q;
      d[k + 1] = s * s * p - 2.0 * c * s * f + c * c * q;
      e[k] = c * s * (q - p) + (c * c - s * s) * f;
      if (k + 1 < hi) {
        z = s * e[k + 1];  // new bulge at (k, k+2)
        e[k + 1] = c * e[k + 1];
        x = e[k];
      }
      RotateRows(vt.data(), n, k, c, s);
    }
  }
}

}  // namespace

void SymmetricEigen(size_t n, std::vector<double> a, std::vector<double>* values,
                    std::vector<double>* vectors) {
  values->assign(n, 0.0);
  vectors->assign(n * n, 0.0);
  if (n == 0) return;
  std::vector<double> d, e, vt;
  Tridiagonalize(n, a, &d, &e, &vt);
  TridiagonalQr(n, d, e, vt);

  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return d[i] > d[j]; });
  for (size_t r = 0; r < n; ++r) {
    const double* src = vt.data() + order[r] * n;
    size_t arg = 0;
    for (size_t j = 1; j < n; ++j) {
      if (std::fabs(src[j]) > std::fabs(src[arg])) arg = j;
    }
    const double sign = src[arg] < 0.0 ? -1.0 : 1.0;
    (*values)[r] = d[order[r]];
    for (size_t j = 0; j < n; ++j) (*vectors)[r * n + j] = sign * src[j];
  }
}

std::vector<double> RandomOrthogonal(size_t dim, uint64_t seed) {
  std::vector<double> m(dim * dim);
  SplitMix64 rng(seed ^ (static_cast<uint64_t>(dim) * 0x9e3779b97f4a7c15ull));
  FillGaussian(&rng, m.data(), m.size());
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < dim; ++i) {
      double* row = m.data() + i * dim;
      for (size_t k = 0; k < i; ++k) {
        const double* prev = m.data() + k * dim;
        double dot = 0.0;
        for (size_t j = 0; j < dim; ++j) dot += row[j] * prev[j];
        for (size_t j = 0; j < dim; ++j) row[j] -= dot * prev[j];
      }
      double norm = 0.0;
      for (size_t j = 0; j < dim; ++j) norm += row[j] * row[j];
      norm = std::sqrt(norm);
      // A Gaussian matrix is full rank with probability 1; norm > 0 in practice.
      const double inv = norm > 0.0 ? 1.0 / norm : 0.0;
      for (size_t j = 0; j < dim; ++j) row[j] *= inv;
    }
  }
  return m;
}

}  // namespace kvwire::baseline
