// A stream reader that refuses every corrupted, truncated or hostile stream with the right code
// and an offset: byte flips, truncation, trailing bytes, bad preambles, headers, chunk headers,
// ordering and trailers; errors stay sticky.
#include "kvwire/stream.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "codec/stream_format.h"
#include "codec/stream_test_util.h"

namespace kvwire {
namespace {

namespace fmt = format;
using namespace stream_testing;

TEST_F(StreamTest, EverySingleByteFlipIsRefused) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 12);
  const auto bytes = SmallStream(cache, 4);
  ASSERT_TRUE(DecodeFully(bytes).ok());
  ASSERT_LT(bytes.size(), 4096u);
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (uint8_t mask : {uint8_t{0x01}, uint8_t{0xff}}) {
      auto bad = bytes;
      bad[i] ^= mask;
      const Status s = DecodeFully(bad);
      ASSERT_FALSE(s.ok()) << "flip " << int(mask) << " at offset " << i << " decoded";
      ASSERT_NE(s.message().find("offset"), std::string::npos) << s.ToString();
      ASSERT_FALSE(InspectStream(bad).ok()) << "flip at " << i;
      ASSERT_FALSE(DecodeStream(bad).ok()) << "flip at " << i;
    }
  }
}

TEST_F(StreamTest, EveryFlipOfARealCodecStreamIsRefused) {
  std::vector<std::string> levels;
  for (const char* spec : {"fp16", "q4_0", "kivi2"}) {
    ASSERT_TRUE(Registered(spec));
    levels.push_back(spec);
  }
  const KvShape shape{static_cast<uint32_t>(levels.size()), 40, 1, 32};
  const KvCache cache = MakeCache(shape, DType::kF16, 13);
  auto writer = StreamWriter::Create(MakeInfo(shape, DType::kF16, levels),
                                     StreamWriterOptions{32, 1, CodecImpl::kOptimized});
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  std::vector<uint8_t> bytes;
  ASSERT_TRUE((*writer)->WriteHeader(&bytes).ok());
  for (uint32_t l = 0; l < shape.layers; ++l) {
    ASSERT_TRUE((*writer)->WriteLayer(cache.view(), l, static_cast<uint8_t>(l), &bytes).ok());
  }
  ASSERT_TRUE((*writer)->Finish(&bytes).ok());
  ASSERT_TRUE(DecodeFully(bytes).ok());
  for (size_t i = 0; i < bytes.size(); ++i) {
    auto bad = bytes;
    bad[i] ^= 0x10;
    ASSERT_FALSE(DecodeFully(bad).ok()) << "flip at offset " << i << " decoded";
  }
}

TEST_F(StreamTest, TruncationAtEveryOffsetIsRefused) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 14);
  const auto bytes = SmallStream(cache, 4);
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::span<const uint8_t> prefix(bytes.data(), n);
    const Status s = DecodeFully(prefix);
    ASSERT_EQ(s.code(), StatusCode::kTruncated) << "prefix of " << n << ": " << s.ToString();
    ASSERT_EQ(InspectStream(prefix).status().code(), StatusCode::kTruncated) << n;
    ASSERT_FALSE(DecodeStream(prefix).ok()) << n;
  }
}

TEST_F(StreamTest, TrailingBytesAreRefused) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 15);
  auto bytes = SmallStream(cache, 4);
  bytes.push_back(0);
  ExpectCode(bytes, StatusCode::kCorrupt, "after the trailer");
}

