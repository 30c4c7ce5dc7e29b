// The CUDA kernels, through kvwire/cuda_codec.h, against their scalar references and the CPU
// codecs: identical payload bytes, identical decoded values in every dtype and layout, CPU <->
// GPU cross-decoding, and data errors reported at Wait. Every test skips without a GPU, with
// "SKIPPED: no CUDA device: " and the runtime's reason.
#include <gtest/gtest.h>

#include <limits>

#include "cuda/cuda_test_util.h"
#include "kvwire/cuda_codec.h"

namespace kvwire::cuda_test {
namespace {

using cuda::CudaCodec;
using cuda::DeviceBuffer;
using cuda::DeviceKvTensor;

constexpr DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
constexpr uint32_t kBlockSizes[] = {0, 16, 5};

class CudaKernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason;
    if (!cuda::IsCudaAvailable(&reason)) GTEST_SKIP() << "SKIPPED: no CUDA device: " << reason;
    auto s = cuda::Stream::Create();
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    stream_ = std::move(s).value();
  }
  cuda::StreamHandle stream() const { return stream_.get(); }

  cuda::Stream stream_;
};

template <typename T>
T Must(Result<T> r) {
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) std::abort();
  return std::move(r).value();
}

// A HostKv copied to the device (data and block table).
struct DeviceKv {
  DeviceBuffer data, table;
  DeviceKvTensor tensor;

  static DeviceKv Upload(const HostKv& x) {
    DeviceKv d;
    d.data = Must(DeviceBuffer::Allocate(x.data.size()));
    EXPECT_TRUE(d.data.CopyFromHost(x.data.data(), x.data.size()).ok());
    if (!x.table.empty()) {
      d.table = Must(DeviceBuffer::Allocate(x.table.size() * sizeof(int32_t)));
      EXPECT_TRUE(d.table.CopyFromHost(x.table.data(), d.table.size()).ok());
    }
    d.tensor.data = d.data.data();
    d.tensor.dtype = x.dtype;
    d.tensor.tokens = x.tokens;
    d.tensor.kv_heads = x.kv_heads;
    d.tensor.head_dim = x.head_dim;
    d.tensor.block_size = x.block_size;
    d.tensor.num_blocks = x.num_blocks;
    d.tensor.block_table = x.block_size ? d.table.as<int32_t>() : nullptr;
    return d;
  }
  void Download(HostKv* x) const {
    EXPECT_TRUE(data.CopyToHost(x->data.data(), x->data.size()).ok());
  }
};

DeviceBuffer UploadBytes(const std::vector<uint8_t>& bytes) {
  DeviceBuffer b = Must(DeviceBuffer::Allocate(std::max<size_t>(bytes.size(), 1)));
  EXPECT_TRUE(b.CopyFromHost(bytes.data(), bytes.size()).ok());
  return b;
}

std::vector<uint8_t> DownloadBytes(const DeviceBuffer& b, size_t n) {
  std::vector<uint8_t> out(n);
  EXPECT_TRUE(b.CopyToHost(out.data(), n).ok());
  return out;
}

TEST_F(CudaKernelTest, EncodeGivesTheReferenceAndCpuBytes) {
  uint64_t seed = 1;
  for (const Case& c : Cases()) {
    const RefCodec ref = RefCodec::Make(c.spec);
    auto codec = Must(CudaCodec::Create(c.spec));
    const ChunkDesc d = Desc(c.kind, c.token_begin, c.tokens, c.kv_heads, c.head_dim, c.seq_tokens);
    const uint64_t bytes = Must(codec->PayloadBytes(d));
    ASSERT_EQ(bytes, ref.PayloadBytes(d));
    for (DType dt : kDTypes) {
      for (uint32_t bs : kBlockSizes) {
        SCOPED_TRACE(Name(c, dt, bs));
        HostKv src = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, ++seed);
        FillAwkward(&src, 0, c.seq_tokens, seed);
        const DeviceKv dev = DeviceKv::Upload(src);
        DeviceBuffer payload = UploadBytes(std::vector<uint8_t>(bytes, 0xee));
        ASSERT_TRUE(codec->EncodeChunk(d, dev.tensor, payload.data(), bytes, stream()).ok());
        ASSERT_TRUE(codec->Wait(stream()).ok());
        const std::vector<uint8_t> got = DownloadBytes(payload, bytes);
        uint32_t errors = 0;
        EXPECT_EQ(got, ref.Encode(d, src.view(), &errors)) << "GPU bytes differ from the reference";
        const std::vector<float> f32 = src.ReadF32(c.token_begin, c.tokens);
        std::vector<uint8_t> cpu;
        ASSERT_TRUE(ref.cpu->Encode(d, f32.data(), &cpu).ok());
        EXPECT_EQ(got, cpu) << "GPU bytes differ from the CPU codec";
        // Cross-decoding: the CPU decodes the GPU's payload.
        std::vector<float> out(d.elements());
        EXPECT_TRUE(ref.cpu->Decode(d, got, out.data()).ok());
      }
    }
  }
}

