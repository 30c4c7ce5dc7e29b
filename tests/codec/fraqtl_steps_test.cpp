// fraqtl's optional steps: the sign sketch (6), delta groups (7) and the profile's defaults.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "codec/fraqtl_math.h"
#include "codec/fraqtl_sketch.h"
#include "codec/fraqtl_toy.h"
#include "codec/lloyd_max.h"
#include "codec/quant_common.h"
#include "kvwire/codec.h"
#include "kvwire/profile.h"
#include "kvwire/stream.h"

namespace kvwire {
namespace {

using namespace fraqtl_toy;  // NOLINT: the toy helpers

// The scales of fraqtl_sketch.h, measured: sqrt(pi/2)/m is unbiased along r, but its error is
// larger than the residual; the shrunk scale removes the predicted share of the residual.
TEST(FraqtlSketch, ScalesMatchTheory) {
  for (auto [d, m] : {std::pair<uint32_t, uint32_t>{128, 64}, {64, 32}, {16, 8}}) {
    const std::vector<float> s = fraqtl::SketchMatrix(3, 1, 2, m, d);
    for (float v : s) ASSERT_TRUE(v == 1.0f || v == -1.0f);
    EXPECT_EQ(s, fraqtl::SketchMatrix(3, 1, 2, m, d));
    EXPECT_NE(s, fraqtl::SketchMatrix(3, 0, 2, m, d));
    std::mt19937 rng(7);
    std::normal_distribution<double> n(0, 1);
    const double c_shrink = fraqtl::SketchShrink(m, d), c_unbiased = fraqtl::SketchUnbiased(m);
    const int kTrials = 3000;
    double along = 0, mse_shrink = 0, mse_unbiased = 0;
    std::vector<float> r(d), z(d), tmp(d);
    std::vector<uint8_t> bits(m);
    for (int t = 0; t < kTrials; ++t) {
      double nn = 0;
      for (uint32_t j = 0; j < d; ++j) {
        // Anisotropic residuals, as after water-filling (a few large deleted directions).
        r[j] = static_cast<float>(n(rng) * std::pow(2.0, -double(j % 16) / 4.0));
        nn += double(r[j]) * r[j];
      }
      const double norm = std::sqrt(nn);
      fraqtl::SketchSigns(s.data(), m, d, r.data(), bits.data());
      std::fill(z.begin(), z.end(), 0.0f);
      fraqtl::SketchAdd(s.data(), m, d, bits.data(), 1.0f, z.data(), tmp.data());  // S^T sign
      double dot = 0, e_s = 0, e_u = 0;
      for (uint32_t j = 0; j < d; ++j) {
        dot += double(z[j]) * r[j];
        e_s += std::pow(r[j] - c_shrink * norm * z[j], 2);
        e_u += std::pow(r[j] - c_unbiased * norm * z[j], 2);
      }
      along += c_unbiased * norm * dot / nn;  // <r^_unbiased, r> / ||r||^2, 1 when unbiased
      mse_shrink += e_s / nn;
      mse_unbiased += e_u / nn;
    }
    along /= kTrials;
    mse_shrink /= kTrials;
    mse_unbiased /= kTrials;
    const double two_pi = 2.0 / 3.14159265358979323846;
    const double predicted = 1.0 - two_pi * m / (d + (m - 1.0) * two_pi);
    EXPECT_NEAR(along, 1.0, 0.05) << "d " << d;
    EXPECT_NEAR(mse_shrink, predicted, 0.05) << "d " << d;
    EXPECT_LT(mse_shrink, 0.85) << "d " << d;
    EXPECT_GT(mse_unbiased, 1.5) << "d " << d;  // the unbiased estimate adds more than it removes
  }
}

// The weighted water-filling: with unit costs it is AllocateBits; its result re-derives from
// the bits it spends (what delta payloads record); items of cost 0 get nothing.
TEST(FraqtlSteps, WeightedAllocation) {
  std::vector<double> dist(9);
  for (int b = 0; b <= 8; ++b) dist[b] = b == 0 ? 1.0 : baseline::GaussianLloydMax(b).distortion;
  std::vector<fraqtl::AllocationItem> items;
  for (int i = 0; i < 12; ++i) items.push_back({std::pow(1.7, -i) * (1 + i % 3), dist.data()});
  const std::vector<uint64_t> ones(items.size(), 1);
  for (int protect : {0, 3, 8}) {
    for (uint64_t n : {0, 1, 7, 30, 95, 200}) {
      EXPECT_EQ(fraqtl::AllocateBitsWeighted(items, ones, n, protect),
                fraqtl::AllocateBits(items, n, {false, protect}));
    }
  }
  std::vector<uint64_t> costs(items.size());
  for (size_t i = 0; i < costs.size(); ++i) costs[i] = i < 6 ? 5 : (i < 10 ? 59 : 0);
  for (int protect : {0, 2, 8}) {
    for (uint64_t n = 0; n < 4000; n += 37) {
      const auto a = fraqtl::AllocateBitsWeighted(items, costs, n, protect);
      uint64_t spent = 0;
      for (size_t i = 0; i < a.size(); ++i) spent += uint64_t{a[i]} * costs[i];
      EXPECT_LE(spent, n);
      EXPECT_EQ(a[10], 0);
      EXPECT_EQ(a[11], 0);
      EXPECT_EQ(fraqtl::AllocateBitsWeighted(items, costs, spent, protect), a) << n;
    }
  }
}

std::vector<float> Coded(const Codec& c, const ChunkDesc& d, const std::vector<float>& x,
                         std::vector<uint8_t>* payload, CodecImpl impl = CodecImpl::kOptimized) {
  payload->clear();
  EXPECT_TRUE(c.Encode(d, x.data(), payload, impl).ok());
  std::vector<float> y(x.size());
  EXPECT_TRUE(c.Decode(d, *payload, y.data(), impl).ok());
  return y;
}

double RelErr(const std::vector<float>& x, const std::vector<float>& y) {
  double e = 0, s = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    e += (y[i] - x[i]) * (y[i] - x[i]);
    s += x[i] * x[i];
  }
  return e / s;
}

// Tokens that drift slowly: x_t = rho x_(t-1) + sqrt(1 - rho^2) noise, per (head, direction).
std::vector<float> CorrelatedData(uint32_t tokens, uint32_t seed, double rho) {
  std::vector<float> x = ToyData(tokens, seed);
  const size_t row = size_t{kHeads} * kDim;
  for (uint32_t t = 1; t < tokens; ++t) {
    for (size_t k = 0; k < row; ++k) {
      x[t * row + k] = static_cast<float>(rho * x[(t - 1) * row + k] +
                                          std::sqrt(1 - rho * rho) * x[t * row + k]);
    }
  }
  return x;
}

TEST(FraqtlSteps, ReferenceEqualsOptimizedAndDeterministic) {
  const Profile p = ToyProfile(true);
  const uint32_t T = 70;  // groups of 16 end in a partial group
  const auto x = CorrelatedData(T, 13, 0.9);
  for (const char* spec :
       {"fraqtl@2:sign=1", "fraqtl@2:delta=16", "fraqtl@3:sign=4,delta=4,sink=1,window=2",
        "fraqtl@1.5:delta=8,entropy=none", "fraqtl@2:sign=1,delta=16,protect=2",
        "fraqtl@6:delta=2,protect=3", "fraqtl@2:sign=64,gain=1,book=gauss"}) {
    auto codec = CreateCodec(spec, &p);
    ASSERT_TRUE(codec.ok()) << spec << ": " << codec.status().ToString();
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      const ChunkDesc d = Desc(1, kind, T);
      std::vector<uint8_t> a, b, c;
      const auto ya = Coded(**codec, d, x, &a, CodecImpl::kReference);
      const auto yb = Coded(**codec, d, x, &b, CodecImpl::kOptimized);
      Coded(**codec, d, x, &c, CodecImpl::kOptimized);
      ASSERT_EQ(a, b) << spec;
      ASSERT_EQ(b, c) << spec;
      ASSERT_EQ(ya, yb) << spec;
      std::vector<float> yc(x.size());
      ASSERT_TRUE((*codec)->Decode(d, a, yc.data(), CodecImpl::kOptimized).ok());
      ASSERT_EQ(yb, yc) << spec;
      // sign=1 at 2 b/e on D = 16 spends 1.5 b/e on the sketch: a coarse but sane result.
      EXPECT_LT(RelErr(x, ya), 0.8) << spec;
    }
  }
}

