// Deterministic math behind the baselines: exp/log/tail, Lloyd-Max codebooks, the symmetric
// eigen-solver and the random rotation.
#include "codec/baseline_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "codec/baseline_linalg.h"
#include "codec/baseline_test_util.h"
#include "codec/lloyd_max.h"

namespace kvwire::baseline {
namespace {

TEST(BaselineMathTest, LogAndExpMatchLibm) {
  for (double x : {1e-300, 1e-20, 0.001, 0.3, 0.5, 0.70710678, 0.99999, 1.0, 1.5, 2.0, 1e10}) {
    EXPECT_NEAR(DetLog(x), std::log(x), 4e-16 * std::max(1.0, std::fabs(std::log(x)))) << x;
  }
  for (double x : {-700.0, -50.0, -3.3, -0.5, -1e-9, 0.0, 0.25, 1.0, 30.0}) {
    EXPECT_NEAR(DetExp(x), std::exp(x), 1e-14 * std::exp(x)) << x;
  }
  EXPECT_EQ(DetExp(-800.0), 0.0);
}

TEST(BaselineMathTest, GaussianTailMatchesErfc) {
  for (double x = 0.0; x <= 9.0; x += 0.0625) {
    const double want = 0.5 * std::erfc(x / std::sqrt(2.0));
    EXPECT_NEAR(GaussianTail(x), want, 1e-12 * want + 1e-16) << x;
  }
}

TEST(BaselineMathTest, SplitMixGaussianIsStandardNormal) {
  SplitMix64 rng(123);
  std::vector<double> g(200000);
  FillGaussian(&rng, g.data(), g.size());
  double m1 = 0, m2 = 0, m4 = 0;
  for (double v : g) {
    m1 += v;
    m2 += v * v;
    m4 += v * v * v * v;
  }
  m1 /= g.size();
  m2 /= g.size();
  m4 /= g.size();
  EXPECT_NEAR(m1, 0.0, 0.01);
  EXPECT_NEAR(m2, 1.0, 0.01);
  EXPECT_NEAR(m4, 3.0, 0.06);
  SplitMix64 again(123);
  std::vector<double> h(g.size());
  FillGaussian(&again, h.data(), h.size());
  EXPECT_EQ(g, h);
}

// Distortion of a codebook under N(0,1), integrated with libm's erfc/exp (an independent path).
double Distortion(const GaussianCodebook& book) {
  auto phi = [](double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); };
  auto cdf = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  double total = 0.0;
  const size_t n = book.levels.size();
  for (size_t k = 0; k < n; ++k) {
    const double a = k == 0 ? -40.0 : book.thresholds[k - 1];
    const double b = k + 1 == n ? 40.0 : book.thresholds[k];
    const double c = book.levels[k];
    // int (x-c)^2 phi = [cdf - x phi] - 2c [-phi] + c^2 [cdf]
    const double m0 = cdf(b) - cdf(a), m1 = phi(a) - phi(b);
    const double m2 = m0 - (b * phi(b) - a * phi(a));
    total += m2 - 2.0 * c * m1 + c * c * m0;
  }
  return total;
}

TEST(LloydMaxTest, KnownGaussianCodebooks) {
  // Max (1960); the 4-bit value is 0.009497 in his table, 0.0095010 computed exactly.
  const double want[] = {0, 0.3633802, 0.1174818, 0.0345478, 0.0095010};
  for (int b = 1; b <= 4; ++b) {
    const GaussianCodebook& book = GaussianLloydMax(b);
    ASSERT_EQ(book.levels.size(), size_t{1} << b);
    ASSERT_EQ(book.thresholds.size(), (size_t{1} << b) - 1);
    EXPECT_NEAR(book.distortion, want[b], 2e-7) << b;
    EXPECT_NEAR(Distortion(book), book.distortion, 1e-7) << b;
    for (size_t k = 0; k < book.levels.size(); ++k) {
      EXPECT_EQ(book.levels[k], -book.levels[book.levels.size() - 1 - k]);
      if (k + 1 < book.levels.size()) {
        EXPECT_LT(book.levels[k], book.levels[k + 1]);
        EXPECT_NEAR(book.thresholds[k], 0.5 * (book.levels[k] + book.levels[k + 1]), 1e-6);
      }
    }
  }
  EXPECT_NEAR(GaussianLloydMax(1).levels[1], std::sqrt(2.0 / M_PI), 1e-7);
  const float max4[] = {0.1284f, 0.3881f, 0.6568f, 0.9424f, 1.2562f, 1.6181f, 2.0690f, 2.7326f};
  for (int k = 0; k < 8; ++k) EXPECT_NEAR(GaussianLloydMax(4).levels[8 + k], max4[k], 1e-4);
  const double more[] = {0.0025046684, 0.00064423967, 0.00016347823, 0.000041185083};
  for (int b = 5; b <= 8; ++b) {
    const GaussianCodebook& book = GaussianLloydMax(b);
    EXPECT_NEAR(book.distortion, more[b - 5], 1e-6 * more[b - 5]) << b;
    EXPECT_NEAR(Distortion(book), book.distortion, 1e-4 * book.distortion) << b;
    for (size_t k = 0; k + 1 < book.levels.size(); ++k)
      ASSERT_LT(book.levels[k], book.levels[k + 1]);
  }
  EXPECT_EQ(GaussianLloydMax(0).levels.size(), 0u);
  EXPECT_EQ(GaussianLloydMax(9).levels.size(), 0u);
}

TEST(LloydMaxTest, QuantizePicksTheNearestLevel) {
  const GaussianCodebook& book = GaussianLloydMax(3);
  for (float x = -5.0f; x <= 5.0f; x += 0.01f) {
    const uint32_t i = book.Quantize(x);
    for (size_t k = 0; k < book.levels.size(); ++k) {
      ASSERT_LE(std::fabs(x - book.levels[i]), std::fabs(x - book.levels[k]) + 1e-6f) << x;
    }
  }
}

void CheckEigen(size_t n, const std::vector<double>& a, const char* what) {
  std::vector<double> values, vectors;
  SymmetricEigen(n, a, &values, &vectors);
  double scale = 1e-300;
  for (double v : a) scale = std::max(scale, std::fabs(v));
  const std::vector<double> want = testing_util::JacobiEigenvalues(n, a);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NEAR(values[i], want[i], 1e-11 * scale * n) << what << " n=" << n << " i=" << i;
    if (i + 1 < n) {
      EXPECT_GE(values[i], values[i + 1]);
    }
    // A v = lambda v and orthonormality.
    for (size_t r = 0; r < n; ++r) {
      double av = 0.0;
      for (size_t c = 0; c < n; ++c) av += a[r * n + c] * vectors[i * n + c];
      ASSERT_NEAR(av, values[i] * vectors[i * n + r], 1e-10 * scale * n) << what << " n=" << n;
    }
    for (size_t j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (size_t c = 0; c < n; ++c) dot += vectors[i * n + c] * vectors[j * n + c];
      ASSERT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-12 * n) << what << " n=" << n;
    }
  }
  std::vector<double> values2, vectors2;
  SymmetricEigen(n, a, &values2, &vectors2);
  EXPECT_EQ(values, values2);
  EXPECT_EQ(vectors, vectors2);
}

