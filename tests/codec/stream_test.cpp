// The stream format (docs/FORMAT.md): CRC32C, round trips, determinism, paged sources, and a
// reader that refuses every corrupted, truncated or hostile stream with the right code.
#include "kvwire/stream.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "codec/quant_common.h"
#include "codec/stream_format.h"
#include "fuzz/test_codecs.h"
#include "kvwire/profile.h"

namespace kvwire {
namespace {

namespace fmt = format;

// ---- helpers ---------------------------------------------------------------------------------

KvCache MakeCache(const KvShape& shape, DType dtype, uint32_t seed) {
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

std::vector<float> ReadAll(const KvView& view) {
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

StreamInfo MakeInfo(const KvShape& shape, DType dtype, std::vector<std::string> levels) {
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

bool Available(const std::string& spec) { return CreateCodec(spec).ok(); }

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
Status DecodeFully(std::span<const uint8_t> bytes, std::vector<float>* values = nullptr) {
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
  fmt::Trailer trailer;
};

Parsed Split(const std::vector<uint8_t>& s) {
  Parsed p;
  const uint32_t hb = fmt::LoadLE32(s.data() + fmt::preamble::kHeaderBytes);
  size_t pos = fmt::kHeaderOverheadBytes + hb;
  p.header.assign(s.begin(), s.begin() + pos);
  while (fmt::TagAt(s.data() + pos, fmt::kChunkTag)) {
    const fmt::ChunkWire w = fmt::DecodeChunkHeader(s.data() + pos);
    Frame f;
    f.h = w.h;
    f.payload.assign(s.begin() + pos + kChunkHeaderBytes,
                     s.begin() + pos + kChunkHeaderBytes + w.h.payload_bytes);
    p.chunks.push_back(std::move(f));
    pos += kChunkHeaderBytes + w.h.payload_bytes;
  }
  p.trailer = fmt::DecodeTrailer(s.data() + pos);
  return p;
}

std::vector<uint8_t> Join(const Parsed& p, bool fix_trailer = true) {
  std::vector<uint8_t> s = p.header;
  const uint32_t tag = fmt::LoadLE32(p.header.data() + p.header.size() - 4);
  for (const Frame& f : p.chunks) {
    ChunkHeader h = f.h;
    if (!f.keep_payload_crc) h.payload_crc32c = Crc32c(f.payload);
    if (!f.keep_payload_bytes) h.payload_bytes = static_cast<uint32_t>(f.payload.size());
    uint8_t hdr[kChunkHeaderBytes];
    fmt::EncodeChunkHeader(h, f.keep_stream_tag ? f.stream_tag : tag, hdr);
    if (f.flags != 0) {
      fmt::StoreLE32(hdr + fmt::chunk::kFlags, f.flags);
      fmt::StoreLE32(hdr + fmt::chunk::kHeaderCrc, Crc32c({hdr, fmt::chunk::kHeaderCrc}));
    }
    s.insert(s.end(), hdr, hdr + kChunkHeaderBytes);
    s.insert(s.end(), f.payload.begin(), f.payload.end());
  }
  fmt::Trailer t = p.trailer;
  if (fix_trailer) {
    t.chunk_count = static_cast<uint32_t>(p.chunks.size());
    t.total_bytes = s.size() + fmt::trailer::kSize;
    t.stream_crc = Crc32c(s);
  }
  uint8_t tr[fmt::trailer::kSize];
  fmt::EncodeTrailer(t, tr);
  s.insert(s.end(), tr, tr + sizeof(tr));
  return s;
}

// Header fields of the small stream, for building hostile headers.
fmt::HeaderFields SmallHeaderFields() {
  fmt::HeaderFields f;
  f.info = MakeInfo(KvShape{2, 6, 2, 4}, DType::kF32, {"test-f32", "test-f32:align=2"});
  f.codec_ids = {testing::kTestF32Id, testing::kTestF32Id};
  f.alignments = {1, 2};
  f.chunk_tokens = 4;
  return f;
}

// Decoding `bytes` fails with `code` (and `needle` in the message); so does inspection, unless
// the fault is one only a codec can see.
void ExpectCode(std::span<const uint8_t> bytes, StatusCode code, const std::string& needle = "",
                bool inspect_fails = true) {
  const Status s = DecodeFully(bytes);
  EXPECT_EQ(s.code(), code) << s.ToString();
  if (!needle.empty()) {
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.ToString();
  }
  EXPECT_NE(s.message().find("offset"), std::string::npos) << s.ToString();
  EXPECT_EQ(InspectStream(bytes).ok(), !inspect_fails);
}

// ---- CRC32C ----------------------------------------------------------------------------------

std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

TEST(Crc32cTest, KnownVectors) {
  // The check value of the CRC catalogue and the test vectors of RFC 3720 B.4.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<uint8_t>(i);
    down[i] = static_cast<uint8_t>(31 - i);
  }
  for (auto* f : {&Crc32c, &fmt::Crc32cPortable, &fmt::Crc32cHardware}) {
    EXPECT_EQ(f({}, 0), 0u);
    EXPECT_EQ(f(Bytes("123456789"), 0), 0xE3069283u);
    EXPECT_EQ(f(zeros, 0), 0x8A9136AAu);
    EXPECT_EQ(f(ones, 0), 0x62A8AB43u);
    EXPECT_EQ(f(up, 0), 0x46DD794Eu);
    EXPECT_EQ(f(down, 0), 0x113FDB5Cu);
  }
}

TEST(Crc32cTest, HardwareMatchesPortableAtEveryLengthAndAlignment) {
#if defined(__x86_64__)
  EXPECT_TRUE(fmt::Crc32cHardwareAvailable()) << "the build targets x86-64-v2: SSE4.2 expected";
#endif
  std::mt19937 rng(7);
  std::vector<uint8_t> data(600);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t len = 0; offset + len <= data.size(); len += (len < 70 ? 1 : 37)) {
      std::span<const uint8_t> s(data.data() + offset, len);
      ASSERT_EQ(fmt::Crc32cHardware(s, 0x1234u), fmt::Crc32cPortable(s, 0x1234u))
          << "offset " << offset << " len " << len;
    }
  }
}

// Long inputs run in three interleaved lanes of 4 KiB joined by a shift table: lengths around
// every multiple of the 12 KiB round, at odd offsets, from a non-zero start.
TEST(Crc32cTest, HardwareLanesMatchPortable) {
  std::mt19937 rng(11);
  std::vector<uint8_t> data(5 * 12288 + 64);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset : {0u, 3u}) {
    for (size_t round = 1; round <= 4; ++round) {
      for (size_t len : {round * 12288 - 1, round * 12288, round * 12288 + 1, round * 12288 + 13}) {
        std::span<const uint8_t> s(data.data() + offset, len);
        ASSERT_EQ(fmt::Crc32cHardware(s, 0x9e3779b9u), fmt::Crc32cPortable(s, 0x9e3779b9u))
            << "offset " << offset << " len " << len;
        ASSERT_EQ(fmt::Crc32cHardware(s, 0), fmt::Crc32cPortable(s, 0));
      }
    }
  }
}

// The crc32-instruction path alone, which Crc32cHardware skips for long inputs when it folds:
// the same lengths as above.
TEST(Crc32cTest, InstructionPathMatchesPortable) {
  std::mt19937 rng(13);
  std::vector<uint8_t> data(4 * 12288 + 64);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset : {0u, 5u}) {
    for (size_t len : {0u, 1u, 7u, 8u, 511u, 512u, 4097u, 12287u, 12288u, 12301u, 36864u, 49000u}) {
      std::span<const uint8_t> s(data.data() + offset, len);
      ASSERT_EQ(fmt::Crc32cInstruction(s, 0x51ed270bu), fmt::Crc32cPortable(s, 0x51ed270bu))
          << "offset " << offset << " len " << len;
    }
  }
}

