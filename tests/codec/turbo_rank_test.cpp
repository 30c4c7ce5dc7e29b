// turbo<b> and rank-<r> payloads checked against the recipes, recomputed here in double from
// the payload fields.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "codec/baseline_linalg.h"
#include "codec/baseline_test_util.h"
#include "codec/lloyd_max.h"
#include "common/fp16.h"
#include "kvwire/codec.h"

namespace kvwire {
namespace {

using testing_util::GaussianInput;
using testing_util::MakeDesc;
using testing_util::MustCreate;

uint16_t Half(const std::vector<uint8_t>& p, size_t i) {
  return static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8));
}
// Value i of a b-bit LSB-first bit stream starting at byte `at`.
uint32_t Bits(const std::vector<uint8_t>& p, size_t at, size_t i, int b) {
  uint32_t v = 0;
  for (int j = 0; j < b; ++j) {
    const size_t k = i * b + j;
    v |= ((p[at + k / 8] >> (k % 8)) & 1u) << j;
  }
  return v;
}

TEST(TurboTest, PayloadIsNormAndLloydMaxIndicesOfTheRotatedVector) {
  for (int bits = 2; bits <= 4; ++bits) {
    auto codec = MustCreate("turbo" + std::to_string(bits) + ":seed=5");
    const ChunkDesc d = MakeDesc(16, 2, 64, KvKind::kKey);
    const std::vector<float> x = GaussianInput(d, 21, 3.0f);
    std::vector<uint8_t> p;
    ASSERT_TRUE(codec->Encode(d, x.data(), &p).ok());
    std::vector<float> y(d.elements());
    ASSERT_TRUE(codec->Decode(d, p, y.data()).ok());
    const size_t dim = 64, rows = 32;
    const std::vector<double> r = baseline::RandomOrthogonal(dim, 5);
    const baseline::GaussianCodebook& book = baseline::GaussianLloydMax(bits);
    size_t checked = 0;
    for (size_t row = 0; row < rows; ++row) {
      const float* xr = x.data() + row * dim;
      double ss = 0;
      for (size_t j = 0; j < dim; ++j) ss += static_cast<double>(xr[j]) * xr[j];
      ASSERT_EQ(Half(p, row), FloatToHalf(static_cast<float>(std::sqrt(ss))));
      const double n = HalfToFloat(Half(p, row));
      std::vector<double> z(dim);
      for (size_t i = 0; i < dim; ++i) {
        double yi = 0;
        for (size_t j = 0; j < dim; ++j) yi += r[i * dim + j] * xr[j];
        yi *= std::sqrt(static_cast<double>(dim)) / n;
        const uint32_t idx = Bits(p, 2 * rows, row * dim + i, bits);
        ASSERT_LT(idx, book.levels.size());
        z[i] = book.levels[idx];
        double margin = 1e9;
        for (float t : book.thresholds) margin = std::min(margin, std::fabs(yi - t));
        if (margin > 1e-4) {  // away from a decision threshold the index is unambiguous
          ASSERT_EQ(idx, book.Quantize(static_cast<float>(yi))) << "row " << row << " i " << i;
          ++checked;
        }
      }
      for (size_t j = 0; j < dim; ++j) {  // decode = R^T z * n / sqrt(D)
        double want = 0;
        for (size_t i = 0; i < dim; ++i) want += r[i * dim + j] * z[i];
        want *= n / std::sqrt(static_cast<double>(dim));
        ASSERT_NEAR(y[row * dim + j], want, 1e-5 * n) << row << " " << j;
      }
    }
    EXPECT_GT(checked, rows * dim * 99 / 100);
  }
}

TEST(TurboTest, SeedSelectsTheRotation) {
  const ChunkDesc d = MakeDesc(8, 1, 64, KvKind::kValue);
  const std::vector<float> x = GaussianInput(d, 22);
  auto encode = [&](const std::string& spec) {
    std::vector<uint8_t> p;
    EXPECT_TRUE(MustCreate(spec)->Encode(d, x.data(), &p).ok());
    return p;
  };
  EXPECT_EQ(encode("turbo3"), encode("turbo3:seed=1"));
  EXPECT_NE(encode("turbo3:seed=1"), encode("turbo3:seed=2"));
  // A payload decoded with the wrong seed is garbage but harmless (finite).
  std::vector<float> y(d.elements());
  ASSERT_TRUE(MustCreate("turbo3:seed=2")->Decode(d, encode("turbo3:seed=1"), y.data()).ok());
  for (float v : y) EXPECT_TRUE(std::isfinite(v));
}

TEST(RankTest, PayloadHoldsFp16MeanOrthonormalBasisAndCoefficients) {
  auto codec = MustCreate("rank-8");
  const ChunkDesc d = MakeDesc(40, 2, 32, KvKind::kKey);
  const std::vector<float> x = testing_util::StructuredInput(d, 23);
  std::vector<uint8_t> p;
  ASSERT_TRUE(codec->Encode(d, x.data(), &p).ok());
  const size_t t_n = 40, h_n = 2, dim = 32, r = 8;
  ASSERT_EQ(p.size(), 2 * h_n * (dim + r * dim + t_n * r));
  for (size_t h = 0; h < h_n; ++h) {
    for (size_t i = 0; i < dim; ++i) {
      double sum = 0;
      for (size_t t = 0; t < t_n; ++t) sum += x[(t * h_n + h) * dim + i];
      EXPECT_EQ(Half(p, h * dim + i), FloatToHalf(static_cast<float>(sum / t_n)));
    }
    const size_t basis = h_n * dim + h * r * dim;
    for (size_t a = 0; a < r; ++a) {
      for (size_t b = 0; b <= a; ++b) {
        double dot = 0;
        for (size_t i = 0; i < dim; ++i) {
          dot += static_cast<double>(HalfToFloat(Half(p, basis + a * dim + i))) *
                 HalfToFloat(Half(p, basis + b * dim + i));
        }
        EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 2e-3) << a << " " << b;
      }
    }
  }
}

TEST(RankTest, LowRankInputComesBackToFp16Precision) {
  // Exactly rank 3 around a mean: rank-3 keeps all of it.
  const ChunkDesc d = MakeDesc(50, 1, 16, KvKind::kValue);
  std::vector<float> x(d.elements());
  for (size_t t = 0; t < 50; ++t) {
    for (size_t i = 0; i < 16; ++i) {
      x[t * 16 + i] = 1.0f + std::sin(0.3f * t) * (i % 4) - std::cos(0.7f * t) * (i % 3 == 0) +
                      0.5f * static_cast<float>(t % 5) * (i < 8);
    }
  }
  std::vector<uint8_t> p;
  auto codec = MustCreate("rank-3");
  ASSERT_TRUE(codec->Encode(d, x.data(), &p).ok());
  std::vector<float> y(d.elements());
  ASSERT_TRUE(codec->Decode(d, p, y.data()).ok());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 5e-3 * (1 + std::fabs(x[i]))) << i;
}

}  // namespace
}  // namespace kvwire