TEST(SymmetricEigenTest, RandomAndDegenerateMatrices) {
  std::mt19937_64 rng(1);
  std::normal_distribution<double> g(0.0, 1.0);
  for (size_t n : {1, 2, 3, 5, 8, 17, 40, 64}) {
    std::vector<double> b(n * n), a(n * n, 0.0);
    for (double& v : b) v = g(rng);
    for (size_t i = 0; i < n; ++i) {  // a = b b^T (PSD, like a scatter matrix)
      for (size_t j = 0; j < n; ++j) {
        for (size_t k = 0; k < n; ++k) a[i * n + j] += b[i * n + k] * b[j * n + k];
      }
    }
    CheckEigen(n, a, "psd");
    std::vector<double> s(n * n);  // symmetric indefinite
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j <= i; ++j) s[i * n + j] = s[j * n + i] = g(rng);
    }
    CheckEigen(n, s, "indefinite");
    if (n > 1) {  // rank 2: many zero eigenvalues
      std::vector<double> low(n * n, 0.0);
      for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < n; ++j) low[i * n + j] = b[i] * b[j] + 3.0 * b[n + i] * b[n + j];
      }
      CheckEigen(n, low, "rank2");
    }
    std::vector<double> eye(n * n, 0.0), zero(n * n, 0.0), diag(n * n, 0.0);
    for (size_t i = 0; i < n; ++i) {
      eye[i * n + i] = 1.0;
      diag[i * n + i] = static_cast<double>(i % 3);
    }
    CheckEigen(n, eye, "identity");
    CheckEigen(n, zero, "zero");
    CheckEigen(n, diag, "repeated");
  }
}

TEST(RandomOrthogonalTest, OrthonormalDeterministicAndSeeded) {
  for (size_t d : {1, 2, 7, 64, 128}) {
    const std::vector<double> r = RandomOrthogonal(d, 42);
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        double dot = 0.0;
        for (size_t k = 0; k < d; ++k) dot += r[i * d + k] * r[j * d + k];
        ASSERT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-13) << d;
      }
    }
    EXPECT_EQ(r, RandomOrthogonal(d, 42));
    if (d > 1) {
      EXPECT_NE(r, RandomOrthogonal(d, 43));
    }
  }
}

}  // namespace
}  // namespace kvwire::baseline
