// Fuzz target of the stream reader (docs/FORMAT.md), in three modes chosen by the first byte:
//
//  'K' (the first byte of the magic): the input is a stream. InspectStream, DecodeStream and a
//      StreamReader walk must never crash, hang or allocate beyond the format's bounds, must
//      agree with each other, and whatever decodes must re-encode deterministically.
//  'k': the rest is a stream whose checksums are recomputed first (Reseal), then as 'K'. Every
//      byte of a stream is under a CRC32C, so without this the fuzzer rarely gets past them to
//      the checks behind (fields, bounds, ordering, codec payloads).
//  anything else: round trip. The input describes a small cache (shape, codec, chunking, dtype,
//      values, a paged block table); encoding it must give the same bytes for 1 and 3 threads
//      and for contiguous and paged sources, and the stream must inspect and decode.
//
// A violated invariant calls Fail(), which aborts: a crash for libFuzzer and a failed ctest for
// the replay (replay_main.cpp). Built as a libFuzzer binary with KVWIRE_BUILD_FUZZ=ON.
//
// KVWIRE_FUZZ_SKIP_CODECS="rank-4,turbo3" leaves codecs out of the round-trip mode, to keep
// fuzzing the rest while a codec's known finding is being fixed. Never set by the tests.
#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "codec/stream_format.h"
#include "fuzz/test_codecs.h"
#include "kvwire/stream.h"

