// The scalar references of the CUDA kernels (kernels/*.cuh `_ref`) against the CPU codecs: the
// same payload bytes from every input dtype and layout, the same decoded values in every
// destination dtype and layout, and the same verdict on corrupt payloads. Runs without a GPU:
// this is what validates the references the GPU tests then hold the kernels to.
#include <gtest/gtest.h>

#include <limits>
#include <numeric>
#include <random>

#include "cuda/cuda_test_util.h"

namespace kvwire::cuda_test {
namespace {

constexpr DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
constexpr uint32_t kBlockSizes[] = {0, 16, 5};  // contiguous, paged, paged with odd blocks

size_t FirstDifference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

TEST(CudaReferenceTest, EncodeGivesTheCpuCodecBytes) {
  uint64_t seed = 1;
  for (const Case& c : Cases()) {
    const RefCodec ref = RefCodec::Make(c.spec);
    ASSERT_NE(ref.cpu, nullptr);
    const ChunkDesc d = Desc(c.kind, c.token_begin, c.tokens, c.kv_heads, c.head_dim, c.seq_tokens);
    for (DType dt : kDTypes) {
      for (uint32_t bs : kBlockSizes) {
        SCOPED_TRACE(Name(c, dt, bs));
        HostKv src = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, ++seed);
        FillAwkward(&src, 0, c.seq_tokens, seed);
        uint32_t errors = 0;
        const std::vector<uint8_t> got = ref.Encode(d, src.view(), &errors);
        EXPECT_EQ(errors, 0u);
        const std::vector<float> f32 = src.ReadF32(c.token_begin, c.tokens);
        for (CodecImpl impl : {CodecImpl::kReference, CodecImpl::kOptimized}) {
          std::vector<uint8_t> want;
          ASSERT_TRUE(ref.cpu->Encode(d, f32.data(), &want, impl).ok());
          ASSERT_EQ(got.size(), want.size());
          EXPECT_EQ(FirstDifference(got, want), want.size()) << "payload bytes differ";
        }
      }
    }
  }
}

TEST(CudaReferenceTest, DecodeGivesTheCpuCodecValuesInEveryLayout) {
  uint64_t seed = 1000;
  for (const Case& c : Cases()) {
    const RefCodec ref = RefCodec::Make(c.spec);
    ASSERT_NE(ref.cpu, nullptr);
    const ChunkDesc d = Desc(c.kind, c.token_begin, c.tokens, c.kv_heads, c.head_dim, c.seq_tokens);
    HostKv src = HostKv::Make(DType::kF32, c.seq_tokens, c.kv_heads, c.head_dim, 0, ++seed);
    FillAwkward(&src, 0, c.seq_tokens, seed);
    const std::vector<float> f32 = src.ReadF32(c.token_begin, c.tokens);
    std::vector<uint8_t> payload;
    ASSERT_TRUE(ref.cpu->Encode(d, f32.data(), &payload).ok());
    std::vector<float> decoded(d.elements());
    ASSERT_TRUE(ref.cpu->Decode(d, payload, decoded.data()).ok());
    for (DType dt : kDTypes) {
      for (uint32_t bs : kBlockSizes) {
        SCOPED_TRACE(Name(c, dt, bs));
        // Same seed, same block table: `want` is `got` as the CPU path would write it.
        HostKv got = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, seed);
        HostKv want = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, seed);
        for (uint32_t t = 0; t < c.tokens; ++t)
          for (uint32_t i = 0; i < want.row_elems(); ++i)
            want.Set(c.token_begin + t, i, decoded[uint64_t{t} * want.row_elems() + i]);
        uint32_t errors = 0;
        ref.Decode(d, payload, got.view(), &errors);
        EXPECT_EQ(errors, 0u);
        EXPECT_EQ(FirstDifference(got.data, want.data), want.data.size())
            << "decoded bytes differ (or tokens outside the chunk were touched)";
        EXPECT_TRUE(got.SpareBlocksUntouched());
      }
    }
  }
}

// Runs `body(i)` for i in [0, n) in a shuffled order: a kernel's threads promise no order.
template <typename F>
void RunThreads(uint64_t n, uint64_t seed, F body) {
  std::vector<uint64_t> order(n);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  for (uint64_t i : order) body(i);
}

