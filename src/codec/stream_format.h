// The fixed binary layouts of the kvwire stream, format v1 (docs/FORMAT.md is the spec; this
// header is its single implementation, shared by the writer, the reader and the tests).
//
// Every multi-byte integer is little-endian and is (de)serialized byte by byte below, never by
// copying a struct, so the layout does not depend on the host, the compiler or padding.
//
//   preamble (12)  magic "KVWS" | u16 major | u16 minor | u32 header_bytes
//   header         protobuf kvwire.proto.StreamHeader (header_bytes) | u32 CRC32C(preamble+pb)
//   chunk (40)     tag "KVWC" | u32 layer | u8 kind | u8 level | u16 codec_id | u32 token_begin |
//                  u32 tokens | u32 payload_bytes | u32 payload_crc | u32 stream_tag | u32 flags |
//                  u32 header_crc                                      + payload_bytes of payload
//   trailer (24)   tag "KVWT" | u32 chunk_count | u64 total_bytes | u32 stream_crc |
//                  u32 trailer_crc
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvwire/stream.h"

namespace kvwire::format {

// ---- little-endian helpers -------------------------------------------------------------------

inline void StoreLE16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline void StoreLE32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void StoreLE64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint16_t LoadLE16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t LoadLE32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
inline uint64_t LoadLE64(const uint8_t* p) {
  return uint64_t{LoadLE32(p)} | (uint64_t{LoadLE32(p + 4)} << 32);
}

using Tag = std::array<uint8_t, 4>;
inline constexpr Tag kStreamMagic = {'K', 'V', 'W', 'S'};
inline constexpr Tag kChunkTag = {'K', 'V', 'W', 'C'};
inline constexpr Tag kTrailerTag = {'K', 'V', 'W', 'T'};

inline bool TagAt(const uint8_t* p, const Tag& tag) {
  return p[0] == tag[0] && p[1] == tag[1] && p[2] == tag[2] && p[3] == tag[3];
}

/// Minor version this build writes. Readers accept every minor of a major they know.
inline constexpr uint16_t kStreamFormatMinor = 0;
static_assert(kStreamFormatVersion <= 0xffff, "major version is a u16 on the wire");

// ---- preamble --------------------------------------------------------------------------------

namespace preamble {
inline constexpr size_t kMagic = 0;
inline constexpr size_t kMajor = 4;
inline constexpr size_t kMinor = 6;
inline constexpr size_t kHeaderBytes = 8;
inline constexpr size_t kSize = 12;
static_assert(kMajor == kMagic + 4 && kMinor == kMajor + 2 && kHeaderBytes == kMinor + 2 &&
              kSize == kHeaderBytes + 4);
}  // namespace preamble

/// Bytes of the header region besides the protobuf message: preamble + closing CRC32C.
inline constexpr size_t kHeaderOverheadBytes = preamble::kSize + 4;

struct Preamble {
  uint16_t major = 0;
  uint16_t minor = 0;
  uint32_t header_bytes = 0;  // length of the protobuf StreamHeader that follows
};

inline void EncodePreamble(const Preamble& p, uint8_t* out) {
  for (size_t i = 0; i < 4; ++i) out[preamble::kMagic + i] = kStreamMagic[i];
  StoreLE16(out + preamble::kMajor, p.major);
  StoreLE16(out + preamble::kMinor, p.minor);
  StoreLE32(out + preamble::kHeaderBytes, p.header_bytes);
}

/// Decodes the fields after the magic (the caller checks the magic).
inline Preamble DecodePreamble(const uint8_t* in) {
  return Preamble{LoadLE16(in + preamble::kMajor), LoadLE16(in + preamble::kMinor),
                  LoadLE32(in + preamble::kHeaderBytes)};
}

// ---- chunk header ----------------------------------------------------------------------------

namespace chunk {
inline constexpr size_t kTag = 0;
inline constexpr size_t kLayer = 4;
inline constexpr size_t kKind = 8;
inline constexpr size_t kLevel = 9;
inline constexpr size_t kCodecId = 10;
inline constexpr size_t kTokenBegin = 12;
inline constexpr size_t kTokens = 16;
inline constexpr size_t kPayloadBytes = 20;
inline constexpr size_t kPayloadCrc = 24;
inline constexpr size_t kStreamTag = 28;
inline constexpr size_t kFlags = 32;
inline constexpr size_t kHeaderCrc = 36;
inline constexpr size_t kSize = 40;
static_assert(kLayer == kTag + 4 && kKind == kLayer + 4 && kLevel == kKind + 1 &&
              kCodecId == kLevel + 1 && kTokenBegin == kCodecId + 2 && kTokens == kTokenBegin + 4 &&
              kPayloadBytes == kTokens + 4 && kPayloadCrc == kPayloadBytes + 4 &&
              kStreamTag == kPayloadCrc + 4 && kFlags == kStreamTag + 4 &&
              kHeaderCrc == kFlags + 4 && kSize == kHeaderCrc + 4);
static_assert(kSize == kChunkHeaderBytes, "stream.h and the layout disagree");
static_assert(kCodecId % 2 == 0 && kTokenBegin % 4 == 0 && kHeaderCrc % 4 == 0,
              "fields are naturally aligned within the header");
}  // namespace chunk

/// The chunk header as it is on the wire: ChunkHeader plus the framing fields.
struct ChunkWire {
  ChunkHeader h;
  uint8_t kind_raw = 0;     // the kind byte as read (0 = K, 1 = V; anything else is corrupt)
  uint32_t stream_tag = 0;  // the stream header's CRC32C: binds the chunk to its stream
  uint32_t flags = 0;       // must be 0 in v1
  uint32_t header_crc = 0;  // CRC32C of bytes [0, 36) of this header
};

/// Writes the 40 header bytes of `h`, computing header_crc.
inline void EncodeChunkHeader(const ChunkHeader& h, uint32_t stream_tag, uint8_t* out) {
  for (size_t i = 0; i < 4; ++i) out[chunk::kTag + i] = kChunkTag[i];
  StoreLE32(out + chunk::kLayer, h.layer);
  out[chunk::kKind] = static_cast<uint8_t>(h.kind);
  out[chunk::kLevel] = h.level;
  StoreLE16(out + chunk::kCodecId, h.codec_id);
  StoreLE32(out + chunk::kTokenBegin, h.token_begin);
  StoreLE32(out + chunk::kTokens, h.tokens);
  StoreLE32(out + chunk::kPayloadBytes, h.payload_bytes);
  StoreLE32(out + chunk::kPayloadCrc, h.payload_crc32c);
  StoreLE32(out + chunk::kStreamTag, stream_tag);
  StoreLE32(out + chunk::kFlags, 0);
  StoreLE32(out + chunk::kHeaderCrc, Crc32c({out, chunk::kHeaderCrc}));
}

/// Reads the fields of a 40-byte header without validating them (the reader does that).
inline ChunkWire DecodeChunkHeader(const uint8_t* in) {
  ChunkWire w;
  w.h.layer = LoadLE32(in + chunk::kLayer);
  w.kind_raw = in[chunk::kKind];
  w.h.kind = w.kind_raw == 1 ? KvKind::kValue : KvKind::kKey;
  w.h.level = in[chunk::kLevel];
  w.h.codec_id = LoadLE16(in + chunk::kCodecId);
  w.h.token_begin = LoadLE32(in + chunk::kTokenBegin);
  w.h.tokens = LoadLE32(in + chunk::kTokens);
  w.h.payload_bytes = LoadLE32(in + chunk::kPayloadBytes);
  w.h.payload_crc32c = LoadLE32(in + chunk::kPayloadCrc);
  w.stream_tag = LoadLE32(in + chunk::kStreamTag);
  w.flags = LoadLE32(in + chunk::kFlags);
  w.header_crc = LoadLE32(in + chunk::kHeaderCrc);
  return w;
}

// ---- trailer ---------------------------------------------------------------------------------

namespace trailer {
inline constexpr size_t kTag = 0;
inline constexpr size_t kChunkCount = 4;
inline constexpr size_t kTotalBytes = 8;
inline constexpr size_t kStreamCrc = 16;
inline constexpr size_t kTrailerCrc = 20;
inline constexpr size_t kSize = 24;
static_assert(kChunkCount == kTag + 4 && kTotalBytes == kChunkCount + 4 &&
              kStreamCrc == kTotalBytes + 8 && kTrailerCrc == kStreamCrc + 4 &&
              kSize == kTrailerCrc + 4);
static_assert(kTotalBytes % 8 == 0, "u64 field naturally aligned within the trailer");
}  // namespace trailer

struct Trailer {
  uint32_t chunk_count = 0;
  uint64_t total_bytes = 0;  // whole stream, trailer included
  uint32_t stream_crc = 0;   // CRC32C of every byte before the trailer
  uint32_t trailer_crc = 0;  // CRC32C of trailer bytes [0, 20)
};

inline void EncodeTrailer(const Trailer& t, uint8_t* out) {
  for (size_t i = 0; i < 4; ++i) out[trailer::kTag + i] = kTrailerTag[i];
  StoreLE32(out + trailer::kChunkCount, t.chunk_count);
  StoreLE64(out + trailer::kTotalBytes, t.total_bytes);
  StoreLE32(out + trailer::kStreamCrc, t.stream_crc);
  StoreLE32(out + trailer::kTrailerCrc, Crc32c({out, trailer::kTrailerCrc}));
}

inline Trailer DecodeTrailer(const uint8_t* in) {
  return Trailer{LoadLE32(in + trailer::kChunkCount), LoadLE64(in + trailer::kTotalBytes),
                 LoadLE32(in + trailer::kStreamCrc), LoadLE32(in + trailer::kTrailerCrc)};
}

// ---- stream header (protobuf) ----------------------------------------------------------------

/// Everything the header records. The writer fills codec_ids/alignments from its codecs.
struct HeaderFields {
  StreamInfo info;
  std::vector<uint16_t> codec_ids;   // one per level
  std::vector<uint32_t> alignments;  // one per level
  uint32_t chunk_tokens = 0;         // informational
};

/// Serializes the whole header region (preamble + protobuf + CRC32C) without validating the
/// fields, so tests can build hostile headers. Deterministic: same fields, same bytes.
std::vector<uint8_t> EncodeHeader(const HeaderFields& fields,
                                  uint16_t major = static_cast<uint16_t>(kStreamFormatVersion),
                                  uint16_t minor = kStreamFormatMinor);

// ---- rules shared by the writer and the reader ------------------------------------------------

/// positions_start lies in [0, kMaxPositionsStart]: no model has longer sequences, and the
/// bound keeps codecs' position arithmetic far from int64 overflow.
inline constexpr int64_t kMaxPositionsStart = int64_t{1} << 40;

/// Where stream token 0 sits in `view` (see the note on views in kvwire/stream.h): 0 when the
/// view holds exactly the carried tokens, info.token_begin when it holds the whole sequence.
inline Result<uint32_t> ViewTokenOffset(const KvView& view, const StreamInfo& info) {
  const KvShape& v = view.shape();
  const KvShape& s = info.shape;
  if (v.layers != s.layers || v.kv_heads != s.kv_heads || v.head_dim != s.head_dim) {
    return Status(StatusCode::kInvalidArgument,
                  "view shape [layers " + std::to_string(v.layers) + ", kv_heads " +
                      std::to_string(v.kv_heads) + ", head_dim " + std::to_string(v.head_dim) +
                      "] does not match the stream's [" + std::to_string(s.layers) + ", " +
                      std::to_string(s.kv_heads) + ", " + std::to_string(s.head_dim) + "]");
  }
  if (v.tokens == s.tokens) return 0u;
  if (uint64_t{v.tokens} >= uint64_t{info.token_begin} + s.tokens) return info.token_begin;
  return Status(StatusCode::kInvalidArgument,
                "view has " + std::to_string(v.tokens) + " tokens; the stream carries " +
                    std::to_string(s.tokens) + " tokens starting at sequence token " +
                    std::to_string(info.token_begin));
}

/// Chunks start at a multiple of their codec's token alignment in sequence coordinates
/// (StreamInfo::token_begin + the chunk's token_begin), except at stream token 0.
inline bool ChunkStartAligned(const StreamInfo& info, uint32_t token_begin, uint32_t alignment) {
  return token_begin == 0 || (uint64_t{info.token_begin} + token_begin) % alignment == 0;
}

/// The codec's view of a chunk: sequence-level token indices, as both ends must agree.
inline ChunkDesc MakeChunkDesc(const StreamInfo& info, uint32_t layer, KvKind kind,
                               uint32_t token_begin, uint32_t tokens) {
  ChunkDesc d;
  d.layer = layer;
  d.kind = kind;
  d.token_begin = info.token_begin + token_begin;
  d.tokens = tokens;
  d.kv_heads = info.shape.kv_heads;
  d.head_dim = info.shape.head_dim;
  d.seq_tokens = info.token_begin + info.shape.tokens;
  d.positions_start = info.metadata.positions_start;
  return d;
}

// ---- CRC32C implementations (both always built; Crc32c() picks the fast one) -----------------

/// Table-driven (slicing-by-8), portable.
uint32_t Crc32cPortable(std::span<const uint8_t> data, uint32_t crc = 0);
/// The fastest path on this CPU: folding by carry-less multiplication (AVX-512 + VPCLMULQDQ,
/// found at run time) for inputs of 512 bytes and more, the SSE4.2 crc32 instruction for the
/// rest; equals Crc32cPortable when the build lacks SSE4.2.
uint32_t Crc32cHardware(std::span<const uint8_t> data, uint32_t crc = 0);
/// The SSE4.2 crc32 instruction alone (three interleaved lanes on long inputs), never folding:
/// for tests and benchmarks of that path on any CPU.
uint32_t Crc32cInstruction(std::span<const uint8_t> data, uint32_t crc = 0);
/// Whether Crc32cHardware really uses the instruction in this build.
bool Crc32cHardwareAvailable();
/// Whether Crc32cHardware folds long inputs on this CPU.
bool Crc32cFoldAvailable();

/// Crc32c(data, crc), and in the same read of `data` whether every fp16 value in it (little-
/// endian halves; a trailing odd byte is not one) is finite: `*finite`. The fp16 level's payload
/// needs both, and one pass over it, in blocks that stay in L1 between the two, is cheaper than
/// two (each end of an fp16 session runs it over every payload byte; docs/benchmarks.md,
/// "fp16 session passes").
uint32_t Crc32cFiniteHalves(std::span<const uint8_t> data, uint32_t crc, bool* finite);

}  // namespace kvwire::format