// The decoder's correction lowers the error of the very same indices: zeroing the norms in the
// payload (a valid payload: no correction) gives a larger error.
TEST(FraqtlSteps, SignCorrectionLowersTheError) {
  const Profile p = ToyProfile(false);
  const uint32_t T = 256;
  const auto x = ToyData(T, 21);
  for (const char* spec : {"fraqtl@2:sign=1", "fraqtl@4:sign=32", "fraqtl@3:sign=1,delta=8"}) {
    auto codec = std::move(CreateCodec(spec, &p)).value();
    const ChunkDesc d = Desc(0, KvKind::kValue, T);
    std::vector<uint8_t> a;
    const auto y = Coded(*codec, d, x, &a);
    std::vector<uint8_t> b = a;
    // No sink/window/gain: the norms follow the header and, with delta, the delta scales.
    // Delta side: fp16 scales and one mode bit per (head, direction).
    const size_t side = size_t{kHeads} * kDim * 2 + kHeads * kDim / 8;
    const size_t norms = 12 + (std::string(spec).find("delta") != std::string::npos ? side : 0);
    std::memset(b.data() + norms, 0, size_t{T} * kHeads * 2);
    std::vector<float> y0(x.size());
    ASSERT_TRUE(codec->Decode(d, b, y0.data()).ok());
    EXPECT_LT(RelErr(x, y), 0.97 * RelErr(x, y0)) << spec;
  }
}

