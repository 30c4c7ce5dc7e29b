// fraqtl codec, profile files, bit allocation and RoPE helpers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "codec/fraqtl_math.h"
#include "codec/fraqtl_toy.h"
#include "codec/lloyd_max.h"
#include "kvwire/codec.h"
#include "kvwire/profile.h"
#include "kvwire/stream.h"

namespace kvwire {
namespace {

using namespace fraqtl_toy;  // NOLINT: the toy helpers

TEST(FraqtlProfile, RoundTripAndId) {
  const Profile p = ToyProfile(true);
  auto bytes = p.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto q = Profile::Parse(*bytes);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  auto again = q->Serialize();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*bytes, *again);
  EXPECT_EQ(*p.Id(), ProfileIdOfBytes(*bytes));
  EXPECT_TRUE(q->has_prerope());
  EXPECT_EQ(q->levels.at(0).budgets, p.levels[0].budgets);
}

TEST(FraqtlProfile, HostileBytesRefused) {
  auto bytes = *ToyProfile(false).Serialize();
  EXPECT_FALSE(Profile::Parse(std::span(bytes).first(10)).ok());  // truncated preamble
  EXPECT_FALSE(Profile::Parse(std::span(bytes).first(bytes.size() - 1)).ok());
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_FALSE(Profile::Parse(longer).ok());
  for (size_t i = 0; i < bytes.size(); i += 7) {  // every flipped byte is caught (CRC or fields)
    if (i == 6 || i == 7) continue;               // the minor version may change freely
    std::vector<uint8_t> b = bytes;
    b[i] ^= 0x5a;
    EXPECT_FALSE(Profile::Parse(b).ok()) << "byte " << i;
  }
  // Valid CRC, invalid contents: a profile whose variances are not descending.
  Profile bad = ToyProfile(false);
  bad.bases[0].variance[3] = 100;
  EXPECT_FALSE(bad.Serialize().ok());
  Profile bad2 = ToyProfile(false);
  bad2.head_dim = 0;
  EXPECT_FALSE(bad2.Validate().ok());
}

// Greedy water-filling against exhaustive search on a toy problem.
TEST(FraqtlAlloc, GreedyIsOptimalOnToyProblem) {
  const double lam[4] = {4.0, 1.5, 0.6, 0.1};
  std::vector<double> dist(9);
  for (int b = 0; b <= 8; ++b) dist[b] = b == 0 ? 1.0 : baseline::GaussianLloydMax(b).distortion;
  std::vector<fraqtl::AllocationItem> items;
  for (double l : lam) items.push_back({l, dist.data()});
  for (uint64_t budget = 0; budget <= 12; ++budget) {
    const auto bits = fraqtl::AllocateBits(items, budget, {});
    uint64_t used = 0;
    for (uint8_t b : bits) used += b;
    EXPECT_LE(used, budget);
    double best = 1e300;
    for (int a = 0; a <= 8; ++a)
      for (int b = 0; b <= 8; ++b)
        for (int c = 0; c <= 8; ++c)
          for (int d = 0; d <= 8; ++d) {
            if (uint64_t(a + b + c + d) > budget) continue;
            const uint8_t v[4] = {uint8_t(a), uint8_t(b), uint8_t(c), uint8_t(d)};
            best = std::min(best, fraqtl::AllocationDistortion(items, v));
          }
    EXPECT_NEAR(fraqtl::AllocationDistortion(items, bits), best, 1e-12) << "budget " << budget;
  }
  // The floor keeps every direction; protect turns a strong direction into fp16.
  auto floored = fraqtl::AllocateBits(items, 6, {true, 0});
  for (uint8_t b : floored) EXPECT_GE(b, 1);
  auto prot = fraqtl::AllocateBits(items, 40, {false, 4});
  EXPECT_EQ(prot[0], fraqtl::kProtectedBits);
}

TEST(FraqtlRope, UndoRedoIsExactToRounding) {
  for (bool neox : {false, true}) {
    fraqtl::Rope r;
    r.theta = 10000.0;
    r.neox = neox;
    r.rope_dim = kDim;
    std::vector<float> c(kDim / 2), s(kDim / 2);
    std::mt19937 rng(3);
    std::normal_distribution<float> n(0, 1);
    for (int64_t pos : {0, 1, 7, 511, 100000}) {
      r.Angles(pos, c.data(), s.data());
      std::vector<float> x(kDim), y;
      for (float& v : x) v = n(rng);
      y = x;
      r.Rotate(y.data(), c.data(), s.data(), true);
      r.Rotate(y.data(), c.data(), s.data(), false);
      for (uint32_t i = 0; i < kDim; ++i) EXPECT_NEAR(y[i], x[i], 1e-6f * (1 + std::fabs(x[i])));
    }
  }
}

TEST(FraqtlBits, WriterReferenceEqualsOptimized) {
  std::mt19937 rng(5);
  std::vector<uint8_t> a, b;
  fraqtl::BitWriter wa(&a), wb(&b);
  std::vector<std::pair<uint32_t, int>> vals;
  for (int i = 0; i < 1000; ++i) {
    const int bits = static_cast<int>(rng() % 17);
    vals.push_back({bits ? static_cast<uint32_t>(rng()) & ((1u << bits) - 1) : 0u, bits});
  }
  for (auto [v, n] : vals) {
    wa.PutRef(v, n);
    wb.Put(v, n);
  }
  wa.Finish();
  wb.Finish();
  ASSERT_EQ(a, b);
  fraqtl::BitReader ra(a), rb(a);
  for (auto [v, n] : vals) {
    EXPECT_EQ(ra.GetRef(n), v);
    EXPECT_EQ(rb.Get(n), v);
  }
}

TEST(FraqtlCodec, NeedsProfileAndParsesOptions) {
  EXPECT_FALSE(CreateCodec("fraqtl@2").ok());
  const Profile p = ToyProfile(true);
  EXPECT_FALSE(CreateCodec("fraqtl", &p).ok());
  EXPECT_FALSE(CreateCodec("fraqtl@x", &p).ok());
  EXPECT_FALSE(CreateCodec("fraqtl@2:bogus=1", &p).ok());
  EXPECT_FALSE(CreateCodec("fraqtl@2:basis=metric", &p).ok());  // profile is pca
  EXPECT_TRUE(CreateCodec("fraqtl@2:entropy=rans", &p).ok());
  EXPECT_FALSE(CreateCodec("fraqtl@2:entropy=rans,sign=1", &p).ok());
  // Steps 6 and 7: sign=1 resolves to D / 2 rows; both appear in the spec only when on.
  auto sc = CreateCodec("fraqtl@2:sign=1,delta=16", &p);
  ASSERT_TRUE(sc.ok()) << sc.status().ToString();
  EXPECT_NE((*sc)->Spec().find(",sign=8,delta=16,"), std::string::npos) << (*sc)->Spec();
  EXPECT_EQ((*CreateCodec((*sc)->Spec(), &p))->Spec(), (*sc)->Spec());
  EXPECT_EQ((*CreateCodec("fraqtl@2", &p))->Spec().find("sign"), std::string::npos);
  EXPECT_FALSE(CreateCodec("fraqtl@2:delta=1", &p).ok());
  EXPECT_FALSE(CreateCodec("fraqtl@2:delta=4,gain=1", &p).ok());
  EXPECT_FALSE(CreateCodec("fraqtl@2:sign=65", &p).ok());  // > 4 x head_dim
  auto c = CreateCodec("fraqtl@2.5:sink=1,window=2,entropy=zstd", &p);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto again = CreateCodec((*c)->Spec(), &p);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Spec(), (*c)->Spec());
}