TEST_F(StreamTest, PreambleErrors) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 16);
  const auto good = SmallStream(cache, 4);
  {
    auto bad = good;
    bad[0] = 'X';
    ExpectCode(bad, StatusCode::kCorrupt, "magic");
    ExpectCode(Bytes("XY"), StatusCode::kCorrupt, "magic");
    ExpectCode(Bytes("KV"), StatusCode::kTruncated);
    ExpectCode(Bytes(""), StatusCode::kTruncated);
  }
  {
    // A future major version is refused before anything after the version is interpreted.
    auto bad = good;
    fmt::StoreLE16(bad.data() + fmt::preamble::kMajor, 2);
    fmt::StoreLE32(bad.data() + fmt::preamble::kHeaderBytes, 0xffffffffu);
    ExpectCode(bad, StatusCode::kVersionMismatch, "version 2");
    fmt::StoreLE16(bad.data() + fmt::preamble::kMajor, 0);
    ExpectCode(bad, StatusCode::kVersionMismatch);
  }
  {
    auto bad = good;
    fmt::StoreLE32(bad.data() + fmt::preamble::kHeaderBytes, kMaxHeaderBytes + 1);
    ExpectCode(bad, StatusCode::kCorrupt, "exceeds the bound");
    fmt::StoreLE32(bad.data() + fmt::preamble::kHeaderBytes, 0xffffffffu);
    ExpectCode(bad, StatusCode::kCorrupt, "exceeds the bound");
    // Within the bound but past the end of the stream: truncated.
    fmt::StoreLE32(bad.data() + fmt::preamble::kHeaderBytes, kMaxHeaderBytes);
    ExpectCode(bad, StatusCode::kTruncated);
  }
}

TEST_F(StreamTest, NewerMinorVersionIsRead) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 17);
  Parsed p = Split(SmallStream(cache, 4));
  p.header = fmt::EncodeHeader(SmallHeaderFields(), 1, 9);
  std::vector<float> got;
  const Status s = DecodeFully(Join(p), &got);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(got, ReadAll(cache.view()));
}

TEST_F(StreamTest, HostileHeaders) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 18);
  const Parsed base = Split(SmallStream(cache, 4));
  auto with = [&](auto mutate) {
    fmt::HeaderFields f = SmallHeaderFields();
    mutate(f);
    Parsed p = base;
    p.header = fmt::EncodeHeader(f);
    return Join(p);
  };
  // The unmodified rebuild is valid (so each refusal below is the field's doing).
  ASSERT_TRUE(DecodeFully(with([](fmt::HeaderFields&) {})).ok());

  ExpectCode(with([](auto& f) { f.info.shape.layers = 0; }), StatusCode::kCorrupt, "layers");
  ExpectCode(with([](auto& f) { f.info.shape.head_dim = kMaxHeadDim + 1; }), StatusCode::kCorrupt,
             "head_dim");
  ExpectCode(with([](auto& f) { f.info.shape.tokens = kMaxTokens + 1; }), StatusCode::kCorrupt,
             "tokens");
  ExpectCode(with([](auto& f) { f.info.token_begin = kMaxTokens; }), StatusCode::kCorrupt,
             "token_begin");
  ExpectCode(with([](auto& f) { f.info.dtype = static_cast<DType>(7); }), StatusCode::kCorrupt,
             "dtype");
  ExpectCode(with([](auto& f) { f.info.metadata.rope_theta = NAN; }), StatusCode::kCorrupt,
             "rope_theta");
  ExpectCode(with([](auto& f) { f.info.metadata.positions_start = -1; }), StatusCode::kCorrupt,
             "positions_start");
  ExpectCode(with([](auto& f) {
               f.info.levels.clear();
               f.codec_ids.clear();
               f.alignments.clear();
             }),
             StatusCode::kCorrupt, "level count");
  ExpectCode(with([](auto& f) {
               f.info.levels.assign(kMaxLevels + 1, "test-f32");
               f.codec_ids.assign(kMaxLevels + 1, testing::kTestF32Id);
               f.alignments.assign(kMaxLevels + 1, 1);
             }),
             StatusCode::kCorrupt, "level count");
  ExpectCode(with([](auto& f) { f.alignments[0] = 0; }), StatusCode::kCorrupt, "alignment");
  ExpectCode(with([](auto& f) { f.info.levels[0] = ""; }), StatusCode::kCorrupt, "empty");
  // A codec this build does not have: unsupported for decoding, but inspection still works.
  {
    const auto bytes = with([](auto& f) { f.info.levels[1] = "no-such-codec"; });
    ExpectCode(bytes, StatusCode::kUnsupported, "no-such-codec", /*inspect_fails=*/false);
  }
  // The header's codec id or alignment disagrees with this build's codec.
  ExpectCode(with([](auto& f) { f.codec_ids[0] = 77; }), StatusCode::kCorrupt, "id");
  ExpectCode(with([](auto& f) { f.alignments[1] = 4; }), StatusCode::kCorrupt, "alignment",
             /*inspect_fails=*/false);  // chunks at 0 and 4 fit alignment 4 as well
  // A header that is not protobuf at all (with a valid CRC).
  {
    std::vector<uint8_t> h(fmt::preamble::kSize);
    fmt::EncodePreamble(fmt::Preamble{1, 0, 3}, h.data());
    h.insert(h.end(), {0xff, 0xff, 0xff});
    h.resize(h.size() + 4);
    fmt::StoreLE32(h.data() + h.size() - 4, Crc32c({h.data(), h.size() - 4}));
    Parsed p = base;
    p.header = h;
    ExpectCode(Join(p), StatusCode::kCorrupt, "parse");
  }
}

