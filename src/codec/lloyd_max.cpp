#include "codec/lloyd_max.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include "codec/baseline_math.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace kvwire::baseline {
namespace {

constexpr double kInvSqrt2Pi = 0.39894228040143267794;

double Density(double x) { return kInvSqrt2Pi * DetExp(-0.5 * x * x); }

// Newton steps on the Lloyd-Max conditions; from the companding start 5-10 reach the tolerance.
constexpr int kMaxIterations = 200;
constexpr double kTolerance = 1e-14;  // on max |centroid - level|

// x with GaussianTail(x) == p, for p in (0, 0.5], by bisection (monotone, deterministic).
double TailInverse(double p) {
  double lo = 0.0, hi = 40.0;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (GaussianTail(mid) > p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

GaussianCodebook Compute(int bits) {
  const int n = 1 << bits;
  const int half = n / 2;  // levels of the positive half; the negative half mirrors them
  std::vector<double> c(half), t(half + 1);
  for (int k = 0; k < half; ++k) {
    c[k] = std::sqrt(3.0) * TailInverse(0.5 - (k + 0.5) / n);
  }
  // Lloyd-Max conditions: thresholds at midpoints, t_k = (c_{k-1} + c_k) / 2 (t_0 = 0 by
  // symmetry), and levels at the conditional means of their cells,
  //   m_k = E[x | t_k < x < t_{k+1}] = (phi(t_k) - phi(t_{k+1})) / (Q(t_k) - Q(t_{k+1})),
  // the last cell open (phi = Q = 0 at infinity). Lloyd's iteration c <- m(c) converges very
  // slowly at 7-8 bits, so solve c = m(c) by Newton: m's Jacobian is tridiagonal, with
  // dm/da = phi(a) (m - a) / P and dm/db = phi(b) (b - m) / P for a cell [a, b] of mass P.
  // A step that breaks the ordering of the levels falls back to a Lloyd step.
  std::vector<double> m(half), lower(half), diag(half), upper(half), step(half), sup(half);
  auto evaluate = [&] {
    t[0] = 0.0;
    for (int k = 1; k < half; ++k) t[k] = 0.5 * (c[k - 1] + c[k]);
    double residual = 0.0;
    for (int k = 0; k < half; ++k) {
      const bool last = k + 1 == half;
      const double a = t[k], pa = Density(a);
      const double b = last ? 0.0 : t[k + 1], pb = last ? 0.0 : Density(b);
      const double mass = GaussianTail(a) - (last ? 0.0 : GaussianTail(b));
      m[k] = (pa - pb) / mass;
      const double da = k > 0 ? pa * (m[k] - a) / mass : 0.0;  // t_0 does not move
      const double db = last ? 0.0 : pb * (b - m[k]) / mass;
      lower[k] = 0.5 * da;
      diag[k] = 0.5 * (da + db);
      upper[k] = 0.5 * db;
      residual = std::max(residual, std::fabs(m[k] - c[k]));
    }
    return residual;
  };
  for (int it = 0; it < kMaxIterations && evaluate() >= kTolerance; ++it) {
    // Solve (I - J) step = m - c with the Thomas algorithm (sup: the eliminated super-diagonal;
    // no pivoting: I - J is diagonally dominant near the solution).
    for (int k = 0; k < half; ++k) {
      const double sub = k > 0 ? -lower[k] : 0.0;
      const double den = (1.0 - diag[k]) - (k > 0 ? sub * sup[k - 1] : 0.0);
      sup[k] = -upper[k] / den;
      step[k] = ((m[k] - c[k]) - (k > 0 ? sub * step[k - 1] : 0.0)) / den;
    }
    for (int k = half - 2; k >= 0; --k) step[k] -= sup[k] * step[k + 1];
    bool ordered = c[0] + step[0] > 0.0;
    for (int k = 1; k < half && ordered; ++k) ordered = c[k] + step[k] > c[k - 1] + step[k - 1];
    for (int k = 0; k < half; ++k) c[k] = ordered ? c[k] + step[k] : m[k];
  }
  t[0] = 0.0;
  for (int k = 1; k < half; ++k) t[k] = 0.5 * (c[k - 1] + c[k]);

  GaussianCodebook book;
  book.bits = bits;
  book.levels.resize(n);
  book.thresholds.resize(n - 1);
  double captured = 0.0;  // sum over cells of level^2 * mass (centroid condition)
  for (int k = 0; k < half; ++k) {
    const bool last = k + 1 == half;
    const double mass = GaussianTail(t[k]) - (last ? 0.0 : GaussianTail(t[k + 1]));
    captured += 2.0 * c[k] * c[k] * mass;
    book.levels[half + k] = static_cast<float>(c[k]);
    book.levels[half - 1 - k] = -static_cast<float>(c[k]);
  }
  book.distortion = 1.0 - captured;
  for (int k = 0; k < half; ++k) {
    // Thresholds: 0 in the middle, the positive midpoints above it, their negatives below.
    const float th = static_cast<float>(t[k]);
    book.thresholds[half - 1 + k] = th;
    book.thresholds[half - 1 - k] = -th;
  }
  book.thresholds[half - 1] = 0.0f;
  return book;
}

}  // namespace

double GaussianTail(double x) {
  if (x < 3.0) {
    // Q(x) = 1/2 - phi(x) * sum_n x^(2n+1) / (1*3*...*(2n+1)); all terms positive.
    double term = x, sum = 0.0;
    for (int n = 1; n < 400; ++n) {
      sum += term;
      term *= x * x / (2 * n + 1);
      if (term < 1e-18 * sum) break;
    }
    return 0.5 - Density(x) * sum;
  }
  // Laplace's continued fraction, evaluated from depth 120 upwards (converges fast for x >= 3).
  double f = x;
  for (int k = 120; k >= 1; --k) f = x + k / f;
  return Density(x) / f;
}

const GaussianCodebook& GaussianLloydMax(int bits) {
  static GaussianCodebook books[kMaxLloydMaxBits + 1];
  static std::once_flag once[kMaxLloydMaxBits + 1];
  if (bits < 1 || bits > kMaxLloydMaxBits) return books[0];  // empty: callers validate bits
  std::call_once(once[bits], [bits] { books[bits] = Compute(bits); });
  return books[bits];
}

}  // namespace kvwire::baseline