// On tokens that change slowly, delta groups beat plain coding at the same budget; the
// stream-level bits are checked in StreamHitsBudgetAndIsDeterministic.
TEST(FraqtlSteps, DeltaPaysOnCorrelatedTokens) {
  const Profile p = ToyProfile(false);
  const uint32_t T = 512;
  const auto x = CorrelatedData(T, 5, 0.98);
  for (double bits : {1.0, 2.0, 3.0}) {
    const std::string b = std::to_string(bits).substr(0, 3);
    auto plain = std::move(CreateCodec("fraqtl@" + b, &p)).value();
    auto delta = std::move(CreateCodec("fraqtl@" + b + ":delta=16", &p)).value();
    const ChunkDesc d = Desc(1, KvKind::kKey, T);
    std::vector<uint8_t> pa, da;
    const double e_plain = RelErr(x, Coded(*plain, d, x, &pa));
    const double e_delta = RelErr(x, Coded(*delta, d, x, &da));
    EXPECT_LT(e_delta, 0.8 * e_plain) << b;
    EXPECT_LE(da.size(), pa.size() + pa.size() / 50) << b;  // same budget
  }
}

// On independent tokens the anchor predicts nothing: the encoder sends (almost) every
// direction direct, and delta costs little more than its side information.
TEST(FraqtlSteps, DeltaFallsBackOnIndependentTokens) {
  const Profile p = ToyProfile(false);
  const uint32_t T = 512;
  const auto x = ToyData(T, 6);
  auto plain = std::move(CreateCodec("fraqtl@2", &p)).value();
  auto delta = std::move(CreateCodec("fraqtl@2:delta=16", &p)).value();
  const ChunkDesc d = Desc(0, KvKind::kValue, T);
  std::vector<uint8_t> pa, da;
  const double e_plain = RelErr(x, Coded(*plain, d, x, &pa));
  const double e_delta = RelErr(x, Coded(*delta, d, x, &da));
  EXPECT_LT(e_delta, 1.15 * e_plain);
  int direct = 0;
  const size_t modes = 12 + size_t{kHeads} * kDim * 2;
  for (size_t k = 0; k < size_t{kHeads} * kDim; ++k) direct += (da[modes + k / 8] >> (k % 8)) & 1;
  EXPECT_GE(direct, int{kHeads * kDim} * 3 / 4);
}