// Folding (AVX-512 + VPCLMULQDQ) takes inputs of 512 bytes and more in 256-byte steps, then
// 16-byte blocks, then hands the last 0-15 bytes to the instruction: every length from 480 to
// 4 KiB, at every offset 0-15, from zero and non-zero registers, and long inputs. On a CPU
// without those instructions this checks the instruction path again, and says so.
TEST(Crc32cTest, FoldingMatchesPortableAtEveryLength) {
  if (!fmt::Crc32cFoldAvailable())
    std::cout << "[ NOTE     ] this CPU lacks AVX-512/VPCLMULQDQ: Crc32cHardware does not fold "
                 "here, so this test checks the crc32-instruction path only\n";
  std::mt19937 rng(17);
  std::vector<uint8_t> data(70000);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t len = 480; len <= 4096; ++len) {
      std::span<const uint8_t> s(data.data() + offset, len);
      ASSERT_EQ(fmt::Crc32cHardware(s, 0), fmt::Crc32cPortable(s, 0))
          << "offset " << offset << " len " << len;
      if (len % 7 == 0) {
        ASSERT_EQ(fmt::Crc32cHardware(s, 0xdeadbeefu), fmt::Crc32cPortable(s, 0xdeadbeefu))
            << "offset " << offset << " len " << len;
      }
    }
  }
  for (size_t len : {65536u, 65537u, 69999u - 3u}) {
    std::span<const uint8_t> s(data.data() + 3, len);
    ASSERT_EQ(fmt::Crc32cHardware(s, 0x0badf00du), fmt::Crc32cPortable(s, 0x0badf00du)) << len;
  }
  // All-zero and all-one data (no lucky cancellation from random bytes).
  std::vector<uint8_t> zeros(3000, 0), ones(3000, 0xff);
  EXPECT_EQ(fmt::Crc32cHardware(zeros, 0), fmt::Crc32cPortable(zeros, 0));
  EXPECT_EQ(fmt::Crc32cHardware(ones, 0x1u), fmt::Crc32cPortable(ones, 0x1u));
}