// Reference and optimized paths give the same bytes and the same decoded values; decoding is
// deterministic; the error is small and shrinks with the budget.
TEST(FraqtlCodec, ReferenceEqualsOptimizedAndErrorShrinks) {
  const Profile p = ToyProfile(true);
  const uint32_t T = 64;
  const auto x = ToyData(T, 11);
  double prev = 1e300;
  for (const char* spec : {"fraqtl@1", "fraqtl@2:gain=1", "fraqtl@3:sink=2,window=3,protect=6",
                           "fraqtl@4:entropy=zstd", "fraqtl@5:floor=1,prerope=0"}) {
    auto codec = CreateCodec(spec, &p);
    ASSERT_TRUE(codec.ok()) << codec.status().ToString();
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      const ChunkDesc d = Desc(1, kind, T);
      std::vector<uint8_t> a, b;
      ASSERT_TRUE((*codec)->Encode(d, x.data(), &a, CodecImpl::kReference).ok());
      ASSERT_TRUE((*codec)->Encode(d, x.data(), &b, CodecImpl::kOptimized).ok());
      ASSERT_EQ(a, b) << spec;
      std::vector<float> ya(x.size()), yb(x.size());
      ASSERT_TRUE((*codec)->Decode(d, a, ya.data(), CodecImpl::kReference).ok());
      ASSERT_TRUE((*codec)->Decode(d, a, yb.data(), CodecImpl::kOptimized).ok());
      ASSERT_EQ(ya, yb) << spec;
      if (kind == KvKind::kValue && std::string(spec).find("gain") == std::string::npos) {
        double err = 0, sig = 0;
        for (size_t i = 0; i < x.size(); ++i) {
          err += (ya[i] - x[i]) * (ya[i] - x[i]);
          sig += x[i] * x[i];
        }
        EXPECT_LT(err / sig, prev) << spec;
        prev = err / sig;
      }
    }
  }
  EXPECT_LT(prev, 1e-2);
}