TEST_F(CudaKernelTest, DecodeOfCpuPayloadsGivesTheCpuValuesInEveryLayout) {
  uint64_t seed = 1000;
  for (const Case& c : Cases()) {
    const RefCodec ref = RefCodec::Make(c.spec);
    auto codec = Must(CudaCodec::Create(c.spec));
    const ChunkDesc d = Desc(c.kind, c.token_begin, c.tokens, c.kv_heads, c.head_dim, c.seq_tokens);
    HostKv src = HostKv::Make(DType::kF32, c.seq_tokens, c.kv_heads, c.head_dim, 0, ++seed);
    FillAwkward(&src, 0, c.seq_tokens, seed);
    const std::vector<float> f32 = src.ReadF32(c.token_begin, c.tokens);
    std::vector<uint8_t> payload;
    ASSERT_TRUE(ref.cpu->Encode(d, f32.data(), &payload).ok());
    std::vector<float> decoded(d.elements());
    ASSERT_TRUE(ref.cpu->Decode(d, payload, decoded.data()).ok());
    const DeviceBuffer dev_payload = UploadBytes(payload);
    for (DType dt : kDTypes) {
      for (uint32_t bs : kBlockSizes) {
        SCOPED_TRACE(Name(c, dt, bs));
        HostKv got = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, seed);
        HostKv want = HostKv::Make(dt, c.seq_tokens, c.kv_heads, c.head_dim, bs, seed);
        for (uint32_t t = 0; t < c.tokens; ++t)
          for (uint32_t i = 0; i < want.row_elems(); ++i)
            want.Set(c.token_begin + t, i, decoded[uint64_t{t} * want.row_elems() + i]);
        const DeviceKv dst = DeviceKv::Upload(got);
        ASSERT_TRUE(
            codec->DecodeChunk(d, dev_payload.data(), payload.size(), dst.tensor, stream()).ok());
        ASSERT_TRUE(codec->Wait(stream()).ok());
        dst.Download(&got);
        EXPECT_TRUE(got.data == want.data) << "decoded bytes differ (or untouched memory changed)";
        EXPECT_TRUE(got.SpareBlocksUntouched());
      }
    }
  }
}

TEST_F(CudaKernelTest, DataErrorsSurfaceAtWaitAndAreCleared) {
  const ChunkDesc d = Desc(KvKind::kKey, 0, 96, 2, 64, 96);
  for (const char* spec : {"int8", "q8_0", "q4_0", "kivi2"}) {
    SCOPED_TRACE(spec);
    const RefCodec ref = RefCodec::Make(spec);
    auto codec = Must(CudaCodec::Create(spec));
    const uint64_t bytes = Must(codec->PayloadBytes(d));
    HostKv src = HostKv::Make(DType::kF32, 96, 2, 64, 16, 4);
    FillAwkward(&src, 0, 96, 4);
    // A corrupt scale: kCorrupt.
    uint32_t errors = 0;
    const std::vector<uint8_t> good_payload = ref.Encode(d, src.view(), &errors);
    ASSERT_EQ(errors, 0u);
    std::vector<uint8_t> payload = good_payload;
    const size_t at = ref.id == 5 ? 4 : 0;
    payload[at] = 0x00;
    payload[at + 1] = 0x7c;  // +inf
    DeviceBuffer bad = UploadBytes(payload);
    HostKv out = HostKv::Make(DType::kF16, 96, 2, 64, 16, 4);
    DeviceKv dst = DeviceKv::Upload(out);
    ASSERT_TRUE(codec->DecodeChunk(d, bad.data(), bytes, dst.tensor, stream()).ok());
    EXPECT_EQ(codec->Wait(stream()).code(), StatusCode::kCorrupt);
    EXPECT_TRUE(codec->Wait(stream()).ok()) << "errors must be cleared by Wait";
    // A non-finite input: kInvalidArgument.
    src.Set(5, 9, std::numeric_limits<float>::infinity());
    DeviceKv in = DeviceKv::Upload(src);
    DeviceBuffer p = Must(DeviceBuffer::Allocate(bytes));
    ASSERT_TRUE(codec->EncodeChunk(d, in.tensor, p.data(), bytes, stream()).ok());
    EXPECT_EQ(codec->Wait(stream()).code(), StatusCode::kInvalidArgument);
    // A block id outside the cache: kInvalidArgument, and nothing written through it.
    src.Set(5, 9, 1.0f);
    src.table[1] = 1 << 20;
    in = DeviceKv::Upload(src);
    ASSERT_TRUE(codec->EncodeChunk(d, in.tensor, p.data(), bytes, stream()).ok());
    EXPECT_EQ(codec->Wait(stream()).code(), StatusCode::kInvalidArgument);
    out.table[2] = -1;
    dst = DeviceKv::Upload(out);
    DeviceBuffer good = UploadBytes(good_payload);
    ASSERT_TRUE(codec->DecodeChunk(d, good.data(), bytes, dst.tensor, stream()).ok());
    EXPECT_EQ(codec->Wait(stream()).code(), StatusCode::kInvalidArgument);
    dst.Download(&out);
    EXPECT_TRUE(out.SpareBlocksUntouched());
  }
}