TEST(Crc32cTest, Continues) {
  const auto all = Bytes("the quick brown fox jumps over the lazy dog");
  for (size_t cut = 0; cut <= all.size(); ++cut) {
    std::span<const uint8_t> a(all.data(), cut), b(all.data() + cut, all.size() - cut);
    EXPECT_EQ(Crc32c(b, Crc32c(a)), Crc32c(all));
    EXPECT_EQ(fmt::Crc32cPortable(b, fmt::Crc32cPortable(a)), Crc32c(all));
  }
}

// The fused pass gives the CRC of the bytes and the finiteness of the halves in them that two
// separate passes give: lengths around its 12 KiB blocks, a non-finite value in the first block,
// a later block, the last half, or only in an odd trailing byte (not a half: still finite).
TEST(Crc32cTest, FiniteHalvesMatchesSeparatePasses) {
  std::mt19937 rng(5);
  std::vector<uint8_t> data(3 * 12288 + 64);
  for (size_t i = 0; i < data.size(); i += 2) {
    const uint16_t h = static_cast<uint16_t>(rng()) & 0xbfff;  // exponent never all ones
    std::memcpy(&data[i], &h, 2);
  }
  int non_finite_cases = 0;
  for (size_t len : {0u, 2u, 7u, 12286u, 12288u, 12290u, 24576u, 24577u, 36866u}) {
    for (long bad_at : {-1L, 0L, 12290L, long(len) - 2, long(len) - 1}) {
      if (bad_at >= long(len)) continue;
      std::vector<uint8_t> d(data.begin(), data.begin() + len);
      if (bad_at >= 0 && bad_at % 2 == 0 && size_t(bad_at) + 2 <= len) {
        const uint16_t inf = 0x7c00;
        std::memcpy(&d[bad_at], &inf, 2);
      } else if (bad_at >= 0) {
        d[bad_at] = 0x7c;  // the high byte of the last half, or a lone trailing byte (finite)
      }
      bool finite = false;
      const uint32_t crc = fmt::Crc32cFiniteHalves(d, 0x5eedu, &finite);
      EXPECT_EQ(crc, Crc32c(d, 0x5eedu)) << "len " << len << " bad at " << bad_at;
      const bool want = baseline::HalvesFinite(d.data(), d.size() / 2);
      EXPECT_EQ(finite, want) << "len " << len << " bad at " << bad_at;
      non_finite_cases += !want;
    }
  }
  EXPECT_GE(non_finite_cases, 10);  // the cases above do reach the non-finite branch
}

// The vector and word loops of HalvesFinite against the scalar definition: every length up to
// 100 halves at odd and even byte offsets, with one non-finite value (+inf, -inf, NaN) at each
// position, or none.
TEST(HalvesFiniteTest, MatchesTheScalarDefinition) {
  std::mt19937 rng(9);
  std::vector<uint16_t> halves(100);
  for (auto& h : halves) h = static_cast<uint16_t>(rng()) & 0xbbff;  // finite
  const uint16_t specials[] = {0x7c00, 0xfc00, 0x7e01};
  int refused = 0;
  for (size_t offset : {0u, 1u}) {
    for (size_t n = 0; n <= halves.size(); ++n) {
      for (long bad = -1; bad < long(n); ++bad) {
        std::vector<uint8_t> d(offset + 2 * n, 0xff);
        if (n > 0) std::memcpy(d.data() + offset, halves.data(), 2 * n);
        if (bad >= 0) std::memcpy(&d[offset + 2 * bad], &specials[bad % 3], 2);
        const bool want = baseline::HalvesFiniteRef(d.data() + offset, n);
        ASSERT_EQ(baseline::HalvesFinite(d.data() + offset, n), want)
            << "offset " << offset << " n " << n << " non-finite at " << bad;
        refused += !want;
      }
    }
  }
  EXPECT_EQ(refused, 2 * (100 * 101 / 2));  // every planted value is found by the reference
}

TEST(StreamFormatTest, LittleEndianLayout) {
  ChunkHeader h;
  h.layer = 0x01020304;
  h.kind = KvKind::kValue;
  h.level = 5;
  h.codec_id = 0x0607;
  h.token_begin = 0x08090a0b;
  h.tokens = 0x0c0d0e0f;
  h.payload_bytes = 0x10111213;
  h.payload_crc32c = 0x14151617;
  uint8_t b[kChunkHeaderBytes];
  fmt::EncodeChunkHeader(h, 0x18191a1b, b);
  const uint8_t expect[36] = {'K',  'V',  'W',  'C',  4,    3,    2,    1,    1,
                              5,    7,    6,    0x0b, 0x0a, 9,    8,    0x0f, 0x0e,
                              0x0d, 0x0c, 0x13, 0x12, 0x11, 0x10, 0x17, 0x16, 0x15,
                              0x14, 0x1b, 0x1a, 0x19, 0x18, 0,    0,    0,    0};
  EXPECT_EQ(0, std::memcmp(b, expect, 36));
  EXPECT_EQ(fmt::LoadLE32(b + 36), Crc32c({b, 36}));
  const fmt::ChunkWire w = fmt::DecodeChunkHeader(b);
  EXPECT_EQ(w.h.layer, h.layer);
  EXPECT_EQ(w.h.tokens, h.tokens);
  EXPECT_EQ(w.stream_tag, 0x18191a1bu);
}

