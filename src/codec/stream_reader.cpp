// StreamReader: stream bytes -> validated chunks -> KV view (docs/FORMAT.md).
//
// The bytes are untrusted. Every field is checked before it is used, every length before the
// bytes it announces are touched, and nothing is allocated from a size that has not first been
// checked against the shape and the bounds of kvwire/stream.h. Errors name the byte offset.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <new>
#include <string>
#include <utility>

#include "codec/quant_common.h"
#include "codec/scratch.h"
#include "codec/stream_format.h"
#include "kvwire/profile.h"
#include "kvwire/stream.h"
#include "kvwire_stream.pb.h"

namespace kvwire {
namespace {

Status Err(StatusCode code, uint64_t offset, const std::string& reason) {
  return Status(code, "at offset " + std::to_string(offset) + ": " + reason);
}

std::string Hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

std::string ChunkLabel(uint64_t index, const ChunkHeader& h) {
  return "chunk " + std::to_string(index) + " (layer " + std::to_string(h.layer) + " " +
         std::string(KvKindName(h.kind)) + " tokens [" + std::to_string(h.token_begin) + ", " +
         std::to_string(uint64_t{h.token_begin} + h.tokens) + "))";
}

struct LevelInfo {
  uint16_t codec_id = 0;
  uint32_t alignment = 1;
};

}  // namespace

struct StreamReader::Impl {
  std::span<const uint8_t> bytes;
  const Profile* profile = nullptr;
  StreamInfo info;
  std::vector<LevelInfo> levels;
  std::vector<std::unique_ptr<Codec>> codecs;  // empty when opened for inspection only
  uint64_t header_end = 0;                     // offset of the first chunk
  uint32_t header_crc = 0;                     // the stream tag every chunk repeats
  uint32_t crc_after_header = 0;               // running stream CRC32C at header_end

  // Cursor of Next(): the next (layer, kind, token) the ordering rules allow.
  uint64_t pos = 0;
  uint32_t layer = 0;
  KvKind kind = KvKind::kKey;
  uint32_t token = 0;
  uint64_t chunks = 0;
  uint32_t crc = 0;  // running CRC32C of every byte before pos
  bool done = false;
  Status error;  // sticky