// The kivi kernels' per-thread bodies (kivi.cuh), run here one "thread" at a time in a random
// order, must give the reference's bytes and values: the GPU indexing, validated on the CPU.
TEST(CudaReferenceTest, KiviKernelThreadBodiesGiveTheReferenceResults) {
  uint64_t seed = 5000;
  for (const Case& c : Cases()) {
    if (c.spec.rfind("kivi", 0) != 0) continue;
    const RefCodec ref = RefCodec::Make(c.spec);
    const ChunkDesc d = Desc(c.kind, c.token_begin, c.tokens, c.kv_heads, c.head_dim, c.seq_tokens);
    const kern::KiviParams k = ref.Kivi(d);
    const kern::TokenRange range{d.token_begin, d.tokens};
    for (DType dt : kDTypes) {
      for (uint32_t bs : kBlockSizes) {
        SCOPED_TRACE(Name(c, dt, bs));
        HostKv src = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, ++seed);
        FillAwkward(&src, 0, c.seq_tokens, seed);
        const kern::KvTensor x = src.view();
        const kern::KiviLayout l = kern::KiviLayoutOf(d.tokens, x.row_elems(), k);
        uint32_t errors = 0;
        std::vector<uint8_t> got(l.bytes, 0xee);
        RunThreads(l.groups, seed, [&](uint64_t g) {
          kern::KiviGroupParamsThread(x, range, k, l, g, got.data(), &errors);
        });
        RunThreads(kern::KiviUnits(l), seed + 1,
                   [&](uint64_t u) { kern::KiviPackThread(x, range, k, l, u, got.data()); });
        const uint64_t window = uint64_t{d.tokens} * x.row_elems() - l.quant_elems;
        RunThreads(std::max<uint64_t>(window, 1), seed + 2, [&](uint64_t i) {
          kern::KiviWindowEncodeThread(x, range, k, l, i, got.data(), &errors);
        });
        EXPECT_EQ(errors, 0u);
        const std::vector<uint8_t> want = ref.Encode(d, x, &errors);
        EXPECT_EQ(FirstDifference(got, want), want.size()) << "payload bytes differ";

        HostKv out = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, seed);
        HostKv expect = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, seed);
        ref.Decode(d, want, expect.view(), &errors);
        const kern::KvTensor y = out.view();
        RunThreads(kern::KiviUnits(l), seed + 3, [&](uint64_t u) {
          kern::KiviUnpackThread(want.data(), y, range, k, l, u, &errors);
        });
        RunThreads(window, seed + 4, [&](uint64_t i) {
          kern::KiviWindowDecodeThread(want.data(), y, range, l, i, &errors);
        });
        EXPECT_EQ(errors, 0u);
        EXPECT_EQ(FirstDifference(out.data, expect.data), expect.data.size())
            << "decoded bytes differ";
      }
    }
  }
}

// Bytes of the first scale a decoder validates, and what makes it invalid for that codec.
struct Corruption {
  size_t offset;
  uint16_t value;
};
std::vector<Corruption> Corruptions(const RefCodec& ref) {
  switch (ref.id) {
    case 2:
      return {{0, 0x7c00}, {0, 0xbc00}};  // int8: +inf, negative scale
    case 3:
    case 4:
      return {{0, 0x7c00}, {0, 0xfe00}};  // q8_0/q4_0: +inf, NaN (negative d is valid)
    default:
      return {{4, 0x7e00}, {4, 0xbc00}};  // kivi: first scale NaN, negative
  }
}

TEST(CudaReferenceTest, CorruptScalesAreRejectedLikeTheCpuDecoder) {
  for (const char* spec : {"int8", "q8_0", "q4_0", "kivi2", "kivi4"}) {
    SCOPED_TRACE(spec);
    const RefCodec ref = RefCodec::Make(spec);
    const ChunkDesc d = Desc(KvKind::kKey, 0, 96, 2, 64, 96);
    HostKv src = HostKv::Make(DType::kF16, 96, 2, 64, 0, 7);
    FillAwkward(&src, 0, 96, 7);
    const std::vector<float> f32 = src.ReadF32(0, 96);
    std::vector<uint8_t> good;
    ASSERT_TRUE(ref.cpu->Encode(d, f32.data(), &good).ok());
    for (const Corruption& k : Corruptions(ref)) {
      std::vector<uint8_t> bad = good;
      bad[k.offset] = static_cast<uint8_t>(k.value);
      bad[k.offset + 1] = static_cast<uint8_t>(k.value >> 8);
      std::vector<float> out(d.elements());
      EXPECT_EQ(ref.cpu->Decode(d, bad, out.data()).code(), StatusCode::kCorrupt);
      HostKv dst = HostKv::Make(DType::kF16, 96, 2, 64, 0, 7);
      uint32_t errors = 0;
      ref.Decode(d, bad, dst.view(), &errors);
      EXPECT_EQ(errors, uint32_t{kern::kErrBadScale});
    }
  }
}

