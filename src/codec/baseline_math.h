// Deterministic scalar math for codec tables that encoder and decoder must rebuild identically:
// a seeded PRNG (splitmix64), Gaussian samples (Marsaglia's polar method) and exp/log written
// with + - * / sqrt floor frexp ldexp only, which IEEE-754 defines exactly, so the same inputs
// give the same bits on every platform and C library (std::exp/std::log/std::normal_distribution
// do not promise that). Accuracy is a few ulp, plenty for codebooks and random rotations.
#pragma once

#include <cmath>
#include <cstdint>

// Keep a*b+c as two roundings on compilers that would otherwise fuse them.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace kvwire::baseline {

/// splitmix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a constant and mixed.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  /// Uniform in (0, 1): 53 random bits, centred in their cell so 0 never comes out.
  double NextOpenUnit() { return (static_cast<double>(Next() >> 11) + 0.5) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

inline constexpr double kLn2 = 0.69314718055994530942;

/// Natural logarithm of a finite x > 0.
inline double DetLog(double x) {
  int e = 0;
  double m = std::frexp(x, &e);  // x = m * 2^e, m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m *= 2.0;
    --e;
  }
  // log(m) = 2 atanh(z), z = (m - 1) / (m + 1), |z| <= 0.1716: 14 odd terms reach 1e-20.
  const double z = (m - 1.0) / (m + 1.0);
  const double z2 = z * z;
  double term = z, sum = 0.0;
  for (int k = 0; k < 14; ++k) {
    sum += term / static_cast<double>(2 * k + 1);
    term *= z2;
  }
  return 2.0 * sum + static_cast<double>(e) * kLn2;
}

/// e^x for x <= 709 (0 below -745).
inline double DetExp(double x) {
  if (x < -745.0) return 0.0;
  // Cody-Waite reduction: kLn2Hi has 11 trailing zero bits, so k * kLn2Hi is exact for |k| < 2^11.
  constexpr double kLn2Hi = 6.93147180369123816490e-01;
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  const double k = std::floor(x / kLn2 + 0.5);
  const double r = (x - k * kLn2Hi) - k * kLn2Lo;  // |r| <= 0.35 (+ rounding)
  double p = 1.0;                                  // Horner form of the Taylor series to degree 20
  for (int n = 20; n >= 1; --n) p = 1.0 + r * p / static_cast<double>(n);
  return std::ldexp(p, static_cast<int>(k));
}

/// Fills `n` standard normal samples (Marsaglia's polar method; two per accepted pair).
inline void FillGaussian(SplitMix64* rng, double* out, size_t n) {
  size_t i = 0;
  while (i < n) {
    const double v1 = 2.0 * rng->NextOpenUnit() - 1.0;
    const double v2 = 2.0 * rng->NextOpenUnit() - 1.0;
    const double s = v1 * v1 + v2 * v2;
    if (s >= 1.0 || s == 0.0) continue;
    const double f = std::sqrt(-2.0 * DetLog(s) / s);
    out[i++] = v1 * f;
    if (i < n) out[i++] = v2 * f;
  }
}

}  // namespace kvwire::baseline