TEST_F(CudaKernelTest, KiviHeaderThatDisagreesIsCorrupt) {
  auto codec = Must(CudaCodec::Create("kivi4"));
  const RefCodec ref = RefCodec::Make("kivi4");
  const ChunkDesc d = Desc(KvKind::kValue, 0, 96, 2, 64, 96);
  HostKv src = HostKv::Make(DType::kF16, 96, 2, 64, 0, 8);
  FillAwkward(&src, 0, 96, 8);
  uint32_t errors = 0;
  std::vector<uint8_t> payload = ref.Encode(d, src.view(), &errors);
  payload[0] ^= 0x20;
  const DeviceBuffer p = UploadBytes(payload);
  HostKv out = HostKv::Make(DType::kF16, 96, 2, 64, 0, 8);
  const std::vector<uint8_t> before = out.data;
  const DeviceKv dst = DeviceKv::Upload(out);
  ASSERT_TRUE(codec->DecodeChunk(d, p.data(), payload.size(), dst.tensor, stream()).ok());
  EXPECT_EQ(codec->Wait(stream()).code(), StatusCode::kCorrupt);
  dst.Download(&out);
  EXPECT_EQ(out.data, before);
}

// More rows/blocks than one grid covers (kMaxGrid blocks x 8 warps): the grid-stride loops.
TEST_F(CudaKernelTest, LargeChunksMatchTheCpuCodec) {
  const uint32_t tokens = 70000, heads = 8, dim = 32;
  HostKv src = HostKv::Make(DType::kF16, tokens, heads, dim, 0, 11);
  FillAwkward(&src, 0, tokens, 11);
  const std::vector<float> f32 = src.ReadF32(0, tokens);
  const DeviceKv dev = DeviceKv::Upload(src);
  for (const char* spec : {"int8", "q8_0", "q4_0"}) {
    SCOPED_TRACE(spec);
    auto codec = Must(CudaCodec::Create(spec));
    const ChunkDesc d = Desc(KvKind::kValue, 0, tokens, heads, dim, tokens);
    const uint64_t bytes = Must(codec->PayloadBytes(d));
    DeviceBuffer p = Must(DeviceBuffer::Allocate(bytes));
    ASSERT_TRUE(codec->EncodeChunk(d, dev.tensor, p.data(), bytes, stream()).ok());
    ASSERT_TRUE(codec->Wait(stream()).ok());
    std::vector<uint8_t> cpu;
    ASSERT_TRUE(RefCodec::Make(spec).cpu->Encode(d, f32.data(), &cpu).ok());
    EXPECT_TRUE(DownloadBytes(p, bytes) == cpu);
  }
}

TEST_F(CudaKernelTest, HostPointersAndBadArgumentsAreRejectedBeforeLaunch) {
  auto codec = Must(CudaCodec::Create("int8"));
  const ChunkDesc d = Desc(KvKind::kKey, 0, 4, 2, 64, 4);
  HostKv src = HostKv::Make(DType::kF16, 4, 2, 64, 0, 1);
  DeviceKvTensor host_view;
  host_view.data = src.data.data();
  host_view.tokens = 4;
  host_view.kv_heads = 2;
  host_view.head_dim = 64;
  DeviceBuffer p = Must(DeviceBuffer::Allocate(Must(codec->PayloadBytes(d))));
  EXPECT_EQ(codec->EncodeChunk(d, host_view, p.data(), p.size(), stream()).code(),
            StatusCode::kInvalidArgument);
  const DeviceKv dev = DeviceKv::Upload(src);
  EXPECT_EQ(codec->EncodeChunk(d, dev.tensor, p.data(), p.size() - 1, stream()).code(),
            StatusCode::kInvalidArgument);  // payload buffer too small
  ChunkDesc past = d;
  past.token_begin = 1;
  past.seq_tokens = 5;
  EXPECT_EQ(codec->EncodeChunk(past, dev.tensor, p.data(), p.size(), stream()).code(),
            StatusCode::kInvalidArgument);  // tokens beyond the view
  EXPECT_EQ(codec->DecodeChunk(d, p.data(), p.size() + 1, dev.tensor, stream()).code(),
            StatusCode::kCorrupt);  // wrong payload size
  auto q4 = Must(CudaCodec::Create("q4_0"));
  const ChunkDesc odd = Desc(KvKind::kKey, 0, 4, 2, 48, 4);
  EXPECT_EQ(q4->PayloadBytes(odd).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(codec->Wait(stream()).ok());
}

}  // namespace
}  // namespace kvwire::cuda_test
