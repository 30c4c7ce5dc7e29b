// kivi<b>: the residual-window rule, chunk alignment, per-kind grouping and bit accounting.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "codec/baseline_test_util.h"
#include "common/fp16.h"
#include "kvwire/codec.h"

namespace kvwire {
namespace {

using testing_util::GaussianInput;
using testing_util::MakeDesc;
using testing_util::MustCreate;

uint32_t LoadU32(const std::vector<uint8_t>& p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

// n_quant = floor(max(0, S - R) / G) * G; tokens from n_quant on are fp16.
TEST(KiviTest, WindowRuleForWholeSequences) {
  auto codec = MustCreate("kivi2");  // G = R = 32
  const struct {
    uint32_t seq, n_quant;
  } cases[] = {{1, 0},   {31, 0},  {32, 0},   {63, 0},   {64, 32},
               {95, 32}, {96, 64}, {100, 64}, {160, 128}};
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    for (const auto& c : cases) {
      const ChunkDesc d = MakeDesc(c.seq, 2, 64, kind);
      const std::vector<float> x = GaussianInput(d, c.seq);
      std::vector<uint8_t> p;
      ASSERT_TRUE(codec->Encode(d, x.data(), &p).ok());
      EXPECT_EQ(LoadU32(p), c.n_quant) << c.seq;
      std::vector<float> y(d.elements());
      ASSERT_TRUE(codec->Decode(d, p, y.data()).ok());
      const size_t row = 2 * 64;
      size_t inexact_quantized = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        if (i / row >= c.n_quant) {
          ASSERT_EQ(y[i], RoundToHalf(x[i])) << "window token " << i / row << " of " << c.seq;
        } else {
          inexact_quantized += y[i] != RoundToHalf(x[i]);
        }
      }
      if (c.n_quant > 0) {
        EXPECT_GT(inexact_quantized, c.n_quant * row / 2) << "quantized tokens look unquantized";
      }
      const size_t window_bytes = 2 * (c.seq - c.n_quant) * row;
      EXPECT_EQ(p.size(), 4 + (c.n_quant * row * 3 + 7) / 8 + window_bytes) << c.seq;  // 3.0 b/e
    }
  }
}

TEST(KiviTest, QuantizedBitsPerElementAreBPlus32OverG) {
  for (const char* spec : {"kivi2", "kivi4", "kivi3:g=64", "kivi4:g=16,r=16"}) {
    auto codec = MustCreate(spec);
    const uint32_t g = codec->TokenAlignment();
    const int bits = spec[4] - '0';
    const ChunkDesc d = MakeDesc(256, 4, 64, KvKind::kKey, 0, 100000);  // all quantized
    std::vector<uint8_t> p;
    ASSERT_TRUE(codec->Encode(d, GaussianInput(d, 1).data(), &p).ok());
    EXPECT_DOUBLE_EQ(8.0 * (p.size() - 4) / d.elements(), bits + 32.0 / g) << spec;
  }
}

TEST(KiviTest, ChunkedEncodingDecodesLikeOneChunk) {
  auto codec = MustCreate("kivi4");
  const uint32_t seq = 200;  // n_quant = 160
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    const ChunkDesc whole = MakeDesc(seq, 2, 64, kind);
    const std::vector<float> x = GaussianInput(whole, 7);
    std::vector<uint8_t> p;
    ASSERT_TRUE(codec->Encode(whole, x.data(), &p).ok());
    std::vector<float> want(whole.elements());
    ASSERT_TRUE(codec->Decode(whole, p, want.data()).ok());
    // Chunks of 64 tokens (aligned), then a last partial chunk that is window only.
    std::vector<float> got(whole.elements());
    const size_t row = 2 * 64;
    for (uint32_t begin = 0; begin < seq; begin += 64) {
      const uint32_t n = std::min(64u, seq - begin);
      const ChunkDesc d = MakeDesc(n, 2, 64, kind, begin, seq);
      std::vector<uint8_t> q;
      ASSERT_TRUE(codec->Encode(d, x.data() + begin * row, &q).ok()) << begin;
      ASSERT_TRUE(codec->Decode(d, q, got.data() + begin * row).ok()) << begin;
    }
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), 4 * want.size()));
  }
}

TEST(KiviTest, RefusesMisalignedChunksThatQuantize) {
  auto codec = MustCreate("kivi2");
  EXPECT_EQ(codec->TokenAlignment(), 32u);
  const uint32_t seq = 200;  // n_quant = 160
  auto encode = [&](uint32_t begin, uint32_t tokens, uint32_t seq_tokens) {
    const ChunkDesc d = MakeDesc(tokens, 1, 64, KvKind::kKey, begin, seq_tokens);
    std::vector<uint8_t> p;
    return codec->Encode(d, GaussianInput(d, 3).data(), &p);
  };
  EXPECT_EQ(encode(16, 32, seq).code(), StatusCode::kInvalidArgument);  // lead 16, half a group
  EXPECT_EQ(encode(0, 40, seq).code(), StatusCode::kInvalidArgument);   // ends mid-group
  EXPECT_TRUE(encode(0, 64, seq).ok());
  EXPECT_TRUE(encode(128, 50, seq).ok());  // 32 quantized tokens, then window
  EXPECT_TRUE(encode(170, 30, seq).ok());  // window only: any start is fine
  EXPECT_EQ(encode(16, 17, seq).code(), StatusCode::kInvalidArgument);  // 16 fp16 + 1 of a group
  const Status st = encode(0, 64, 50);     // seq_tokens smaller than the chunk
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("seq_tokens"), std::string::npos) << st.message();
}

