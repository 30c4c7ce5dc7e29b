// The stream writer: a stream bound to the profile it was written with, and a writer that refuses
// misuse, fails a whole layer without appending, keeps the payload floor and the chunk bound.
#include "kvwire/stream.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "codec/stream_test_util.h"
#include "kvwire/profile.h"

namespace kvwire {
namespace {

using namespace stream_testing;

// A small valid profile: identity bases, no codebooks.
Profile TinyProfile(const std::string& fingerprint) {
  Profile p;
  p.model_fingerprint = fingerprint;
  p.layers = 1;
  p.kv_heads = 1;
  p.heads = 1;
  p.head_dim = 2;
  p.basis_kind = "pca";
  p.bases.resize(kProfileSlots);
  for (uint32_t slot : {0u, 2u}) {
    ProfileBasis& b = p.bases[slot];
    b.mean = {0, 0};
    b.forward = b.inverse = {1, 0, 0, 1};
    b.variance = {2, 1};
    b.distortion.assign(kProfileMaxBits + 1, 0.0);
    b.distortion[0] = 1.0;
  }
  return p;
}

TEST_F(StreamTest, StreamIsBoundToItsProfile) {
  const Profile mine = TinyProfile("model-a"), other = TinyProfile("model-b");
  auto id = mine.Id();
  ASSERT_TRUE(id.ok()) << "the id of a valid profile: " << id.status().ToString();
  const KvCache cache = MakeCache(kSmall, DType::kF32, 26);
  auto bytes = EncodeStream(cache.view(), MakeInfo(kSmall, DType::kF32, {"test-f32"}), {}, &mine);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto sum = InspectStream(*bytes);
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ(sum->info.profile_id, *id);  // the writer records the profile's id
  EXPECT_TRUE(StreamReader::Open(*bytes, &mine).ok());
  EXPECT_TRUE(StreamReader::Open(*bytes).ok());  // no profile: only profile codecs need one
  auto wrong = StreamReader::Open(*bytes, &other);
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("needs profile"), std::string::npos);
  EXPECT_EQ(DecodeStream(*bytes, &other).status().code(), StatusCode::kInvalidArgument);
  // A writer given a profile and a different id in the info refuses.
  StreamInfo info = MakeInfo(kSmall, DType::kF32, {"test-f32"});
  info.profile_id = "sha256:00";
  EXPECT_EQ(StreamWriter::Create(info, {}, &mine).status().code(), StatusCode::kInvalidArgument);
}

// ---- writer misuse ---------------------------------------------------------------------------

TEST_F(StreamTest, WriterRefusesMisuse) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 23);
  const StreamInfo info = MakeInfo(kSmall, DType::kF32, {"test-f32"});
  auto code = [](const auto& r) { return r.status().code(); };
  EXPECT_EQ(code(StreamWriter::Create(MakeInfo(kSmall, DType::kF32, {}))),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(StreamWriter::Create(MakeInfo(KvShape{0, 1, 1, 1}, DType::kF32, {"test-f32"}))),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(StreamWriter::Create(MakeInfo(kSmall, DType::kF32, {"no-such-codec"}))),
            StatusCode::kNotFound);
  EXPECT_EQ(code(StreamWriter::Create(info, StreamWriterOptions{0, 0, CodecImpl::kOptimized})),
            StatusCode::kInvalidArgument);

  auto w = StreamWriter::Create(info);
  ASSERT_TRUE(w.ok());
  std::vector<uint8_t> out;
  EXPECT_EQ((*w)->WriteLayer(cache.view(), 0, 0, &out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*w)->Finish(&out).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE((*w)->WriteHeader(&out).ok());
  EXPECT_EQ((*w)->WriteHeader(&out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*w)->WriteLayer(cache.view(), 1, 0, &out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*w)->WriteLayer(cache.view(), 0, 1, &out).code(), StatusCode::kInvalidArgument);
  auto wrong = KvCache::Create(KvShape{2, 6, 2, 5}, DType::kF32);
  EXPECT_EQ((*w)->WriteLayer(wrong->view(), 0, 0, &out).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE((*w)->WriteLayer(cache.view(), 0, 0, &out).ok());
  EXPECT_EQ((*w)->Finish(&out).code(), StatusCode::kInvalidArgument);  // layer 1 missing
  ASSERT_TRUE((*w)->WriteLayer(cache.view(), 1, 0, &out).ok());
  ASSERT_TRUE((*w)->Finish(&out).ok());
  EXPECT_EQ((*w)->WriteLayer(cache.view(), 2, 0, &out).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(DecodeFully(out).ok());

  // EncodeChunk validates its range and alignment.
  auto a = StreamWriter::Create(MakeInfo(kSmall, DType::kF32, {"test-f32:align=2"}));
  ASSERT_TRUE(a.ok());
  std::vector<uint8_t> frame;
  EXPECT_EQ((*a)->EncodeChunk(cache.view(), 0, KvKind::kKey, 1, 2, 0, &frame).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ((*a)->EncodeChunk(cache.view(), 0, KvKind::kKey, 4, 3, 0, &frame).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ((*a)->EncodeChunk(cache.view(), 0, KvKind::kKey, 0, 0, 0, &frame).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(frame.empty());
}

TEST_F(StreamTest, WriterFailsWholeLayerAndAppendsNothing) {
  KvCache cache = MakeCache(kSmall, DType::kF32, 24);
  float nan = NAN;
  std::memcpy(cache.tensor(1, KvKind::kValue).data() + 4 * 9, &nan, 4);
  auto w = StreamWriter::Create(MakeInfo(kSmall, DType::kF32, {"test-f32"}),
                                StreamWriterOptions{2, 3, CodecImpl::kOptimized});
  ASSERT_TRUE(w.ok());
  std::vector<uint8_t> out;
  ASSERT_TRUE((*w)->WriteHeader(&out).ok());
  ASSERT_TRUE((*w)->WriteLayer(cache.view(), 0, 0, &out).ok());
  const size_t before = out.size();
  const Status s = (*w)->WriteLayer(cache.view(), 1, 0, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("layer 1 V"), std::string::npos) << s.ToString();
  EXPECT_EQ(out.size(), before);
}

TEST_F(StreamTest, WriterRefusesPayloadBelowTheFloor) {
  const KvShape shape{1, 64, 2, 4};  // 512 elements in one chunk, one payload byte
  const KvCache cache = MakeCache(shape, DType::kF32, 25);
  auto bytes = EncodeStream(cache.view(), MakeInfo(shape, DType::kF32, {"test-tiny"}));
  EXPECT_EQ(bytes.status().code(), StatusCode::kUnsupported) << bytes.status().ToString();
  // At <= 256 elements per byte it is allowed.
  auto ok = EncodeStream(cache.view(), MakeInfo(shape, DType::kF32, {"test-tiny"}),
                         StreamWriterOptions{32, 1, CodecImpl::kOptimized});
  EXPECT_TRUE(ok.ok()) << ok.status().ToString();
}

TEST_F(StreamTest, WriterCapsChunksAtTheElementBound) {
  // 2^20 elements per token row: chunk_tokens 0 must still split at 64 tokens (2^26 elements).
  // Nothing is encoded here; EncodeChunk's refusal shows the bound without allocating 2^28 bytes.
  const KvShape shape{1, 65, kMaxKvHeads, kMaxHeadDim};
  auto w = StreamWriter::Create(MakeInfo(shape, DType::kF16, {"test-f32"}));
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<uint8_t> frame;
  const Status s = (*w)->EncodeChunk(KvView(), 0, KvKind::kKey, 0, 65, 0, &frame);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("exceeds"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace kvwire