TEST_F(StreamTest, HostileChunkHeaders) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 19);
  const Parsed base = Split(SmallStream(cache, 4));
  ASSERT_EQ(base.chunks.size(), 8u);
  auto with = [&](auto mutate) {
    Parsed p = base;
    mutate(p);
    return Join(p);
  };
  ASSERT_TRUE(DecodeFully(with([](Parsed&) {})).ok());

  ExpectCode(with([](Parsed& p) { p.chunks[1].h.level = 2; }), StatusCode::kCorrupt, "level");
  ExpectCode(with([](Parsed& p) { p.chunks[1].h.codec_id = 1; }), StatusCode::kCorrupt, "codec id");
  ExpectCode(with([](Parsed& p) { p.chunks[0].h.layer = 2; }), StatusCode::kCorrupt, "layer");
  ExpectCode(with([](Parsed& p) { p.chunks[1].h.tokens = 3; }), StatusCode::kCorrupt,
             "exceeds the stream");
  ExpectCode(with([](Parsed& p) { p.chunks[0].h.tokens = 0; }), StatusCode::kCorrupt, "empty");
  ExpectCode(with([](Parsed& p) { p.chunks[2].flags = 1; }), StatusCode::kCorrupt, "flags");
  ExpectCode(with([](Parsed& p) {
               p.chunks[2].keep_stream_tag = true;
               p.chunks[2].stream_tag = 0x12345678;
             }),
             StatusCode::kCorrupt, "another stream");
  ExpectCode(with([](Parsed& p) {
               p.chunks[0].keep_payload_crc = true;
               p.chunks[0].h.payload_crc32c ^= 1;
             }),
             StatusCode::kCorrupt, "payload CRC32C");
  // Level 1 has alignment 2: a chunk starting at token 1 is misaligned.
  ExpectCode(with([](Parsed& p) {
               p.chunks[4].h.tokens = 1;
               p.chunks[4].payload.resize(1 * 8 * 4);
               p.chunks[5].h.token_begin = 1;
               p.chunks[5].h.tokens = 5;
               p.chunks[5].payload.resize(5 * 8 * 4);
             }),
             StatusCode::kCorrupt, "alignment");
  // Lengths: beyond the format's bound, beyond the stream, below the payload floor.
  ExpectCode(with([](Parsed& p) {
               p.chunks[0].h.payload_bytes = 0xffffffffu;
               p.chunks[0].keep_payload_bytes = true;
             }),
             StatusCode::kCorrupt, "bound");
  ExpectCode(with([](Parsed& p) {
               p.chunks[0].h.payload_bytes = 1u << 30;
               p.chunks[0].keep_payload_bytes = true;
             }),
             StatusCode::kTruncated, "payload");
  {
    // A hostile header announcing the largest shape, and chunks whose payload is too small
    // for what they claim: refused before anything is allocated.
    fmt::HeaderFields f = SmallHeaderFields();
    f.info.shape = KvShape{kMaxLayers, kMaxTokens, kMaxKvHeads, kMaxHeadDim};
    Parsed p = base;
    p.header = fmt::EncodeHeader(f);
    p.chunks[0].h.tokens = 64;  // 64 x 2^20 = 2^26 elements, within the chunk bound
    ExpectCode(Join(p), StatusCode::kCorrupt, "cannot hold");
    p.chunks[0].h.tokens = 65;
    ExpectCode(Join(p), StatusCode::kCorrupt, "chunk bound");
  }
}