// ---- round trips -----------------------------------------------------------------------------

TEST_F(StreamTest, RoundTripIsExactWithPassthroughCodec) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 1);
  for (uint32_t chunk_tokens : {0u, 1u, 3u, 4u, 6u, 100u}) {
    const auto bytes = SmallStream(cache, chunk_tokens);
    std::vector<float> got;
    ASSERT_TRUE(DecodeFully(bytes, &got).ok()) << chunk_tokens;
    EXPECT_EQ(got, ReadAll(cache.view())) << chunk_tokens;
    auto decoded = DecodeStream(bytes);
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(decoded->dtype(), DType::kF32);
    EXPECT_EQ(decoded->metadata().model_fingerprint, "test-model");
    EXPECT_EQ(decoded->metadata().rope_style, "neox");
    EXPECT_EQ(decoded->metadata().positions_start, 3);
    EXPECT_EQ(ReadAll(decoded->view()), ReadAll(cache.view()));
  }
}

TEST_F(StreamTest, ChunkingFollowsAlignmentAndOrder) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 2);
  // chunk_tokens 3: level 0 (align 1) -> 3+3; level 1 (align 2) -> rounded to 4 -> 4+2.
  const auto bytes = SmallStream(cache, 3);
  auto reader = StreamReader::Open(bytes);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->info().levels, (std::vector<std::string>{"test-f32", "test-f32:align=2"}));
  std::vector<std::tuple<uint32_t, int, uint32_t, uint32_t, int>> seen;
  for (;;) {
    auto c = (*reader)->Next();
    if (!c.ok()) {
      EXPECT_EQ(c.status().code(), StatusCode::kNotFound) << c.status().ToString();
      break;
    }
    seen.emplace_back(c->header.layer, static_cast<int>(c->header.kind), c->header.token_begin,
                      c->header.tokens, c->header.level);
  }
  const std::vector<std::tuple<uint32_t, int, uint32_t, uint32_t, int>> want = {
      {0, 0, 0, 3, 0}, {0, 0, 3, 3, 0}, {0, 1, 0, 3, 0}, {0, 1, 3, 3, 0},
      {1, 0, 0, 4, 1}, {1, 0, 4, 2, 1}, {1, 1, 0, 4, 1}, {1, 1, 4, 2, 1}};
  EXPECT_EQ(seen, want);
  // After the end: kNotFound again, not a crash or a new error.
  EXPECT_EQ((*reader)->Next().status().code(), StatusCode::kNotFound);
}

TEST_F(StreamTest, ChunksAlignInSequenceCoordinates) {
  // The stream starts at sequence token 3; alignment 4 puts boundaries at sequence tokens 4, 8,
  // 12: stream tokens [0,1) [1,5) [5,9) [9,10).
  const KvShape shape{1, 10, 1, 2};
  const KvCache cache = MakeCache(shape, DType::kF32, 30);
  StreamInfo info = MakeInfo(shape, DType::kF32, {"test-f32:align=4"});
  info.token_begin = 3;
  auto bytes = EncodeStream(cache.view(), info, StreamWriterOptions{3, 1, CodecImpl::kOptimized});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto reader = StreamReader::Open(*bytes);
  ASSERT_TRUE(reader.ok());
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  for (auto c = (*reader)->Next(); c.ok(); c = (*reader)->Next()) {
    if (c->header.kind == KvKind::kKey)
      ranges.emplace_back(c->header.token_begin, c->header.tokens);
  }
  EXPECT_EQ(ranges, (std::vector<std::pair<uint32_t, uint32_t>>{{0, 1}, {1, 4}, {5, 4}, {9, 1}}));
  EXPECT_TRUE(DecodeFully(*bytes).ok());
  // A chunk boundary off the alignment is refused by the reader (CRCs recomputed).
  Parsed p = Split(*bytes);
  p.chunks[0].h.tokens = 2;
  p.chunks[0].payload.resize(2 * 2 * 4);
  p.chunks[1].h.token_begin = 2;
  p.chunks[1].h.tokens = 3;
  p.chunks[1].payload.resize(3 * 2 * 4);
  ExpectCode(Join(p), StatusCode::kCorrupt, "alignment");
  // And by EncodeChunk.
  auto w = StreamWriter::Create(info);
  ASSERT_TRUE(w.ok());
  std::vector<uint8_t> frame;
  EXPECT_EQ((*w)->EncodeChunk(cache.view(), 0, KvKind::kKey, 4, 2, 0, &frame).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE((*w)->EncodeChunk(cache.view(), 0, KvKind::kKey, 5, 2, 0, &frame).ok());
}

TEST_F(StreamTest, InspectSummaryAddsUp) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 3);
  const auto bytes = SmallStream(cache, 4);
  auto sum = InspectStream(bytes);
  ASSERT_TRUE(sum.ok()) << sum.status().ToString();
  EXPECT_EQ(sum->bytes, bytes.size());
  EXPECT_EQ(sum->header_bytes + sum->chunk_header_bytes + sum->payload_bytes + sum->trailer_bytes,
            sum->bytes);
  EXPECT_EQ(sum->chunks, 8u);
  EXPECT_EQ(sum->chunk_header_bytes, 8u * kChunkHeaderBytes);
  EXPECT_EQ(sum->payload_bytes, kSmall.elements() * 4);
  EXPECT_EQ(sum->chunks_per_level, (std::vector<uint32_t>{4, 4}));
  EXPECT_EQ(sum->payload_bytes_per_level,
            (std::vector<uint64_t>{kSmall.elements() * 2, kSmall.elements() * 2}));
  // All-in bits/element: all bytes x 8 / (layers x 2 x kv_heads x head_dim x tokens).
  EXPECT_DOUBLE_EQ(sum->bits_per_element, bytes.size() * 8.0 / (2 * 2 * 2 * 4 * 6));
  EXPECT_GT(sum->bits_per_element, 32.0);  // passthrough plus every header: more than 32
}