TEST(FraqtlCodec, CorruptPayloadsAreRefused) {
  const Profile p = ToyProfile(false);
  auto codec = std::move(CreateCodec("fraqtl@2:entropy=zstd,window=1", &p)).value();
  const auto x = ToyData(32, 2);
  const ChunkDesc d = Desc(0, KvKind::kKey, 32);
  std::vector<uint8_t> a;
  ASSERT_TRUE(codec->Encode(d, x.data(), &a).ok());
  std::vector<float> y(x.size());
  for (size_t n : {size_t{0}, size_t{5}, a.size() - 1}) {
    EXPECT_FALSE(codec->Decode(d, std::span(a).first(n), y.data()).ok());
  }
  for (size_t i : {size_t{0}, size_t{1}, size_t{4}, size_t{8}}) {
    std::vector<uint8_t> b = a;
    b[i] ^= 0x40;
    EXPECT_FALSE(codec->Decode(d, b, y.data()).ok()) << "byte " << i;
  }
  ChunkDesc wrong = d;
  wrong.layer = 7;
  EXPECT_FALSE(codec->Decode(wrong, a, y.data()).ok());
}

// The whole stream (headers, chunk headers, trailer) lands within 2 % of the target.
TEST(FraqtlCodec, StreamHitsBudgetAndIsDeterministic) {
  const Profile p = ToyProfile(true);
  const uint32_t T = 1024;
  KvShape shape{kLayers, T, kHeads, kDim};
  auto cache = KvCache::Create(shape, DType::kF32);
  ASSERT_TRUE(cache.ok());
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (KvKind k : {KvKind::kKey, KvKind::kValue}) {
      const auto x = ToyData(T, 100 + l * 2 + static_cast<uint32_t>(k));
      std::memcpy(cache->tensor(l, k).data(), x.data(), x.size() * 4);
    }
  }
  for (const char* spec :
       {"fraqtl@1", "fraqtl@2:window=8", "fraqtl@3:entropy=zstd", "fraqtl@2:level=2",
        "fraqtl@2:sign=1", "fraqtl@2:delta=16", "fraqtl@3:sign=1,delta=16,window=8"}) {
    const double target = std::atof(spec + 7);
    StreamInfo info;
    info.shape = shape;
    info.dtype = DType::kF32;
    info.metadata.rope_style = "interleaved";
    info.profile_id = *p.Id();
    info.levels = {(*CreateCodec(spec, &p))->Spec()};
    StreamWriterOptions one, four;
    four.threads = 4;
    auto s1 = EncodeStream(cache->view(), info, one, &p);
    ASSERT_TRUE(s1.ok()) << s1.status().ToString();
    auto s2 = EncodeStream(cache->view(), info, four, &p);
    ASSERT_TRUE(s2.ok());
    EXPECT_EQ(*s1, *s2) << spec;
    const double bpe = double(s1->size()) * 8 / double(shape.elements());
    EXPECT_NEAR(bpe, target, 0.02 * target) << spec;
    auto dec = DecodeStream(*s1, &p);
    ASSERT_TRUE(dec.ok()) << dec.status().ToString();
  }
}

}  // namespace
}  // namespace kvwire
