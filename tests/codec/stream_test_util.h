// Helpers of the stream format tests (stream_*_test.cpp): a random KV cache, stream infos, a
// small two-level stream of the test codecs, full decoding, a stream taken apart and put back
// together with its CRCs recomputed (to reach the checks behind the checksums), and the expected
// refusal of a bad stream.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "codec/stream_format.h"
#include "fuzz/test_codecs.h"
#include "kvwire/stream.h"

namespace kvwire::stream_testing {

inline KvCache MakeCache(const KvShape& shape, DType dtype, uint32_t seed) {
  auto cache = KvCache::Create(shape, dtype);
  EXPECT_TRUE(cache.ok()) << cache.status().ToString();
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const KvView view = cache->view();
  std::vector<float> row(size_t{shape.kv_heads} * shape.head_dim);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      for (uint32_t t = 0; t < shape.tokens; ++t) {
        for (float& x : row) x = dist(rng);
        EXPECT_TRUE(view.WriteF32(l, kind, t, 1, row.data()).ok());
      }
    }
  }
  return std::move(cache).value();
}

inline std::vector<float> ReadAll(const KvView& view) {
  const KvShape& s = view.shape();
  std::vector<float> all(s.elements());
  float* p = all.data();
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      EXPECT_TRUE(view.ReadF32(l, kind, 0, s.tokens, p).ok());
      p += s.tensor_elements();
    }
  }
  return all;
}

inline StreamInfo MakeInfo(const KvShape& shape, DType dtype, std::vector<std::string> levels) {
  StreamInfo info;
  info.shape = shape;
  info.dtype = dtype;
  info.metadata.positions_start = 3;
  info.metadata.rope_theta = 10000.0;
  info.metadata.rope_style = "neox";
  info.metadata.model_fingerprint = "test-model";
  info.levels = std::move(levels);
  return info;
}

// A built-in codec these tests use is registered: the codecs are part of the product, so a
// missing one fails the test that needs it instead of skipping it.
inline ::testing::AssertionResult Registered(const std::string& spec) {
  auto codec = CreateCodec(spec);
  if (codec.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "built-in codec " << spec << " is not registered: " << codec.status().ToString();
}

class StreamTest : public ::testing::Test {
 protected:
  void SetUp() override { testing::RegisterTestCodecs(); }

  // A small multi-chunk, two-level stream (~1.5 KB): layers alternate between the levels.
  static constexpr KvShape kSmall{2, 6, 2, 4};
  std::vector<uint8_t> SmallStream(const KvCache& cache, uint32_t chunk_tokens = 4) {
    auto writer =
        StreamWriter::Create(MakeInfo(kSmall, DType::kF32, {"test-f32", "test-f32:align=2"}),
                             StreamWriterOptions{chunk_tokens, 1, CodecImpl::kOptimized});
    EXPECT_TRUE(writer.ok()) << writer.status().ToString();
    std::vector<uint8_t> out;
    EXPECT_TRUE((*writer)->WriteHeader(&out).ok());
    for (uint32_t l = 0; l < kSmall.layers; ++l) {
      EXPECT_TRUE((*writer)->WriteLayer(cache.view(), l, static_cast<uint8_t>(l % 2), &out).ok());
    }
    EXPECT_TRUE((*writer)->Finish(&out).ok());
    return out;
  }
};

// Decodes `bytes` completely: Open, DecodeAll into a fresh cache of the stream's shape.
inline Status DecodeFully(std::span<const uint8_t> bytes, std::vector<float>* values = nullptr) {
  KVWIRE_ASSIGN_OR_RETURN(auto reader, StreamReader::Open(bytes));
  // A hostile header may announce a huge shape: only DecodeStream (which validates the whole
  // stream before it allocates) may be trusted with it.
  if (reader->info().shape.elements() > (1u << 22)) return DecodeStream(bytes).status();
  KVWIRE_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(reader->info().shape, DType::kF32));
  KVWIRE_RETURN_IF_ERROR(reader->DecodeAll(cache.view()));
  if (values) *values = ReadAll(cache.view());
  return Status::Ok();
}