namespace kvwire {
namespace {

[[noreturn]] void Fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_stream_reader: invariant violated: %s %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

void Init() {
  testing::RegisterTestCodecs();
  // Forged headers with invalid UTF-8 strings make protobuf log an error per input: noise.
  google::protobuf::SetLogHandler(nullptr);
}

bool AllLevelsAre(const StreamInfo& info, const std::string& spec) {
  return std::all_of(info.levels.begin(), info.levels.end(),
                     [&](const std::string& s) { return s == spec; });
}

bool SameTensors(const KvCache& a, const KvCache& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  for (uint32_t l = 0; l < a.shape().layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      const auto x = a.tensor(l, kind), y = b.tensor(l, kind);
      if (!std::equal(x.begin(), x.end(), y.begin(), y.end())) return false;
    }
  }
  return true;
}

// Encodes `view` with threads 1 and 3; the bytes must agree. Returns false if the writer
// (legitimately) refused the input.
bool EncodeTwice(const KvView& view, const StreamInfo& info, uint32_t chunk_tokens,
                 std::vector<uint8_t>* out) {
  auto a = EncodeStream(view, info, StreamWriterOptions{chunk_tokens, 1, CodecImpl::kOptimized});
  auto b = EncodeStream(view, info, StreamWriterOptions{chunk_tokens, 3, CodecImpl::kOptimized});
  if (a.ok() != b.ok()) Fail("encode outcome depends on the thread count");
  if (!a.ok()) {
    const StatusCode c = a.status().code();
    if (c != StatusCode::kInvalidArgument && c != StatusCode::kUnsupported &&
        c != StatusCode::kResourceExhausted) {
      Fail("unexpected encode error", a.status().ToString());
    }
    return false;
  }
  if (*a != *b) Fail("encoded bytes depend on the thread count");
  *out = std::move(a).value();
  return true;
}

// ---- mode 'K': arbitrary stream bytes ----------------------------------------------------------

void ParseMode(std::span<const uint8_t> in, bool reencode = true) {
  auto summary = InspectStream(in);
  auto decoded = DecodeStream(in);
  if (decoded.ok() && !summary.ok())
    Fail("decodes but does not inspect", summary.status().ToString());
  for (const Status* s : {&summary.status(), &decoded.status()}) {
    if (!s->ok() && s->message().empty()) Fail("error without a message");
  }

  auto reader = StreamReader::OpenForInspection(in);
  if (summary.ok() && !reader.ok()) Fail("inspects but does not open");
  if (reader.ok()) {
    // Every step consumes at least a chunk header, so the walk is bounded by the input size.
    const uint64_t max_steps = in.size() / kChunkHeaderBytes + 2;
    uint64_t chunks = 0;
    for (uint64_t step = 0;; ++step) {
      if (step > max_steps) Fail("Next() does not advance");
      auto c = (*reader)->Next();
      if (!c.ok()) {
        if (summary.ok() != (c.status().code() == StatusCode::kNotFound)) {
          Fail("Next() and InspectStream disagree", c.status().ToString());
        }
        break;
      }
      ++chunks;
      if (c->payload.data() < in.data() ||
          c->payload.data() + c->payload.size() > in.data() + in.size()) {
        Fail("payload span outside the input");
      }
      // The same frame, parsed on its own, gives the same chunk.
      auto frame = (*reader)->ParseFrame(
          in.subspan(c->offset, kChunkHeaderBytes + c->header.payload_bytes), c->offset);
      if (!frame.ok() || frame->header.layer != c->header.layer ||
          frame->header.token_begin != c->header.token_begin) {
        Fail("ParseFrame disagrees with Next()");
      }
    }
    if (summary.ok() && chunks != summary->chunks) Fail("chunk counts disagree");
  }

  if (summary.ok()) {
    const StreamSummary& s = *summary;
    if (s.bytes != in.size() ||
        s.header_bytes + s.chunk_header_bytes + s.payload_bytes + s.trailer_bytes != s.bytes) {
      Fail("summary byte counts do not add up");
    }
    uint64_t per_level = 0;
    for (uint32_t n : s.chunks_per_level) per_level += n;
    if (per_level != s.chunks) Fail("per-level chunk counts do not add up");
    // The payload floor: what a stream announces is bounded by its size.
    if (s.info.shape.elements() > s.payload_bytes * kMaxElementsPerPayloadByte) {
      Fail("shape larger than the payload floor allows");
    }
  }

  if (!decoded.ok() || !reencode) return;
  // Whatever decodes re-encodes, deterministically; a lossless level decodes to the same cache.
  StreamInfo info = summary->info;
  info.levels.resize(1);  // EncodeStream writes every layer at level 0
  std::vector<uint8_t> again;
  if (!EncodeTwice(decoded->view(), info, 0, &again)) return;
  auto redecoded = DecodeStream(again);
  if (!redecoded.ok()) Fail("re-encoded stream does not decode", redecoded.status().ToString());
  if (AllLevelsAre(summary->info, "test-f32") && !SameTensors(*decoded, *redecoded)) {
    Fail("lossless re-encode changed the cache");
  }
}

// ---- mode 'k': a stream with its checksums recomputed -----------------------------------------

// Walks `in` as leniently as the layout allows and rewrites every CRC32C field and every chunk's
// stream tag to the values a writer would have put there. Counts and lengths stay as they are.
std::vector<uint8_t> Reseal(std::span<const uint8_t> in) {
  namespace f = format;
  std::vector<uint8_t> s(in.begin(), in.end());
  if (s.size() < f::kHeaderOverheadBytes) return s;
  const uint64_t crc_at = f::preamble::kSize + uint64_t{f::LoadLE32(s.data() + 8)};
  if (crc_at + 4 > s.size()) return s;
  const uint32_t tag = Crc32c({s.data(), crc_at});
  f::StoreLE32(s.data() + crc_at, tag);
  uint64_t pos = crc_at + 4;
  uint32_t running = Crc32c({s.data(), pos});
  while (pos + 4 <= s.size()) {
    uint8_t* at = s.data() + pos;
    if (f::TagAt(at, f::kChunkTag) && pos + kChunkHeaderBytes <= s.size()) {
      const uint64_t payload = f::LoadLE32(at + f::chunk::kPayloadBytes);
      if (pos + kChunkHeaderBytes + payload > s.size()) break;
      f::StoreLE32(at + f::chunk::kPayloadCrc, Crc32c({at + kChunkHeaderBytes, payload}));
      f::StoreLE32(at + f::chunk::kStreamTag, tag);
      f::StoreLE32(at + f::chunk::kHeaderCrc, Crc32c({at, f::chunk::kHeaderCrc}));
      running = Crc32c({at, kChunkHeaderBytes + payload}, running);
      pos += kChunkHeaderBytes + payload;
    } else if (f::TagAt(at, f::kTrailerTag) && pos + f::trailer::kSize <= s.size()) {
      f::StoreLE32(at + f::trailer::kStreamCrc, running);
      f::StoreLE32(at + f::trailer::kTrailerCrc, Crc32c({at, f::trailer::kTrailerCrc}));
      break;
    } else {
      break;
    }
  }
  return s;
}

// ---- other first bytes: round trip of a described cache ------------------------------------

// Reads the input as a little cursor; past the end it yields zeros.
class Cursor {
 public:
  explicit Cursor(std::span<const uint8_t> d) : d_(d) {}
  uint8_t Byte() { return i_ < d_.size() ? d_[i_++] : 0; }
  std::span<const uint8_t> Rest() const { return d_.subspan(std::min(i_, d_.size())); }