  Status ParseHeader(bool create_codecs);
  Status CheckChunkFields(const uint8_t* at, uint64_t offset, uint64_t index,
                          format::ChunkWire* wire) const;
  Result<ChunkRef> NextChunk();
  // The payload's CRC32C; for a level whose payload is the fp16 values themselves (and of their
  // size), whether they are all finite too, found in the same pass (else false).
  uint32_t PayloadCrc(const ChunkHeader& h, std::span<const uint8_t> payload,
                      bool* finite_halves) const {
    *finite_halves = false;
    const uint64_t elements = uint64_t{h.tokens} * info.shape.kv_heads * info.shape.head_dim;
    if (h.level < codecs.size() && codecs[h.level]->PayloadIsHalves() &&
        payload.size() == 2 * elements) {
      return format::Crc32cFiniteHalves(payload, 0, finite_halves);
    }
    return Crc32c(payload);
  }
  void Rewind() {
    pos = header_end;
    layer = 0;
    kind = KvKind::kKey;
    token = 0;
    chunks = 0;
    crc = crc_after_header;
    done = false;
  }
};

Status StreamReader::Impl::ParseHeader(bool create_codecs) {
  const uint8_t* b = bytes.data();
  const uint64_t size = bytes.size();
  for (size_t i = 0; i < std::min<uint64_t>(size, 4); ++i) {
    if (b[i] != format::kStreamMagic[i]) {
      return Err(StatusCode::kCorrupt, 0, "bad magic: not a kvwire stream");
    }
  }
  if (size < format::preamble::kSize) {
    return Err(
        StatusCode::kTruncated, size,
        "stream ends inside the " + std::to_string(format::preamble::kSize) + "-byte preamble");
  }
  const format::Preamble pre = format::DecodePreamble(b);
  if (pre.major != kStreamFormatVersion) {
    return Err(StatusCode::kVersionMismatch, format::preamble::kMajor,
               "format version " + std::to_string(pre.major) + "." + std::to_string(pre.minor) +
                   "; this build reads major version " + std::to_string(kStreamFormatVersion));
  }
  if (pre.header_bytes > kMaxHeaderBytes) {
    return Err(StatusCode::kCorrupt, format::preamble::kHeaderBytes,
               "header length " + std::to_string(pre.header_bytes) + " exceeds the bound of " +
                   std::to_string(kMaxHeaderBytes) + " bytes");
  }
  const uint64_t crc_at = format::preamble::kSize + uint64_t{pre.header_bytes};
  if (size < crc_at + 4) {
    return Err(StatusCode::kTruncated, size,
               "stream ends inside the " + std::to_string(pre.header_bytes) +
                   "-byte stream header announced at offset " +
                   std::to_string(format::preamble::kHeaderBytes));
  }
  const uint32_t stored = format::LoadLE32(b + crc_at);
  const uint32_t computed = Crc32c({b, crc_at});
  if (stored != computed) {
    return Err(StatusCode::kCorrupt, crc_at,
               "stream header CRC32C mismatch (stored " + Hex(stored) + ", computed " +
                   Hex(computed) + ")");
  }

  proto::StreamHeader pb;
  const uint64_t pb_at = format::preamble::kSize;
  auto bad = [&](const std::string& why) {
    return Err(StatusCode::kCorrupt, pb_at, "stream header: " + why);
  };
  if (!pb.ParseFromArray(b + pb_at, static_cast<int>(pre.header_bytes))) {
    return bad("protobuf StreamHeader does not parse");
  }
  info.shape = KvShape{pb.shape().layers(), pb.shape().tokens(), pb.shape().kv_heads(),
                       pb.shape().head_dim()};
  if (Status s = ValidateShape(info.shape); !s.ok()) return bad("shape: " + s.message());
  if (uint64_t{pb.token_begin()} + info.shape.tokens > kMaxTokens) {
    return bad("token_begin " + std::to_string(pb.token_begin()) + " + tokens " +
               std::to_string(info.shape.tokens) + " exceeds " + std::to_string(kMaxTokens));
  }
  info.token_begin = pb.token_begin();
  const int dtype = pb.dtype();
  if (dtype < 0 || dtype > static_cast<int>(DType::kBF16)) {
    return bad("unknown dtype " + std::to_string(dtype));
  }
  info.dtype = static_cast<DType>(dtype);
  if (pb.positions_start() < 0 || pb.positions_start() > format::kMaxPositionsStart) {
    return bad("positions_start " + std::to_string(pb.positions_start()) + " out of range");
  }
  if (!std::isfinite(pb.rope_theta()) || pb.rope_theta() < 0) {
    return bad("rope_theta must be finite and >= 0");
  }
  info.metadata.positions_start = pb.positions_start();
  info.metadata.rope_theta = pb.rope_theta();
  info.metadata.rope_style = pb.rope_style();
  info.metadata.model_fingerprint = pb.model_fingerprint();
  info.profile_id = pb.profile_id();

  if (pb.levels_size() < 1 || pb.levels_size() > static_cast<int>(kMaxLevels)) {
    return bad("level count " + std::to_string(pb.levels_size()) + " outside [1, " +
               std::to_string(kMaxLevels) + "]");
  }
  for (int i = 0; i < pb.levels_size(); ++i) {
    const auto& level = pb.levels(i);
    const std::string name = "level " + std::to_string(i);
    if (level.spec().empty()) return bad(name + ": empty codec spec");
    if (level.codec_id() > 0xffff) {
      return bad(name + ": codec id " + std::to_string(level.codec_id()) + " exceeds 16 bits");
    }
    if (level.token_alignment() == 0 || level.token_alignment() > kMaxTokens) {
      return bad(name + ": token alignment " + std::to_string(level.token_alignment()) +
                 " out of range");
    }
    info.levels.push_back(level.spec());
    levels.push_back(LevelInfo{static_cast<uint16_t>(level.codec_id()), level.token_alignment()});
  }

  if (create_codecs && profile != nullptr && !info.profile_id.empty()) {
    // Decoding with another profile than the encoder's would give plausible garbage.
    KVWIRE_ASSIGN_OR_RETURN(const std::string id, profile->Id());
    if (id != info.profile_id) {
      return Err(
          StatusCode::kInvalidArgument, pb_at,
          "the stream needs profile '" + info.profile_id + "', the profile given is '" + id + "'");
    }
  }
  if (create_codecs) {
    for (size_t i = 0; i < info.levels.size(); ++i) {
      const std::string name = "level " + std::to_string(i);
      auto codec = CreateCodec(info.levels[i], profile);
      if (!codec.ok()) {
        return Err(
            StatusCode::kUnsupported, pb_at,
            name + ": cannot create codec '" + info.levels[i] + "': " + codec.status().message());
      }
      if ((*codec)->Id() != levels[i].codec_id) {
        return bad(name + ": codec '" + info.levels[i] + "' has id " +
                   std::to_string((*codec)->Id()) + " in this build, the stream says " +
                   std::to_string(levels[i].codec_id));
      }
      if ((*codec)->TokenAlignment() != levels[i].alignment) {
        return bad(name + ": codec '" + info.levels[i] + "' has token alignment " +
                   std::to_string((*codec)->TokenAlignment()) + " in this build, the stream says " +
                   std::to_string(levels[i].alignment));
      }
      codecs.push_back(std::move(codec).value());
    }
  }
  header_end = crc_at + 4;
  header_crc = computed;
  crc_after_header = Crc32c({b + crc_at, 4}, computed);
  Rewind();
  return Status::Ok();
}

// Validates the 40 header bytes at `at` (all available) without looking at the payload.
Status StreamReader::Impl::CheckChunkFields(const uint8_t* at, uint64_t offset, uint64_t index,
                                            format::ChunkWire* wire) const {
  namespace chunk = format::chunk;
  const format::ChunkWire w = format::DecodeChunkHeader(at);
  const uint32_t computed = Crc32c({at, chunk::kHeaderCrc});
  if (w.header_crc != computed) {
    return Err(StatusCode::kCorrupt, offset + chunk::kHeaderCrc,
               "chunk " + std::to_string(index) + ": chunk header CRC32C mismatch (stored " +
                   Hex(w.header_crc) + ", computed " + Hex(computed) + ")");
  }
  const std::string label = ChunkLabel(index, w.h);
  auto bad = [&](size_t field, const std::string& why) {
    return Err(StatusCode::kCorrupt, offset + field, label + ": " + why);
  };
  if (w.stream_tag != header_crc) {
    return bad(chunk::kStreamTag, "stream tag " + Hex(w.stream_tag) +
                                      " belongs to another stream (this one's is " +
                                      Hex(header_crc) + ")");
  }
  if (w.flags != 0) return bad(chunk::kFlags, "unknown flags " + Hex(w.flags));
  if (w.kind_raw > 1) return bad(chunk::kKind, "K|V kind " + std::to_string(w.kind_raw));
  if (w.h.level >= levels.size()) {
    return bad(chunk::kLevel, "level " + std::to_string(w.h.level) +
                                  " >= " + std::to_string(levels.size()) + " levels");
  }
  const LevelInfo& level = levels[w.h.level];
  if (w.h.codec_id != level.codec_id) {
    return bad(chunk::kCodecId, "codec id " + std::to_string(w.h.codec_id) + " but level " +
                                    std::to_string(w.h.level) + " is codec id " +
                                    std::to_string(level.codec_id));
  }
  const KvShape& s = info.shape;
  if (w.h.layer >= s.layers) {
    return bad(chunk::kLayer, "layer >= " + std::to_string(s.layers) + " layers");
  }
  if (w.h.tokens == 0) return bad(chunk::kTokens, "empty token range");
  if (uint64_t{w.h.token_begin} + w.h.tokens > s.tokens) {
    return bad(chunk::kTokens,
               "token range exceeds the stream's " + std::to_string(s.tokens) + " tokens");
  }
  if (!format::ChunkStartAligned(info, w.h.token_begin, level.alignment)) {
    return bad(chunk::kTokenBegin, "sequence token " +
                                       std::to_string(info.token_begin + w.h.token_begin) +
                                       " is not a multiple of the level's alignment " +
                                       std::to_string(level.alignment));
  }
  const uint64_t elements = uint64_t{w.h.tokens} * s.kv_heads * s.head_dim;
  if (elements > kMaxChunkElements) {
    return bad(chunk::kTokens, std::to_string(elements) + " elements exceed the chunk bound of " +
                                   std::to_string(kMaxChunkElements));
  }
  if (w.h.payload_bytes > kMaxChunkPayloadBytes) {
    return bad(chunk::kPayloadBytes, "payload length " + std::to_string(w.h.payload_bytes) +
                                         " exceeds the bound of " +
                                         std::to_string(kMaxChunkPayloadBytes));
  }
  if (elements > uint64_t{w.h.payload_bytes} * kMaxElementsPerPayloadByte) {
    return bad(chunk::kPayloadBytes, "payload of " + std::to_string(w.h.payload_bytes) +
                                         " bytes cannot hold " + std::to_string(elements) +
                                         " elements (floor: 1/32 bit per element)");
  }
  *wire = w;
  return Status::Ok();
}

Result<ChunkRef> StreamReader::Impl::NextChunk() {
  const uint8_t* b = bytes.data();
  const uint64_t size = bytes.size();
  const KvShape& s = info.shape;
  if (size - pos < 4) {
    return Err(StatusCode::kTruncated, size,
               "stream ends before the trailer (" + std::to_string(chunks) + " chunks read)");
  }
  const uint8_t* at = b + pos;

  if (format::TagAt(at, format::kTrailerTag)) {
    namespace tr = format::trailer;
    if (size - pos < tr::kSize) {
      return Err(StatusCode::kTruncated, size, "stream ends inside the trailer");
    }
    const format::Trailer t = format::DecodeTrailer(at);
    const uint32_t computed = Crc32c({at, tr::kTrailerCrc});
    if (t.trailer_crc != computed) {
      return Err(StatusCode::kCorrupt, pos + tr::kTrailerCrc,
                 "trailer CRC32C mismatch (stored " + Hex(t.trailer_crc) + ", computed " +
                     Hex(computed) + ")");
    }
    if (layer < s.layers) {
      return Err(StatusCode::kCorrupt, pos,
                 "trailer before the data is complete: layer " + std::to_string(layer) + " " +
                     std::string(KvKindName(kind)) + " token " + std::to_string(token) +
                     " onwards missing");
    }
    if (t.chunk_count != chunks) {
      return Err(StatusCode::kCorrupt, pos + tr::kChunkCount,
                 "trailer counts " + std::to_string(t.chunk_count) + " chunks, the stream has " +
                     std::to_string(chunks));
    }
    if (t.total_bytes != pos + tr::kSize) {
      return Err(StatusCode::kCorrupt, pos + tr::kTotalBytes,
                 "trailer says the stream is " + std::to_string(t.total_bytes) +
                     " bytes, it ends at " + std::to_string(pos + tr::kSize));
    }
    if (t.stream_crc != crc) {
      return Err(
          StatusCode::kCorrupt, pos + tr::kStreamCrc,
          "stream CRC32C mismatch (stored " + Hex(t.stream_crc) + ", computed " + Hex(crc) + ")");
    }
    if (size != pos + tr::kSize) {
      return Err(StatusCode::kCorrupt, pos + tr::kSize,
                 std::to_string(size - pos - tr::kSize) + " unexpected bytes after the trailer");
    }
    pos += tr::kSize;
    done = true;
    return Status(StatusCode::kNotFound, "end of stream");
  }

  if (!format::TagAt(at, format::kChunkTag)) {
    return Err(StatusCode::kCorrupt, pos, "expected a chunk or the trailer, found neither tag");
  }
  if (size - pos < kChunkHeaderBytes) {
    return Err(StatusCode::kTruncated, size,
               "stream ends inside the header of chunk " + std::to_string(chunks));
  }
  format::ChunkWire w;
  KVWIRE_RETURN_IF_ERROR(CheckChunkFields(at, pos, chunks, &w));
  const std::string label = ChunkLabel(chunks, w.h);

  // Ordering: layer-major, K before V, tokens ascending and contiguous, each exactly once.
  if (w.h.layer != layer || w.h.kind != kind || w.h.token_begin != token) {
    auto key = [&](uint32_t l, KvKind k, uint32_t t) {
      return (uint64_t{l} * 2 + static_cast<uint64_t>(k)) * (uint64_t{s.tokens} + 1) + t;
    };
    const bool behind = key(w.h.layer, w.h.kind, w.h.token_begin) < key(layer, kind, token);
    return Err(StatusCode::kCorrupt, pos,
               label + ": " + (behind ? "duplicate or overlapping chunk" : "chunk out of order") +
                   "; expected layer " + std::to_string(layer) + " " +
                   std::string(KvKindName(kind)) + " token " + std::to_string(token) + " next");
  }

  const uint64_t payload_at = pos + kChunkHeaderBytes;
  if (size - payload_at < w.h.payload_bytes) {
    return Err(StatusCode::kTruncated, size,
               label + ": stream ends inside the payload of " + std::to_string(w.h.payload_bytes) +
                   " bytes announced at offset " +
                   std::to_string(pos + format::chunk::kPayloadBytes));
  }
  const std::span<const uint8_t> payload(b + payload_at, w.h.payload_bytes);
  bool finite_halves = false;
  const uint32_t computed = PayloadCrc(w.h, payload, &finite_halves);
  if (computed != w.h.payload_crc32c) {
    return Err(StatusCode::kCorrupt, payload_at,
               label + ": payload CRC32C mismatch (stored " + Hex(w.h.payload_crc32c) +
                   ", computed " + Hex(computed) + ")");
  }

  ChunkRef ref{w.h, pos, payload, finite_halves};
  crc = Crc32c({at, kChunkHeaderBytes + uint64_t{w.h.payload_bytes}}, crc);
  pos = payload_at + w.h.payload_bytes;
  ++chunks;
  token += w.h.tokens;
  if (token == s.tokens) {
    token = 0;
    if (kind == KvKind::kKey) {
      kind = KvKind::kValue;
    } else {
      kind = KvKind::kKey;
      ++layer;
    }
  }
  return ref;
}

StreamReader::StreamReader() : impl_(std::make_unique<Impl>()) {}
StreamReader::~StreamReader() = default;

const StreamInfo& StreamReader::info() const { return impl_->info; }

Result<std::unique_ptr<StreamReader>> StreamReader::Open(std::span<const uint8_t> bytes,
                                                         const Profile* profile) {
  std::unique_ptr<StreamReader> reader(new StreamReader());
  reader->impl_->bytes = bytes;
  reader->impl_->profile = profile;
  KVWIRE_RETURN_IF_ERROR(reader->impl_->ParseHeader(/*create_codecs=*/true));
  return reader;
}

Result<std::unique_ptr<StreamReader>> StreamReader::OpenForInspection(
    std::span<const uint8_t> bytes) {
  std::unique_ptr<StreamReader> reader(new StreamReader());
  reader->impl_->bytes = bytes;
  KVWIRE_RETURN_IF_ERROR(reader->impl_->ParseHeader(/*create_codecs=*/false));
  return reader;
}

Result<ChunkRef> StreamReader::Next() {
  Impl& r = *impl_;
  if (!r.error.ok()) return r.error;
  if (r.done) return Status(StatusCode::kNotFound, "end of stream");
  Result<ChunkRef> chunk = r.NextChunk();
  if (!chunk.ok() && !r.done) r.error = chunk.status();
  return chunk;
}

Result<ChunkRef> StreamReader::ParseFrame(std::span<const uint8_t> frame, uint64_t offset) const {
  if (frame.size() < kChunkHeaderBytes) {
    return Err(StatusCode::kTruncated, offset + frame.size(), "frame shorter than a chunk header");
  }
  return ParseFrame(frame.first(kChunkHeaderBytes), frame.subspan(kChunkHeaderBytes), offset);
}

Result<ChunkRef> StreamReader::ParseFrame(std::span<const uint8_t> header,
                                          std::span<const uint8_t> payload, uint64_t offset) const {
  const Impl& r = *impl_;
  if (header.size() != kChunkHeaderBytes) {
    return Err(StatusCode::kTruncated, offset + header.size(), "frame shorter than a chunk header");
  }
  if (!format::TagAt(header.data(), format::kChunkTag)) {
    return Err(StatusCode::kCorrupt, offset, "frame does not start with a chunk tag");
  }
  format::ChunkWire w;
  KVWIRE_RETURN_IF_ERROR(r.CheckChunkFields(header.data(), offset, 0, &w));
  const uint64_t want = kChunkHeaderBytes + uint64_t{w.h.payload_bytes};
  const uint64_t size = kChunkHeaderBytes + payload.size();
  if (size != want) {
    return Err(size < want ? StatusCode::kTruncated : StatusCode::kCorrupt,
               offset + std::min<uint64_t>(size, want),
               "frame of " + std::to_string(size) + " bytes, its header announces " +
                   std::to_string(want));
  }
  bool finite_halves = false;
  const uint32_t computed = r.PayloadCrc(w.h, payload, &finite_halves);
  if (computed != w.h.payload_crc32c) {
    return Err(StatusCode::kCorrupt, offset + kChunkHeaderBytes,
               "payload CRC32C mismatch (stored " + Hex(w.h.payload_crc32c) + ", computed " +
                   Hex(computed) + ")");
  }
  return ChunkRef{w.h, offset, payload, finite_halves};
}

std::span<uint8_t> StreamReader::PayloadDestination(std::span<const uint8_t> header,
                                                    const KvView& dst, ChunkHeader* parsed) const {
  const Impl& r = *impl_;
  format::ChunkWire w;
  if (header.size() < kChunkHeaderBytes || !format::TagAt(header.data(), format::kChunkTag) ||
      !r.CheckChunkFields(header.data(), 0, 0, &w).ok() || w.h.level >= r.codecs.size() ||
      !r.codecs[w.h.level]->PayloadIsHalves() || dst.dtype() != DType::kF16) {
    return {};
  }
  const KvShape& s = r.info.shape;
  const uint64_t elements = uint64_t{w.h.tokens} * s.kv_heads * s.head_dim;
  auto view_offset = format::ViewTokenOffset(dst, r.info);
  if (!view_offset.ok() || w.h.payload_bytes != 2 * elements) return {};
  std::span<uint8_t> rows =
      dst.RawSpan(w.h.layer, w.h.kind, *view_offset + w.h.token_begin, w.h.tokens);
  if (rows.size() != w.h.payload_bytes) return {};
  if (parsed != nullptr) *parsed = w.h;
  return rows;
}

Status StreamReader::DecodeChunk(const ChunkRef& chunk, const KvView& dst, CodecImpl impl) {
  Impl& r = *impl_;
  const ChunkHeader& h = chunk.header;
  const KvShape& s = r.info.shape;
  const std::string label = "at offset " + std::to_string(chunk.offset) + ": layer " +
                            std::to_string(h.layer) + " " + std::string(KvKindName(h.kind)) +
                            " tokens [" + std::to_string(h.token_begin) + ", " +
                            std::to_string(uint64_t{h.token_begin} + h.tokens) + ")";
  KVWIRE_RETURN_ERROR_IF(r.codecs.empty(), kUnsupported,
                         "stream opened for inspection only; cannot decode");
  // A ChunkRef comes from Next/ParseFrame, but it is a plain struct: re-check what indexing
  // depends on.
  KVWIRE_RETURN_ERROR_IF(h.level >= r.codecs.size() || h.layer >= s.layers || h.tokens == 0 ||
                             uint64_t{h.token_begin} + h.tokens > s.tokens ||
                             (h.kind != KvKind::kKey && h.kind != KvKind::kValue) ||
                             chunk.payload.size() != h.payload_bytes ||
                             uint64_t{h.tokens} * s.kv_heads * s.head_dim > kMaxChunkElements,
                         kInvalidArgument, label + ": chunk does not belong to this stream");
  KVWIRE_ASSIGN_OR_RETURN(const uint32_t view_offset, format::ViewTokenOffset(dst, r.info));
  const uint64_t elements = uint64_t{h.tokens} * s.kv_heads * s.head_dim;
  const ChunkDesc desc = format::MakeChunkDesc(r.info, h.layer, h.kind, h.token_begin, h.tokens);
  const Codec& codec = *r.codecs[h.level];
  if (codec.PayloadIsHalves() && dst.dtype() == DType::kF16 && impl == CodecImpl::kOptimized) {
    // The fp16 level into fp16 rows: Decode's checks, then the payload as it is.
    const std::string spec = codec.Spec();
    KVWIRE_RETURN_IF_ERROR(
        baseline::CheckPayloadSize(chunk.payload.size(), 2 * elements, spec).WithContext(label));
    KVWIRE_RETURN_ERROR_IF(
        !chunk.payload_finite_halves && !baseline::HalvesFinite(chunk.payload.data(), elements),
        kCorrupt, label + ": " + spec + ": payload holds a non-finite value");
    if (chunk.payload.data() ==
        dst.RawSpan(h.layer, h.kind, view_offset + h.token_begin, h.tokens).data()) {
      return Status::Ok();  // received there (PayloadDestination): the values are in place
    }
    return dst.WriteRaw(h.layer, h.kind, view_offset + h.token_begin, h.tokens,
                        chunk.payload.data());
  }
  // The decoded floats, per thread (scratch.h): a reader per request (a receiving session)
  // used to zero-fill and page-fault a fresh buffer for its first chunk.
  thread_local std::vector<float> scratch;
  try {
    Grow(&scratch, elements);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kResourceExhausted, label + ": out of memory");
  }
  Status st =
      r.codecs[h.level]->Decode(desc, chunk.payload, scratch.data(), impl).WithContext(label);
  if (st.ok())
    st = dst.WriteF32(h.layer, h.kind, view_offset + h.token_begin, h.tokens, scratch.data());
  ShedIfLarge(&scratch);
  return st;
}

