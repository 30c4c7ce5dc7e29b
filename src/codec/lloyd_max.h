// Lloyd-Max (MSE-optimal scalar) codebooks for the standard normal distribution N(0, 1).
//
// Computed on first use in double precision with the deterministic math of baseline_math.h
// (no libm transcendental): from a companding start (levels at sqrt(3) times the normal
// quantiles), Newton steps on the Lloyd-Max conditions (a Lloyd step whenever a Newton step would
// break the ordering) until every level is within 1e-14 of the centroid of its cell. So every
// build on an IEEE-754 machine gets the same bits. The codebook is exactly antisymmetric
// (levels[N-1-i] = -levels[i]).
#pragma once

#include <cstdint>
#include <vector>

namespace kvwire::baseline {

struct GaussianCodebook {
  int bits = 0;
  std::vector<float> levels;      // 2^bits reconstruction values, ascending
  std::vector<float> thresholds;  // 2^bits - 1 decision thresholds (midpoints), ascending
  double distortion = 0;          // E[(x - Q(x))^2] for x ~ N(0, 1), e.g. 0.1175 at 2 bits

  /// Index of x: the number of thresholds strictly below x (ties go to the lower level).
  uint32_t Quantize(float x) const {
    uint32_t i = 0;
    while (i < thresholds.size() && x > thresholds[i]) ++i;
    return i;
  }
};

inline constexpr int kMaxLloydMaxBits = 8;

/// The codebook for `bits` in [1, kMaxLloydMaxBits]; computed once, thread-safe, never freed.
const GaussianCodebook& GaussianLloydMax(int bits);

/// Upper tail probability Q(x) = P(N(0,1) > x) for x >= 0, deterministic (exposed for tests).
double GaussianTail(double x);

}  // namespace kvwire::baseline