// A chunk that starts mid-group (the first chunk of a migration tail at token 16) keeps its
// tokens up to the next group boundary fp16 (the lead), then quantizes whole groups as usual.
TEST(KiviTest, AChunkStartingMidGroupKeepsItsLeadFp16) {
  auto codec = MustCreate("kivi2");  // G = R = 32
  const uint32_t seq = 200;           // n_quant = 160
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    for (uint32_t tokens : {16u, 48u, 80u}) {
      SCOPED_TRACE(std::to_string(tokens) + " tokens, kind " + std::to_string(int(kind)));
      const ChunkDesc d = MakeDesc(tokens, 2, 64, kind, 16, seq);
      const std::vector<float> x = GaussianInput(d, 4);
      std::vector<uint8_t> p;
      ASSERT_TRUE(codec->Encode(d, x.data(), &p).ok());
      const size_t row = 2 * 64, tq = tokens - 16;
      EXPECT_EQ(p.size(), 4 + 4 * tq * row / 32 + tq * row * 2 / 8 + 2 * 16 * row);
      std::vector<float> y(d.elements());
      ASSERT_TRUE(codec->Decode(d, p, y.data()).ok());
      for (size_t i = 0; i < 16 * row; ++i) ASSERT_EQ(y[i], RoundToHalf(x[i])) << i;
      // The quantized part equals the same tokens coded as an aligned chunk of their own.
      const ChunkDesc a = MakeDesc(static_cast<uint32_t>(tq), 2, 64, kind, 32, seq);
      std::vector<uint8_t> pa;
      std::vector<float> ya(a.elements());
      if (tq == 0) continue;
      ASSERT_TRUE(codec->Encode(a, x.data() + 16 * row, &pa).ok());
      ASSERT_TRUE(codec->Decode(a, pa, ya.data()).ok());
      EXPECT_EQ(0, std::memcmp(ya.data(), y.data() + 16 * row, 4 * ya.size()));
    }
  }
}

TEST(KiviTest, ValuesNeedHeadDimDivisibleByGroup) {
  auto codec = MustCreate("kivi2");
  const ChunkDesc v = MakeDesc(64, 1, 48, KvKind::kValue);
  std::vector<uint8_t> p;
  const Status st = codec->Encode(v, GaussianInput(v, 1).data(), &p);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("head_dim"), std::string::npos);
  const ChunkDesc k = MakeDesc(64, 1, 48, KvKind::kKey);  // keys group over tokens: fine
  EXPECT_TRUE(codec->Encode(k, GaussianInput(k, 1).data(), &p).ok());
}

TEST(KiviTest, KeysAreGroupedPerChannelValuesPerToken) {
  // One channel of huge magnitude: per-channel key groups keep the other channels exact-ish,
  // per-token value groups spread its range over its row.
  auto codec = MustCreate("kivi2:g=32,r=0");
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    const ChunkDesc d = MakeDesc(32, 1, 32, kind);
    std::vector<float> x(d.elements());
    for (size_t t = 0; t < 32; ++t) {
      for (size_t i = 0; i < 32; ++i) x[t * 32 + i] = i == 0 ? 1000.0f + t : (i % 2 ? 1.0f : -1.0f);
    }
    std::vector<uint8_t> p;
    ASSERT_TRUE(codec->Encode(d, x.data(), &p).ok());
    std::vector<float> y(d.elements());
    ASSERT_TRUE(codec->Decode(d, p, y.data()).ok());
    double max_err_other = 0;
    for (size_t t = 0; t < 32; ++t) {
      for (size_t i = 1; i < 32; ++i)
        max_err_other = std::max<double>(max_err_other, std::fabs(y[t * 32 + i] - x[t * 32 + i]));
    }
    if (kind == KvKind::kKey) {
      EXPECT_LT(max_err_other, 1e-3);  // each channel is constant over tokens
    } else {
      EXPECT_GT(max_err_other, 0.5);  // the row's range is ~1000: +-1 is lost
    }
  }
}

TEST(KiviTest, CorruptQuantizedTokenCount) {
  auto codec = MustCreate("kivi2");
  const ChunkDesc d = MakeDesc(96, 1, 64, KvKind::kKey);
  std::vector<uint8_t> p;
  ASSERT_TRUE(codec->Encode(d, GaussianInput(d, 2).data(), &p).ok());
  std::vector<float> y(d.elements());
  for (uint32_t tq : {16u, 128u, 0xffffffffu, 32u}) {
    std::vector<uint8_t> q = p;
    std::memcpy(q.data(), &tq, 4);
    EXPECT_EQ(codec->Decode(d, q, y.data()).code(), StatusCode::kCorrupt) << tq;
  }
}

}  // namespace
}  // namespace kvwire