TEST_F(StreamTest, DeterministicAcrossThreadsAndRuns) {
  const KvShape shape{3, 37, 2, 8};
  const KvCache cache = MakeCache(shape, DType::kF16, 4);
  std::vector<uint8_t> first;
  for (int run = 0; run < 2; ++run) {
    for (int threads : {1, 2, 4}) {
      auto bytes = EncodeStream(cache.view(), MakeInfo(shape, DType::kF16, {"test-f32"}),
                                StreamWriterOptions{5, threads, CodecImpl::kOptimized});
      ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
      if (first.empty()) first = *bytes;
      EXPECT_EQ(*bytes, first) << "threads " << threads << " run " << run;
    }
  }
  EXPECT_TRUE(DecodeFully(first).ok());
}

TEST_F(StreamTest, PagedAndContiguousSourcesGiveIdenticalBytes) {
  const KvShape shape{2, 21, 2, 4};
  const KvCache cache = MakeCache(shape, DType::kF16, 5);
  const uint32_t block = 4, blocks = 8;  // 6 blocks needed, 8 allocated, order shuffled
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(9));
  const size_t row = cache.view().row_bytes();
  std::vector<std::vector<uint8_t>> pool(2 * shape.layers,
                                         std::vector<uint8_t>(size_t{blocks} * block * row, 0xEE));
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    k.push_back(pool[2 * l].data());
    v.push_back(pool[2 * l + 1].data());
  }
  auto paged = KvView::Paged(shape, DType::kF16, block, blocks, k, v, table);
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      for (uint32_t t = 0; t < shape.tokens; ++t) {
        std::memcpy(paged->Row(l, kind, t), cache.view().Row(l, kind, t), row);
      }
    }
  }
  const StreamInfo info = MakeInfo(shape, DType::kF16, {"test-f32"});
  for (uint32_t chunk_tokens : {0u, 5u}) {
    const StreamWriterOptions opts{chunk_tokens, 2, CodecImpl::kOptimized};
    auto a = EncodeStream(cache.view(), info, opts);
    auto b = EncodeStream(*paged, info, opts);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b);

    // And decoding into a paged destination gives what decoding into a contiguous one gives.
    for (auto& p : pool) std::fill(p.begin(), p.end(), 0);
    auto reader = StreamReader::Open(*b);
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE((*reader)->DecodeAll(*paged).ok());
    EXPECT_EQ(ReadAll(*paged), ReadAll(cache.view()));
  }
}