 private:
  std::span<const uint8_t> d_;
  size_t i_ = 0;
};

void RoundTripMode(std::span<const uint8_t> in) {
  static const std::vector<std::string> kSpecs = [] {
    const char* env = std::getenv("KVWIRE_FUZZ_SKIP_CODECS");
    const std::string skip = "," + std::string(env ? env : "") + ",";
    std::vector<std::string> specs;
    for (const char* s : {"test-f32", "test-f32:align=4", "fp16", "int8", "q8_0", "q4_0", "kivi2",
                          "kivi4", "int4-token", "int3-channel", "rank-4", "turbo3"}) {
      if (skip.find("," + std::string(s) + ",") != std::string::npos) continue;
      if (CreateCodec(s).ok()) specs.push_back(s);
    }
    return specs;
  }();

  Cursor cur(in);
  cur.Byte();  // the mode byte
  static constexpr uint32_t kHeadDims[] = {1, 2, 4, 8, 16, 32, 64};
  KvShape shape;
  shape.layers = 1 + cur.Byte() % 3;
  shape.tokens = 1 + cur.Byte() % 48;
  shape.kv_heads = 1 + cur.Byte() % 3;
  shape.head_dim = kHeadDims[cur.Byte() % 7];
  const uint8_t codec_byte = cur.Byte();
  const uint32_t chunk_tokens = cur.Byte() % 20;
  const uint8_t misc = cur.Byte();
  const auto dtype = static_cast<DType>(misc % 3);
  const uint32_t block_size = 1 + (misc >> 2) % 8;

  StreamInfo info;
  info.shape = shape;
  info.dtype = dtype;
  info.token_begin = (misc >> 5) % 4;
  info.metadata.positions_start = cur.Byte();
  info.levels = {kSpecs[codec_byte % kSpecs.size()]};

  auto cache = KvCache::Create(shape, dtype);
  if (!cache.ok()) Fail("cannot create a small cache", cache.status().ToString());
  // Values k/8, k in [-128, 127]: exact in f32, f16 and bf16, so lossless codecs round-trip.
  const std::span<const uint8_t> values = cur.Rest();
  size_t vi = 0;
  std::vector<float> row(size_t{shape.kv_heads} * shape.head_dim);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      for (uint32_t t = 0; t < shape.tokens; ++t) {
        for (float& x : row) {
          x = values.empty()
                  ? 0.0f
                  : static_cast<float>(static_cast<int8_t>(values[vi++ % values.size()])) / 8;
        }
        if (!cache->view().WriteF32(l, kind, t, 1, row.data()).ok()) Fail("WriteF32");
      }
    }
  }

  std::vector<uint8_t> bytes;
  if (!EncodeTwice(cache->view(), info, chunk_tokens, &bytes)) return;

  // A paged copy, blocks in reversed order, encodes to the same bytes.
  const uint32_t blocks = (shape.tokens + block_size - 1) / block_size;
  std::vector<int32_t> table(blocks);
  for (uint32_t b = 0; b < blocks; ++b) table[b] = static_cast<int32_t>(blocks - 1 - b);
  const size_t row_bytes = cache->view().row_bytes();
  std::vector<std::vector<uint8_t>> pool(
      size_t{shape.layers} * 2, std::vector<uint8_t>(size_t{blocks} * block_size * row_bytes));
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    k.push_back(pool[2 * l].data());
    v.push_back(pool[2 * l + 1].data());
  }
  auto paged = KvView::Paged(shape, dtype, block_size, blocks, k, v, table);
  if (!paged.ok()) Fail("paged view", paged.status().ToString());
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      for (uint32_t t = 0; t < shape.tokens; ++t) {
        std::copy_n(static_cast<const uint8_t*>(cache->view().Row(l, kind, t)), row_bytes,
                    static_cast<uint8_t*>(paged->Row(l, kind, t)));
      }
    }
  }
  auto from_paged =
      EncodeStream(*paged, info, StreamWriterOptions{chunk_tokens, 1, CodecImpl::kOptimized});
  if (!from_paged.ok() || *from_paged != bytes) {
    Fail("paged and contiguous sources encode differently");
  }

  auto summary = InspectStream(bytes);
  if (!summary.ok()) Fail("own stream does not inspect", summary.status().ToString());
  if (summary->bits_per_element != bytes.size() * 8.0 / shape.elements()) Fail("bits/element");
  auto decoded = DecodeStream(bytes);
  if (!decoded.ok()) Fail("own stream does not decode", decoded.status().ToString());
  const bool lossless = info.levels[0].rfind("test-f32", 0) == 0 || info.levels[0] == "fp16";
  if (lossless && !SameTensors(*cache, *decoded)) Fail("lossless round trip changed the cache");
  ParseMode(bytes, /*reencode=*/false);
}

}  // namespace
}  // namespace kvwire

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool initialized = (kvwire::Init(), true);
  (void)initialized;
  const std::span<const uint8_t> in(data, size);
  if (size > 0 && data[0] == 'K') {
    kvwire::ParseMode(in);
  } else if (size > 0 && data[0] == 'k') {
    const std::vector<uint8_t> resealed = kvwire::Reseal(in.subspan(1));
    kvwire::ParseMode(resealed);
  } else if (size > 0) {
    kvwire::RoundTripMode(in);
  }
  return 0;
}