Status StreamReader::DecodeAll(const KvView& dst, CodecImpl impl) {
  Impl& r = *impl_;
  if (!r.error.ok()) return r.error;
  KVWIRE_RETURN_IF_ERROR(format::ViewTokenOffset(dst, r.info).status());
  r.Rewind();  // always from the first chunk, whatever Next() calls came before
  const KvShape& s = r.info.shape;
  std::vector<uint64_t> covered(size_t{s.layers} * 2, 0);  // layers <= kMaxLayers
  for (;;) {
    Result<ChunkRef> chunk = Next();
    if (!chunk.ok()) {
      if (r.done) break;
      return chunk.status();
    }
    Status decoded = DecodeChunk(*chunk, dst, impl);
    if (!decoded.ok()) {
      r.error = decoded;
      return decoded;
    }
    covered[size_t{chunk->header.layer} * 2 + static_cast<size_t>(chunk->header.kind)] +=
        chunk->header.tokens;
  }
  for (size_t i = 0; i < covered.size(); ++i) {
    KVWIRE_RETURN_ERROR_IF(covered[i] != s.tokens, kCorrupt,
                           "layer " + std::to_string(i / 2) + " " + (i % 2 ? "V" : "K") + ": " +
                               std::to_string(covered[i]) + " tokens decoded, " +
                               std::to_string(s.tokens) + " expected");
  }
  return Status::Ok();
}