TEST_F(StreamTest, WholeSequenceViewsAndTokenBegin) {
  // The stream carries sequence tokens [10, 16) of a 20-token sequence held in one view.
  const KvShape seq{1, 20, 1, 4};
  const KvCache cache = MakeCache(seq, DType::kF32, 6);
  StreamInfo info = MakeInfo(KvShape{1, 6, 1, 4}, DType::kF32, {"test-f32"});
  info.token_begin = 10;
  auto bytes = EncodeStream(cache.view(), info, StreamWriterOptions{4, 1, CodecImpl::kOptimized});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();

  // Into a view of exactly the carried tokens...
  auto small = DecodeStream(*bytes);
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  std::vector<float> want(6 * 4), got(6 * 4);
  ASSERT_TRUE(cache.view().ReadF32(0, KvKind::kValue, 10, 6, want.data()).ok());
  ASSERT_TRUE(small->view().ReadF32(0, KvKind::kValue, 0, 6, got.data()).ok());
  EXPECT_EQ(got, want);
  // ... and into a whole-sequence view, at the same places.
  auto whole = KvCache::Create(seq, DType::kF32);
  auto reader = StreamReader::Open(*bytes);
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE((*reader)->DecodeAll(whole->view()).ok());
  ASSERT_TRUE(whole->view().ReadF32(0, KvKind::kValue, 10, 6, got.data()).ok());
  EXPECT_EQ(got, want);
  // A view that fits neither way is refused.
  auto odd = KvCache::Create(KvShape{1, 12, 1, 4}, DType::kF32);
  EXPECT_EQ((*reader)->DecodeAll(odd->view()).code(), StatusCode::kInvalidArgument);
}

TEST_F(StreamTest, RealCodecsRoundTrip) {
  const KvShape shape{2, 80, 2, 64};
  const KvCache cache = MakeCache(shape, DType::kF16, 8);
  const std::vector<float> ref = ReadAll(cache.view());
  int tested = 0;
  // Tolerances are loose on purpose: this checks the stream plumbing, the codec tests check
  // the codecs. rel = RMS error / RMS value.
  for (const auto& [spec, tol] : std::vector<std::pair<std::string, double>>{
           {"fp16", 1e-3}, {"int8", 0.02}, {"q8_0", 0.02}, {"q4_0", 0.2}, {"kivi2", 0.6}}) {
    if (!Available(spec)) continue;
    ++tested;
    std::vector<uint8_t> first;
    for (int threads : {1, 3}) {
      auto bytes = EncodeStream(cache.view(), MakeInfo(shape, DType::kF16, {spec}),
                                StreamWriterOptions{32, threads, CodecImpl::kOptimized});
      ASSERT_TRUE(bytes.ok()) << spec << ": " << bytes.status().ToString();
      if (first.empty()) first = *bytes;
      EXPECT_EQ(*bytes, first) << spec << " not deterministic across threads";
    }
    std::vector<float> got;
    ASSERT_TRUE(DecodeFully(first, &got).ok()) << spec;
    double err = 0, norm = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      err += (got[i] - ref[i]) * double(got[i] - ref[i]);
      norm += ref[i] * double(ref[i]);
    }
    EXPECT_LT(std::sqrt(err / norm), tol) << spec;
    auto sum = InspectStream(first);
    ASSERT_TRUE(sum.ok());
    EXPECT_DOUBLE_EQ(sum->bits_per_element, first.size() * 8.0 / shape.elements());
  }
  if (tested == 0) GTEST_SKIP() << "no real codec registered yet (fp16, int8, q8_0, q4_0, kivi2)";
}

TEST_F(StreamTest, Fp16SourceThroughFp16IsLossless) {
  if (!Available("fp16")) GTEST_SKIP() << "fp16 codec not registered yet";
  const KvShape shape{2, 9, 3, 8};
  const KvCache cache = MakeCache(shape, DType::kF16, 10);
  auto bytes = EncodeStream(cache.view(), MakeInfo(shape, DType::kF16, {"fp16"}),
                            StreamWriterOptions{4, 2, CodecImpl::kOptimized});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto decoded = DecodeStream(*bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->dtype(), DType::kF16);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      const std::span<const uint8_t> a = cache.tensor(l, kind), b = decoded->tensor(l, kind);
      EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
  }
}