TEST_F(StreamTest, OrderingRules) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 20);
  const Parsed base = Split(SmallStream(cache, 4));
  auto with = [&](auto mutate) {
    Parsed p = base;
    mutate(p);
    return Join(p);
  };
  // Duplicate of a chunk (right after itself, and later on).
  ExpectCode(with([](Parsed& p) { p.chunks.insert(p.chunks.begin() + 1, p.chunks[0]); }),
             StatusCode::kCorrupt, "duplicate");
  ExpectCode(with([](Parsed& p) { p.chunks.push_back(p.chunks[3]); }), StatusCode::kCorrupt,
             "duplicate");
  // Swapped token ranges, V before K, layer 1 before layer 0.
  ExpectCode(with([](Parsed& p) { std::swap(p.chunks[0], p.chunks[1]); }), StatusCode::kCorrupt,
             "out of order");
  ExpectCode(with([](Parsed& p) {
               std::swap(p.chunks[0], p.chunks[2]);
               std::swap(p.chunks[1], p.chunks[3]);
             }),
             StatusCode::kCorrupt, "out of order");
  ExpectCode(
      with([](Parsed& p) { std::rotate(p.chunks.begin(), p.chunks.begin() + 4, p.chunks.end()); }),
      StatusCode::kCorrupt, "out of order");
  // Overlap: second chunk starts inside the first.
  ExpectCode(with([](Parsed& p) {
               p.chunks[1].h.token_begin = 3;
               p.chunks[1].h.tokens = 3;
               p.chunks[1].payload.resize(3 * 8 * 4);
             }),
             StatusCode::kCorrupt, "overlapping");
  // A gap: the second chunk starts after the first ends.
  ExpectCode(with([](Parsed& p) {
               p.chunks[0].h.tokens = 3;
               p.chunks[0].payload.resize(3 * 8 * 4);
             }),
             StatusCode::kCorrupt, "out of order");
  // A missing chunk (trailer recomputed): the data is incomplete.
  ExpectCode(with([](Parsed& p) { p.chunks.pop_back(); }), StatusCode::kCorrupt, "missing");
}

TEST_F(StreamTest, TrailerMismatches) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 21);
  const auto good = SmallStream(cache, 4);
  const Parsed base = Split(good);
  auto with = [&](auto mutate) {
    Parsed p = base;
    p.trailer = Split(good).trailer;
    mutate(p.trailer);
    return Join(p, /*fix_trailer=*/false);
  };
  ASSERT_EQ(with([](fmt::Trailer&) {}), good);
  ExpectCode(with([](fmt::Trailer& t) { t.chunk_count += 1; }), StatusCode::kCorrupt, "chunks");
  ExpectCode(with([](fmt::Trailer& t) { t.total_bytes -= 1; }), StatusCode::kCorrupt, "bytes");
  ExpectCode(with([](fmt::Trailer& t) { t.stream_crc ^= 0x80; }), StatusCode::kCorrupt,
             "stream CRC32C");
  // An unknown frame tag where the trailer should be.
  auto bad = good;
  bad[bad.size() - fmt::trailer::kSize + 3] = 'X';
  ExpectCode(bad, StatusCode::kCorrupt, "neither tag");
}

TEST_F(StreamTest, ErrorsAreStickyAndDecodeAllRewinds) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 22);
  auto good = SmallStream(cache, 4);
  {
    auto reader = StreamReader::Open(good);
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE((*reader)->Next().ok());
    ASSERT_TRUE((*reader)->Next().ok());
    auto dst = KvCache::Create(kSmall, DType::kF32);
    ASSERT_TRUE((*reader)->DecodeAll(dst->view()).ok());  // from the first chunk again
    EXPECT_EQ(ReadAll(dst->view()), ReadAll(cache.view()));
    ASSERT_TRUE((*reader)->DecodeAll(dst->view()).ok());
  }
  auto bad = good;
  bad[fmt::kHeaderOverheadBytes + 200] ^= 1;  // somewhere in the chunks
  auto reader = StreamReader::Open(bad);
  ASSERT_TRUE(reader.ok());
  Status first;
  for (;;) {
    auto c = (*reader)->Next();
    if (!c.ok()) {
      first = c.status();
      break;
    }
  }
  ASSERT_EQ(first.code(), StatusCode::kCorrupt);
  EXPECT_EQ((*reader)->Next().status().message(), first.message());
  auto dst = KvCache::Create(kSmall, DType::kF32);
  EXPECT_EQ((*reader)->DecodeAll(dst->view()).message(), first.message());
}

}  // namespace
}  // namespace kvwire