TEST(CudaReferenceTest, KiviHeaderMismatchWritesNothing) {
  const RefCodec ref = RefCodec::Make("kivi2");
  const ChunkDesc d = Desc(KvKind::kValue, 0, 96, 2, 64, 96);  // Tq = 64
  HostKv src = HostKv::Make(DType::kF16, 96, 2, 64, 0, 3);
  FillAwkward(&src, 0, 96, 3);
  uint32_t errors = 0;
  std::vector<uint8_t> payload = ref.Encode(d, src.view(), &errors);
  ASSERT_EQ(errors, 0u);
  ASSERT_EQ(kmath::LoadU32(payload.data()), 64u);
  payload[0] = 32;
  HostKv dst = HostKv::Make(DType::kF16, 96, 2, 64, 0, 3);
  const std::vector<uint8_t> before = dst.data;
  ref.Decode(d, payload, dst.view(), &errors);
  EXPECT_EQ(errors, uint32_t{kern::kErrBadHeader});
  EXPECT_EQ(dst.data, before);
}

TEST(CudaReferenceTest, NonFiniteInputIsFlaggedAsTheCpuCodecRefusesIt) {
  for (const char* spec : {"int8", "q8_0", "q4_0", "kivi2"}) {
    for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
      for (uint32_t token : {3u, 90u}) {  // a quantized token and (kivi) a window token
        SCOPED_TRACE(std::string(spec) + " token " + std::to_string(token));
        const RefCodec ref = RefCodec::Make(spec);
        const ChunkDesc d = Desc(KvKind::kKey, 0, 96, 2, 64, 96);
        HostKv src = HostKv::Make(DType::kF32, 96, 2, 64, 0, 5);
        FillAwkward(&src, 0, 96, 5);
        src.Set(token, 70, bad);
        uint32_t errors = 0;
        (void)ref.Encode(d, src.view(), &errors);
        EXPECT_EQ(errors, uint32_t{kern::kErrNonFinite});
        const std::vector<float> f32 = src.ReadF32(0, 96);
        std::vector<uint8_t> out;
        EXPECT_EQ(ref.cpu->Encode(d, f32.data(), &out).code(), StatusCode::kInvalidArgument);
      }
    }
  }
}

TEST(CudaReferenceTest, BadBlockIdsAreFlaggedAndNeverFollowed) {
  for (const char* spec : {"int8", "q8_0", "q4_0", "kivi2"}) {
    for (int32_t bad_id : {-1, 1 << 20}) {
      SCOPED_TRACE(std::string(spec) + " id " + std::to_string(bad_id));
      const RefCodec ref = RefCodec::Make(spec);
      const ChunkDesc d = Desc(KvKind::kKey, 0, 96, 2, 64, 96);
      HostKv src = HostKv::Make(DType::kF16, 96, 2, 64, 16, 9);
      FillAwkward(&src, 0, 96, 9);
      src.table[2] = bad_id;
      uint32_t errors = 0;
      const std::vector<uint8_t> payload = ref.Encode(d, src.view(), &errors);
      EXPECT_EQ(errors, uint32_t{kern::kErrBadBlock});
      HostKv dst = HostKv::Make(DType::kF16, 96, 2, 64, 16, 9);
      dst.table[4] = bad_id;
      errors = 0;
      ref.Decode(d, payload, dst.view(), &errors);
      EXPECT_EQ(errors, uint32_t{kern::kErrBadBlock});
      EXPECT_TRUE(dst.SpareBlocksUntouched());
    }
  }
}

TEST(CudaReferenceTest, BlockFormatsMatchTheGgmlLayout) {
  EXPECT_EQ(sizeof(blocks::BlockQ8_0), 34u);
  EXPECT_EQ(sizeof(blocks::BlockQ4_0), 18u);
  EXPECT_EQ(offsetof(blocks::BlockQ8_0, qs), 2u);
  EXPECT_EQ(offsetof(blocks::BlockQ4_0, qs), 2u);
  EXPECT_EQ(blocks::kQ8_0Traits.codec_id, RefCodec::Make("q8_0").id);
  EXPECT_EQ(blocks::kQ4_0Traits.codec_id, RefCodec::Make("q4_0").id);
}

}  // namespace
}  // namespace kvwire::cuda_test