Result<StreamSummary> InspectStream(std::span<const uint8_t> bytes) {
  KVWIRE_ASSIGN_OR_RETURN(auto reader, StreamReader::OpenForInspection(bytes));
  StreamSummary sum;
  sum.info = reader->info();
  sum.chunks_per_level.assign(sum.info.levels.size(), 0);
  sum.payload_bytes_per_level.assign(sum.info.levels.size(), 0);
  for (;;) {
    Result<ChunkRef> chunk = reader->Next();
    if (!chunk.ok()) {
      if (chunk.status().code() == StatusCode::kNotFound) break;
      return chunk.status();
    }
    ++sum.chunks;
    sum.chunk_header_bytes += kChunkHeaderBytes;
    sum.payload_bytes += chunk->header.payload_bytes;
    ++sum.chunks_per_level[chunk->header.level];
    sum.payload_bytes_per_level[chunk->header.level] += chunk->header.payload_bytes;
  }
  sum.bytes = bytes.size();
  sum.trailer_bytes = format::trailer::kSize;
  sum.header_bytes = sum.bytes - sum.trailer_bytes - sum.chunk_header_bytes - sum.payload_bytes;
  sum.bits_per_element =
      static_cast<double>(sum.bytes) * 8.0 / static_cast<double>(sum.info.shape.elements());
  return sum;
}

Result<KvCache> DecodeStream(std::span<const uint8_t> bytes, const Profile* profile) {
  KVWIRE_ASSIGN_OR_RETURN(auto reader, StreamReader::Open(bytes, profile));
  // Validate the whole structure (every CRC, the ordering, the trailer) before allocating the
  // cache: a stream that announces a large shape must also carry the chunks that fill it.
  for (;;) {
    Result<ChunkRef> chunk = reader->Next();
    if (chunk.ok()) continue;
    if (chunk.status().code() == StatusCode::kNotFound) break;
    return chunk.status();
  }
  const StreamInfo& info = reader->info();
  Result<KvCache> cache = Status(StatusCode::kInternal, "unset");
  try {
    cache = KvCache::Create(info.shape, info.dtype);
  } catch (const std::bad_alloc&) {
    return Status(
        StatusCode::kResourceExhausted,
        "out of memory for a cache of " + std::to_string(info.shape.elements()) + " elements");
  }
  KVWIRE_RETURN_IF_ERROR(cache.status());
  cache->metadata() = info.metadata;
  KVWIRE_RETURN_IF_ERROR(reader->DecodeAll(cache->view()));
  return cache;
}

}  // namespace kvwire