TEST(FraqtlSteps, CorruptPayloadsAreRefused) {
  const Profile p = ToyProfile(false);
  const auto x = CorrelatedData(40, 2, 0.9);
  const ChunkDesc d = Desc(0, KvKind::kKey, 40);
  std::vector<float> y(x.size());
  for (const char* spec : {"fraqtl@2:sign=1,window=1", "fraqtl@2:delta=8,window=1",
                           "fraqtl@3:sign=1,delta=4,entropy=none"}) {
    auto codec = std::move(CreateCodec(spec, &p)).value();
    std::vector<uint8_t> a;
    ASSERT_TRUE(codec->Encode(d, x.data(), &a).ok());
    ASSERT_TRUE(codec->Decode(d, a, y.data()).ok());
    for (size_t n : {size_t{0}, size_t{5}, size_t{12}, a.size() / 2, a.size() - 1}) {
      EXPECT_EQ(codec->Decode(d, std::span(a).first(n), y.data()).code(), StatusCode::kCorrupt)
          << spec << " truncated to " << n;
    }
    for (size_t i : {size_t{0}, size_t{1}, size_t{4}, size_t{8}}) {
      std::vector<uint8_t> b = a;
      b[i] ^= 0x40;
      EXPECT_EQ(codec->Decode(d, b, y.data()).code(), StatusCode::kCorrupt) << spec << " " << i;
    }
    // The new fields: a negative or non-finite delta scale or norm is refused.
    const bool has_delta = std::string(spec).find("delta") != std::string::npos;
    const bool has_sign = std::string(spec).find("sign") != std::string::npos;
    const size_t fp = std::string(spec).find("window=1") != std::string::npos ? 1 : 0;
    const size_t scales = 12 + fp * kHeads * kDim * 2;
    const size_t modes = scales + size_t{kHeads} * kDim * 2;
    const size_t norms = has_delta ? modes + kHeads * kDim / 8 : scales;
    for (uint16_t bad : {uint16_t{0x7c00}, uint16_t{0x7e00}, uint16_t{0xbc00}}) {
      if (has_delta) {
        std::vector<uint8_t> b = a;
        baseline::StoreU16(b.data() + scales + 6, bad);
        EXPECT_EQ(codec->Decode(d, b, y.data()).code(), StatusCode::kCorrupt) << spec;
      }
      if (has_sign) {
        std::vector<uint8_t> b = a;
        baseline::StoreU16(b.data() + norms + 4, bad);
        EXPECT_EQ(codec->Decode(d, b, y.data()).code(), StatusCode::kCorrupt) << spec;
      }
    }
    // Any single damaged byte: refused or decoded, never a crash or a non-finite value from a
    // finite field (sign bits and indices are not checkable; the stream CRCs catch them).
    for (size_t i = 0; i < a.size(); ++i) {
      std::vector<uint8_t> b = a;
      b[i] ^= static_cast<uint8_t>(0x11 + i);
      (void)codec->Decode(d, b, y.data());
    }
  }
}

TEST(FraqtlSteps, ProfileDefaultsApplyAndAreSpelled) {
  Profile p = ToyProfile(true);
  p.fraqtl_defaults = "sign=0,delta=16";
  auto bytes = p.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto q = Profile::Parse(*bytes);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_EQ(q->fraqtl_defaults, "sign=0,delta=16");
  // Minor 1 only with the new field: profiles without it keep their bytes and ids.
  EXPECT_EQ((*bytes)[6], 1);
  EXPECT_EQ((*ToyProfile(true).Serialize())[6], 0);
  const std::string spec = (*CreateCodec("fraqtl@2", &*q))->Spec();
  EXPECT_NE(spec.find(",sign=0,delta=16,"), std::string::npos) << spec;
  const std::string own = (*CreateCodec("fraqtl@2:delta=0,sign=1", &*q))->Spec();
  EXPECT_NE(own.find(",sign=8,delta=0,"), std::string::npos) << own;
  // The canonical spec codes the same way with or without the defaults (only the spelling of
  // the off step differs).
  Profile none = *q;
  none.fraqtl_defaults.clear();
  std::string unspelled = spec;
  unspelled.erase(unspelled.find("sign=0,"), 7);
  EXPECT_EQ((*CreateCodec(spec, &none))->Spec(), unspelled);
  // Without defaults the spec is that of earlier builds.
  EXPECT_EQ((*CreateCodec("fraqtl@2", &none))->Spec().find("delta"), std::string::npos);
  for (const char* bad : {"sign=x", "gain=1", "sign=1,sign=0", "delta=5000", "sign=1,", "=1"}) {
    Profile b = p;
    b.fraqtl_defaults = bad;
    EXPECT_FALSE(b.Validate().ok()) << bad;
  }
  // A stream coded with the defaults decodes with the same profile.
  const uint32_t T = 64;
  KvShape shape{kLayers, T, kHeads, kDim};
  auto cache = KvCache::Create(shape, DType::kF32);
  ASSERT_TRUE(cache.ok());
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (KvKind k : {KvKind::kKey, KvKind::kValue}) {
      const auto x = CorrelatedData(T, 40 + l, 0.9);
      std::memcpy(cache->tensor(l, k).data(), x.data(), x.size() * 4);
    }
  }
  StreamInfo info;
  info.shape = shape;
  info.dtype = DType::kF32;
  info.metadata.rope_style = "interleaved";
  info.profile_id = *q->Id();
  info.levels = {spec};
  auto s = EncodeStream(cache->view(), info, StreamWriterOptions{}, &*q);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(DecodeStream(*s, &*q).ok());
}

}  // namespace
}  // namespace kvwire