// An fp16 view at the fp16 level is copied, not converted (Codec::PayloadIsHalves): the bytes,
// the decoded values and the errors must be those of the conversion path (CodecImpl::kReference
// always converts), for contiguous and paged views, with the awkward values fp16 has.
TEST_F(StreamTest, Fp16CopyPathMatchesTheConversionPath) {
  const KvShape shape{2, 21, 2, 4};
  KvCache cache = MakeCache(shape, DType::kF16, 12);
  const uint16_t specials[] = {0x0000, 0x8000, 0x0001, 0x83ff, 0x0400, 0x7bff, 0xfbff, 0x3c00};
  for (size_t i = 0; i < std::size(specials); ++i) {
    std::memcpy(cache.tensor(1, KvKind::kValue).data() + 2 * (5 * i + 1), &specials[i], 2);
  }
  const uint32_t block = 4, blocks = 7;
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(3));
  const size_t row = cache.view().row_bytes();
  std::vector<std::vector<uint8_t>> pool(2 * shape.layers,
                                         std::vector<uint8_t>(size_t{blocks} * block * row));
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    k.push_back(pool[2 * l].data());
    v.push_back(pool[2 * l + 1].data());
  }
  auto paged = KvView::Paged(shape, DType::kF16, block, blocks, k, v, table);
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  auto copy_into = [&](const KvView& to, const KvView& from) {
    for (uint32_t l = 0; l < shape.layers; ++l) {
      for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
        std::vector<uint8_t> rows(size_t{shape.tokens} * row);
        ASSERT_TRUE(from.ReadRaw(l, kind, 0, shape.tokens, rows.data()).ok());
        ASSERT_TRUE(to.WriteRaw(l, kind, 0, shape.tokens, rows.data()).ok());
      }
    }
  };
  copy_into(*paged, cache.view());
  const StreamInfo info = MakeInfo(shape, DType::kF16, {"fp16"});
  for (uint32_t chunk_tokens : {0u, 5u}) {
    auto converted = EncodeStream(cache.view(), info, {chunk_tokens, 1, CodecImpl::kReference});
    ASSERT_TRUE(converted.ok()) << converted.status().ToString();
    for (const KvView& src : {cache.view(), *paged}) {
      auto copied = EncodeStream(src, info, {chunk_tokens, 2, CodecImpl::kOptimized});
      ASSERT_TRUE(copied.ok()) << copied.status().ToString();
      EXPECT_EQ(*copied, *converted);
    }
    // Decoding: copied into fp16 rows (contiguous and paged) and converted, the same halves.
    for (CodecImpl impl : {CodecImpl::kOptimized, CodecImpl::kReference}) {
      auto out = KvCache::Create(shape, DType::kF16);
      ASSERT_TRUE(out.ok());
      auto reader = StreamReader::Open(*converted);
      ASSERT_TRUE(reader.ok());
      ASSERT_TRUE((*reader)->DecodeAll(out->view(), impl).ok());
      for (auto& p : pool) std::fill(p.begin(), p.end(), 0);
      ASSERT_TRUE((*reader)->DecodeAll(*paged, impl).ok());
      auto back = KvCache::Create(shape, DType::kF16);
      ASSERT_TRUE(back.ok());
      copy_into(back->view(), *paged);
      for (uint32_t l = 0; l < shape.layers; ++l) {
        for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
          const auto a = cache.tensor(l, kind), b = out->tensor(l, kind), c = back->tensor(l, kind);
          EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << l;
          EXPECT_TRUE(std::equal(a.begin(), a.end(), c.begin(), c.end())) << l;
        }
      }
    }
  }

  // A non-finite input is refused with the same error either way: NaN at layer 1 V, token 7,
  // head 1, dim 2 (+inf, -inf and NaN all have the exponent bits set).
  const uint16_t nan = 0x7e00;
  std::memcpy(cache.tensor(1, KvKind::kValue).data() + 2 * ((7 * 2 + 1) * 4 + 2), &nan, 2);
  const Status copied = EncodeStream(cache.view(), info, {5, 1, CodecImpl::kOptimized}).status();
  const Status converted = EncodeStream(cache.view(), info, {5, 1, CodecImpl::kReference}).status();
  EXPECT_EQ(copied.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(copied.ToString(), converted.ToString());
  EXPECT_NE(copied.message().find("token 2, head 1, dim 2"), std::string::npos)
      << copied.ToString();  // token 7 is token 2 of the chunk [5, 10)

  // A payload holding a non-finite value (CRCs fixed up) is kCorrupt either way, same message.
  std::memcpy(cache.tensor(1, KvKind::kValue).data() + 2 * ((7 * 2 + 1) * 4 + 2), &specials[7], 2);
  auto good = EncodeStream(cache.view(), info, {5, 1, CodecImpl::kOptimized});
  ASSERT_TRUE(good.ok());
  Parsed parts = Split(*good);
  parts.chunks.back().payload[1] = 0x7c;  // first element: +inf
  const std::vector<uint8_t> bad = Join(parts);
  std::string messages[2];
  int i = 0;
  for (CodecImpl impl : {CodecImpl::kOptimized, CodecImpl::kReference}) {
    auto out = KvCache::Create(shape, DType::kF16);
    auto reader = StreamReader::Open(bad);
    ASSERT_TRUE(reader.ok());
    const Status s = (*reader)->DecodeAll(out->view(), impl);
    EXPECT_EQ(s.code(), StatusCode::kCorrupt) << s.ToString();
    EXPECT_NE(s.message().find("non-finite"), std::string::npos) << s.ToString();
    messages[i++] = s.ToString();
  }
  EXPECT_EQ(messages[0], messages[1]);

  // ParseFrame marks an fp16-level frame's halves as checked, and only when they are finite.
  auto writer = StreamWriter::Create(info);
  ASSERT_TRUE(writer.ok());
  std::vector<uint8_t> header, frame;
  ASSERT_TRUE((*writer)->WriteHeader(&header).ok());
  ASSERT_TRUE((*writer)->EncodeChunk(cache.view(), 1, KvKind::kValue, 5, 5, 0, &frame).ok());
  // EncodeChunkInto makes the same frame in a buffer that held other bytes: one of the frame's
  // size (which the fp16 level overwrites without zero-filling), a larger one, an empty one.
  for (size_t size : {frame.size(), frame.size() + 100, size_t{0}}) {
    std::vector<uint8_t> reused(size, 0xab);
    ASSERT_TRUE((*writer)->EncodeChunkInto(cache.view(), 1, KvKind::kValue, 5, 5, 0, &reused).ok());
    EXPECT_EQ(reused, frame) << size;
  }
  auto frames = StreamReader::Open(header);
  ASSERT_TRUE(frames.ok());
  auto ref = (*frames)->ParseFrame(frame);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  EXPECT_TRUE(ref->payload_finite_halves);
  frame[kChunkHeaderBytes + 1] = 0x7c;  // +inf or NaN in the first element
  const uint32_t fixed = Crc32c({frame.data() + kChunkHeaderBytes, frame.size() - kChunkHeaderBytes});
  fmt::StoreLE32(frame.data() + fmt::chunk::kPayloadCrc, fixed);
  fmt::StoreLE32(frame.data() + fmt::chunk::kHeaderCrc, Crc32c({frame.data(), fmt::chunk::kHeaderCrc}));
  ref = (*frames)->ParseFrame(frame);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  EXPECT_FALSE(ref->payload_finite_halves);
  auto out = KvCache::Create(shape, DType::kF16);
  const Status refused = (*frames)->DecodeChunk(*ref, out->view());
  EXPECT_EQ(refused.code(), StatusCode::kCorrupt) << refused.ToString();
}

