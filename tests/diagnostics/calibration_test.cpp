// Calibration: RoPE-averaged metric, metric basis vs PCA, codebook fitting, determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "codec/lloyd_max.h"
#include "diagnostics/calibration_stats.h"
#include "kvwire/codec.h"
#include "kvwire/diagnostics.h"

namespace kvwire {
namespace {

using diag::Mat;

Mat MatMul(const Mat& a, const Mat& b, size_t d) {
  Mat r(d * d, 0.0);
  for (size_t i = 0; i < d; ++i)
    for (size_t k = 0; k < d; ++k)
      for (size_t j = 0; j < d; ++j) r[i * d + j] += a[i * d + k] * b[k * d + j];
  return r;
}

// Explicit rotation matrix of RoPE at offset `delta`.
Mat RopeMatrix(const fraqtl::Rope& rope, size_t d, double delta) {
  Mat r(d * d, 0.0);
  for (size_t j = 0; j < d; ++j) {
    std::vector<double> e(d, 0.0);
    e[j] = 1.0;
    rope.RotateExact(e.data(), delta);
    for (size_t i = 0; i < d; ++i) r[i * d + j] = e[i];
  }
  return r;
}

TEST(Calibration, RopeAveragedMetricMatchesBruteForce) {
  for (bool neox : {false, true}) {
    const size_t d = 6;
    fraqtl::Rope rope{100.0, neox, 4};  // partial RoPE: channels 4, 5 do not rotate
    std::mt19937 rng(1);
    std::normal_distribution<double> n(0, 1);
    Mat a(d * d), s(d * d, 0.0);
    for (double& v : a) v = n(rng);
    for (size_t i = 0; i < d; ++i)
      for (size_t j = 0; j < d; ++j)
        for (size_t k = 0; k < d; ++k) s[i * d + j] += a[i * d + k] * a[j * d + k];
    const std::vector<double> mass = {0.5, 0.1, 0.0, 0.3, 0.05, 0.05};
    const Mat got = diag::RopeAveragedMetric(s, 2.0, mass, rope, d);
    Mat want(d * d, 0.0);
    for (size_t delta = 0; delta < mass.size(); ++delta) {
      const Mat r = RopeMatrix(rope, d, double(delta));
      Mat rt(d * d);
      for (size_t i = 0; i < d; ++i)
        for (size_t j = 0; j < d; ++j) rt[j * d + i] = r[i * d + j];
      const Mat m = MatMul(MatMul(r, s, d), rt, d);
      for (size_t i = 0; i < d * d; ++i) want[i] += 2.0 * mass[delta] * m[i];
    }
    for (size_t i = 0; i < d * d; ++i) EXPECT_NEAR(got[i], want[i], 1e-9) << i;
  }
}

TEST(Calibration, LloydMaxFitsTheSample) {
  std::mt19937 rng(2);
  std::normal_distribution<double> g(0, 1);
  std::vector<float> gauss(200000), lap(200000);
  std::exponential_distribution<double> e(std::sqrt(2.0));
  for (auto& x : gauss) x = static_cast<float>(g(rng));
  for (auto& x : lap) x = static_cast<float>((rng() & 1 ? 1 : -1) * e(rng));  // unit variance
  std::sort(gauss.begin(), gauss.end());
  std::sort(lap.begin(), lap.end());
  for (int b = 1; b <= 4; ++b) {
    double mse = 0;
    auto lv = FitLloydMax(gauss, b, &mse);
    ASSERT_EQ(lv.size(), size_t{1} << b);
    EXPECT_NEAR(mse, baseline::GaussianLloydMax(b).distortion,
                0.02 * baseline::GaussianLloydMax(b).distortion + 1e-3);
    // On a heavy-tailed sample the fitted codebook beats the Gaussian one.
    double mse_lap = 0;
    FitLloydMax(lap, b, &mse_lap);
    const auto& gb = baseline::GaussianLloydMax(b);
    double mse_g = 0;
    for (float x : lap) {
      const float y = gb.levels[gb.Quantize(x)];
      mse_g += (x - y) * (x - y);
    }
    EXPECT_LT(mse_lap, mse_g / lap.size()) << b;
  }
}

// V data whose large-variance directions the metric ignores: the metric basis spends its bits
// where the metric looks, PCA where the variance is, so under the metric the former wins.
TEST(Calibration, MetricBasisBeatsPcaUnderTheMetric) {
  const uint32_t d = 8, T = 4096;
  auto cache = KvCache::Create({1, T, 1, d}, DType::kF32);
  ASSERT_TRUE(cache.ok());
  std::mt19937 rng(4);
  std::normal_distribution<double> n(0, 1);
  std::vector<float> v(size_t{T} * d), k(size_t{T} * d);
  for (uint32_t t = 0; t < T; ++t) {
    for (uint32_t i = 0; i < d; ++i) {
      v[t * d + i] = static_cast<float>(n(rng) * (i < 4 ? 10.0 : 1.0));
      k[t * d + i] = static_cast<float>(n(rng));
    }
  }
  std::memcpy(cache->tensor(0, KvKind::kValue).data(), v.data(), v.size() * 4);
  std::memcpy(cache->tensor(0, KvKind::kKey).data(), k.data(), k.size() * 4);
  cache->metadata().rope_style = "none";
  Mat metric(d * d, 0.0);
  for (uint32_t i = 0; i < d; ++i) metric[i * d + i] = i < 4 ? 0.01 : 1.0;  // cares about 4..7
  double err[2] = {0, 0};
  int idx = 0;
  for (const char* basis : {"metric", "pca"}) {
    CalibrationOptions opt;
    opt.basis = basis;
    Calibrator::Shape shape{1, 1, 0, d};
    auto cal = Calibrator::Create(shape, opt);
    ASSERT_TRUE(cal.ok());
    ASSERT_TRUE((*cal)->SetValueMetric(0, 0, metric).ok());
    ASSERT_TRUE((*cal)->AddWindow(*cache).ok());
    auto prof = (*cal)->Finish("", "test");
    ASSERT_TRUE(prof.ok()) << prof.status().ToString();
    auto codec = CreateCodec("fraqtl@2", &*prof);
    ASSERT_TRUE(codec.ok()) << codec.status().ToString();
    ChunkDesc desc;
    desc.kind = KvKind::kValue;
    desc.tokens = desc.seq_tokens = T;
    desc.kv_heads = 1;
    desc.head_dim = d;
    std::vector<uint8_t> payload;
    ASSERT_TRUE((*codec)->Encode(desc, v.data(), &payload).ok());
    std::vector<float> y(v.size());
    ASSERT_TRUE((*codec)->Decode(desc, payload, y.data()).ok());
    for (size_t t = 0; t < T; ++t)
      for (uint32_t i = 0; i < d; ++i) {
        const double e = y[t * d + i] - v[t * d + i];
        err[idx] += metric[i * d + i] * e * e;
      }
    ++idx;
  }
  EXPECT_LT(err[0], 0.5 * err[1]) << "metric " << err[0] << " pca " << err[1];
}

TEST(Calibration, FromDumpsIsDeterministicAndRoundTrips) {
  const uint32_t d = 8, T = 200, H = 2;
  auto cache = KvCache::Create({2, T, H, d}, DType::kF32, 4);
  ASSERT_TRUE(cache.ok());
  std::mt19937 rng(9);
  std::normal_distribution<float> n(0, 1);
  for (uint32_t l = 0; l < 2; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      auto t = cache->tensor(l, kind);
      float* f = reinterpret_cast<float*>(t.data());
      for (size_t i = 0; i < t.size() / 4; ++i) f[i] = n(rng) * (1 + i % d);
    }
    auto q = cache->queries(l);
    float* f = reinterpret_cast<float*>(q.data());
    for (size_t i = 0; i < q.size() / 4; ++i) f[i] = n(rng);
  }
  cache->metadata().rope_style = "interleaved";
  cache->metadata().rope_theta = 10000;
  std::vector<KvCache> dumps;
  dumps.push_back(std::move(*cache));
  auto p1 = CalibrateFromDumps(dumps, {});
  auto p2 = CalibrateFromDumps(dumps, {});
  ASSERT_TRUE(p1.ok()) << p1.status().ToString();
  ASSERT_TRUE(p2.ok());
  EXPECT_TRUE(p1->has_prerope());
  auto b1 = p1->Serialize(), b2 = p2->Serialize();
  ASSERT_TRUE(b1.ok() && b2.ok());
  EXPECT_EQ(*b1, *b2);
  auto parsed = Profile::Parse(*b1);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->levels.size(), CalibrationOptions{}.ladder.size());
  // The pre-RoPE basis codes the pre-RoPE keys; the codec round-trips a chunk with it.
  auto codec = CreateCodec("fraqtl@3", &*parsed);
  ASSERT_TRUE(codec.ok()) << codec.status().ToString();
}

}  // namespace
}  // namespace kvwire