// A stream taken apart (trusting it) and put back together with every CRC recomputed, so a
// test can change one field and reach the semantic check behind the checksums.
struct Frame {
  ChunkHeader h;
  std::vector<uint8_t> payload;
  uint32_t flags = 0;
  bool keep_stream_tag = false;
  uint32_t stream_tag = 0;
  bool keep_payload_crc = false;
  bool keep_payload_bytes = false;  // else h.payload_bytes = payload.size()
};
struct Parsed {
  std::vector<uint8_t> header;
  std::vector<Frame> chunks;
  format::Trailer trailer;
};

inline Parsed Split(const std::vector<uint8_t>& s) {
  Parsed p;
  const uint32_t hb = format::LoadLE32(s.data() + format::preamble::kHeaderBytes);
  size_t pos = format::kHeaderOverheadBytes + hb;
  p.header.assign(s.begin(), s.begin() + pos);
  while (format::TagAt(s.data() + pos, format::kChunkTag)) {
    const format::ChunkWire w = format::DecodeChunkHeader(s.data() + pos);
    Frame f;
    f.h = w.h;
    f.payload.assign(s.begin() + pos + kChunkHeaderBytes,
                     s.begin() + pos + kChunkHeaderBytes + w.h.payload_bytes);
    p.chunks.push_back(std::move(f));
    pos += kChunkHeaderBytes + w.h.payload_bytes;
  }
  p.trailer = format::DecodeTrailer(s.data() + pos);
  return p;
}

inline std::vector<uint8_t> Join(const Parsed& p, bool fix_trailer = true) {
  std::vector<uint8_t> s = p.header;
  const uint32_t tag = format::LoadLE32(p.header.data() + p.header.size() - 4);
  for (const Frame& f : p.chunks) {
    ChunkHeader h = f.h;
    if (!f.keep_payload_crc) h.payload_crc32c = Crc32c(f.payload);
    if (!f.keep_payload_bytes) h.payload_bytes = static_cast<uint32_t>(f.payload.size());
    uint8_t hdr[kChunkHeaderBytes];
    format::EncodeChunkHeader(h, f.keep_stream_tag ? f.stream_tag : tag, hdr);
    if (f.flags != 0) {
      format::StoreLE32(hdr + format::chunk::kFlags, f.flags);
      format::StoreLE32(hdr + format::chunk::kHeaderCrc, Crc32c({hdr, format::chunk::kHeaderCrc}));
    }
    s.insert(s.end(), hdr, hdr + kChunkHeaderBytes);
    s.insert(s.end(), f.payload.begin(), f.payload.end());
  }
  format::Trailer t = p.trailer;
  if (fix_trailer) {
    t.chunk_count = static_cast<uint32_t>(p.chunks.size());
    t.total_bytes = s.size() + format::trailer::kSize;
    t.stream_crc = Crc32c(s);
  }
  uint8_t tr[format::trailer::kSize];
  format::EncodeTrailer(t, tr);
  s.insert(s.end(), tr, tr + sizeof(tr));
  return s;
}

// Header fields of the small stream, for building hostile headers.
inline format::HeaderFields SmallHeaderFields() {
  format::HeaderFields f;
  f.info = MakeInfo(KvShape{2, 6, 2, 4}, DType::kF32, {"test-f32", "test-f32:align=2"});
  f.codec_ids = {testing::kTestF32Id, testing::kTestF32Id};
  f.alignments = {1, 2};
  f.chunk_tokens = 4;
  return f;
}

// Decoding `bytes` fails with `code` (and `needle` in the message); so does inspection, unless
// the fault is one only a codec can see.
inline void ExpectCode(std::span<const uint8_t> bytes, StatusCode code, const std::string& needle = "",
                bool inspect_fails = true) {
  const Status s = DecodeFully(bytes);
  EXPECT_EQ(s.code(), code) << s.ToString();
  if (!needle.empty()) {
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.ToString();
  }
  EXPECT_NE(s.message().find("offset"), std::string::npos) << s.ToString();
  EXPECT_EQ(InspectStream(bytes).ok(), !inspect_fails);
}

inline std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

}  // namespace kvwire::stream_testing