TEST_F(StreamTest, FramesOneByOne) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 11);
  auto writer = StreamWriter::Create(MakeInfo(kSmall, DType::kF32, {"test-f32"}));
  ASSERT_TRUE(writer.ok());
  std::vector<uint8_t> header, frame;
  ASSERT_TRUE((*writer)->WriteHeader(&header).ok());
  ASSERT_TRUE((*writer)->EncodeChunk(cache.view(), 1, KvKind::kValue, 2, 3, 0, &frame).ok());
  auto reader = StreamReader::Open(header);  // the header alone is enough for frames
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto ref = (*reader)->ParseFrame(frame, 1000);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  EXPECT_EQ(ref->header.layer, 1u);
  EXPECT_EQ(ref->header.token_begin, 2u);
  auto dst = KvCache::Create(kSmall, DType::kF32);
  ASSERT_TRUE((*reader)->DecodeChunk(*ref, dst->view()).ok());
  std::vector<float> want(3 * 8), got(3 * 8);
  ASSERT_TRUE(cache.view().ReadF32(1, KvKind::kValue, 2, 3, want.data()).ok());
  ASSERT_TRUE(dst->view().ReadF32(1, KvKind::kValue, 2, 3, got.data()).ok());
  EXPECT_EQ(got, want);
  // EncodeChunkInto replaces what its buffer held (EncodeChunk appends); a codec that is not
  // fp16 writes the same frame into a reused buffer.
  std::vector<uint8_t> reused(3 * frame.size(), 0xcd);
  ASSERT_TRUE((*writer)->EncodeChunkInto(cache.view(), 1, KvKind::kValue, 2, 3, 0, &reused).ok());
  EXPECT_EQ(reused, frame);
  // Next() on a header-only buffer: the stream is truncated.
  EXPECT_EQ((*reader)->Next().status().code(), StatusCode::kTruncated);

  // A damaged frame, a short frame, a long frame, a frame of another stream.
  for (size_t i = 0; i < frame.size(); ++i) {
    auto bad = frame;
    bad[i] ^= 0x20;
    EXPECT_FALSE((*reader)->ParseFrame(bad).ok()) << "flip at " << i;
  }
  EXPECT_EQ((*reader)->ParseFrame({frame.data(), frame.size() - 1}).status().code(),
            StatusCode::kTruncated);
  auto longer = frame;
  longer.push_back(0);
  EXPECT_EQ((*reader)->ParseFrame(longer).status().code(), StatusCode::kCorrupt);
  StreamInfo other_info = MakeInfo(kSmall, DType::kF32, {"test-f32"});
  other_info.metadata.model_fingerprint = "another-model";
  auto other = StreamWriter::Create(other_info);
  ASSERT_TRUE(other.ok());
  std::vector<uint8_t> foreign;
  ASSERT_TRUE((*other)->EncodeChunk(cache.view(), 1, KvKind::kValue, 2, 3, 0, &foreign).ok());
  auto refused = (*reader)->ParseFrame(foreign);
  EXPECT_EQ(refused.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(refused.status().message().find("another stream"), std::string::npos);
}

// ---- hostile input ---------------------------------------------------------------------------

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
    if (Available(spec)) levels.push_back(spec);
  }
  if (levels.empty()) GTEST_SKIP() << "no real codec registered yet";
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

// ---- profiles --------------------------------------------------------------------------------

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
  if (!id.ok()) GTEST_SKIP() << "cannot build a test profile: " << id.status().ToString();
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
