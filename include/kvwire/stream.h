// kvwire/stream.h — the kvwire stream (docs/FORMAT.md): header, layer-major chunks, trailer.
//
//   stream  = header chunk* trailer
//   header  = fixed preamble (magic, version, length) + protobuf StreamHeader + CRC32C
//   chunk   = fixed 40-byte chunk header (layer, K|V, tokens, codec id, level, sizes, CRC32C)
//             + payload
//   trailer = chunk count, total bytes, CRC32C of every byte before the trailer
//
// Chunks are self-contained frames, so a transport can ship them one by one and a receiver can
// decode layer 0 before layer 1 arrives. The reader validates every length and field before it
// touches a byte; errors carry the byte offset and the reason.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvwire/codec.h"
#include "kvwire/kv_view.h"
#include "kvwire/status.h"

namespace kvwire {

inline constexpr uint32_t kStreamFormatVersion = 1;
/// Bounds the reader enforces on untrusted streams (see docs/FORMAT.md).
inline constexpr uint32_t kMaxHeaderBytes = 1u << 20;
inline constexpr uint64_t kMaxChunkPayloadBytes = 1ull << 31;
inline constexpr uint32_t kMaxLevels = 64;

/// What the stream header says about the KV it carries.
struct StreamInfo {
  KvShape shape;                     // the whole sequence (tokens = token count carried)
  DType dtype = DType::kF16;         // dtype of the source cache (decode target default)
  uint32_t token_begin = 0;          // first token of the sequence carried in this stream
  KvMetadata metadata;               // positions, rope, model fingerprint
  std::string profile_id;            // content hash of the profile; empty if none is needed
  std::vector<std::string> levels;   // codec spec per level; chunks name their level
};

/// Fixed-size description of one chunk (the chunk header, decoded and validated).
struct ChunkHeader {
  uint32_t layer = 0;
  KvKind kind = KvKind::kKey;
  uint8_t level = 0;
  uint16_t codec_id = 0;
  uint32_t token_begin = 0;  // relative to StreamInfo::token_begin
  uint32_t tokens = 0;
  uint32_t payload_bytes = 0;
  uint32_t payload_crc32c = 0;
};
inline constexpr size_t kChunkHeaderBytes = 40;

/// CRC32C (Castagnoli), the checksum of every chunk payload and of the stream.
uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc = 0);

struct StreamWriterOptions {
  /// Tokens per chunk; 0 = one chunk per (layer, K|V). Rounded up to the codec's alignment.
  uint32_t chunk_tokens = 0;
  /// Worker threads used to encode the chunks of one layer (output bytes do not depend on it).
  int threads = 1;
  CodecImpl impl = CodecImpl::kOptimized;
};

/// Encodes a KV cache into a stream, layer by layer. Not thread-safe (one writer per stream).
class StreamWriter {
 public:
  /// `info.levels` must name at least one codec; `profile` is needed by profile-based codecs
  /// and must outlive the writer.
  static Result<std::unique_ptr<StreamWriter>> Create(StreamInfo info,
                                                      StreamWriterOptions options = {},
                                                      const Profile* profile = nullptr);
  ~StreamWriter();

  const StreamInfo& info() const;

  /// Appends the stream header.
  Status WriteHeader(std::vector<uint8_t>* out);
  /// Appends the chunk frames of layer `layer` (K then V) read from `kv`, coded at `level`.
  /// Layers must be written in increasing order, each once.
  Status WriteLayer(const KvView& kv, uint32_t layer, uint8_t level, std::vector<uint8_t>* out);
  /// Appends the trailer; every layer must have been written.
  Status Finish(std::vector<uint8_t>* out);

  /// Encodes one chunk frame (header + payload) without stream bookkeeping (for transports).
  Status EncodeChunk(const KvView& kv, uint32_t layer, KvKind kind, uint32_t token_begin,
                     uint32_t tokens, uint8_t level, std::vector<uint8_t>* out) const;

 private:
  StreamWriter();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Whole-buffer convenience: header + every layer at level 0 + trailer.
Result<std::vector<uint8_t>> EncodeStream(const KvView& kv, StreamInfo info,
                                          StreamWriterOptions options = {},
                                          const Profile* profile = nullptr);

/// A validated chunk inside a buffer.
struct ChunkRef {
  ChunkHeader header;
  uint64_t offset = 0;                 // offset of the chunk header in the stream
  std::span<const uint8_t> payload;    // CRC32C already verified
};

/// Parses a complete stream held in memory. Not thread-safe.
class StreamReader {
 public:
  /// Validates the preamble and header; `bytes` must outlive the reader.
  static Result<std::unique_ptr<StreamReader>> Open(std::span<const uint8_t> bytes,
                                                    const Profile* profile = nullptr);
  ~StreamReader();

  const StreamInfo& info() const;

  /// The next chunk, validated (header fields, bounds, CRC32C). Returns kNotFound after the
  /// last chunk, once the trailer has been verified. Any error is sticky.
  Result<ChunkRef> Next();

  /// Decodes `chunk` into `dst` (tokens must fit dst's shape; dtype conversion as needed).
  Status DecodeChunk(const ChunkRef& chunk, const KvView& dst, CodecImpl impl = CodecImpl::kOptimized);

  /// Reads every chunk and decodes it into `dst`, then verifies the trailer and that every
  /// (layer, K|V, token) was written exactly once.
  Status DecodeAll(const KvView& dst, CodecImpl impl = CodecImpl::kOptimized);

 private:
  StreamReader();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Decodes a whole stream into a new contiguous cache of the stream's dtype.
Result<KvCache> DecodeStream(std::span<const uint8_t> bytes, const Profile* profile = nullptr);

/// Summary for `kvwire inspect`: validates the whole stream (every CRC, the trailer).
struct StreamSummary {
  StreamInfo info;
  uint64_t bytes = 0;            // whole stream
  uint64_t header_bytes = 0;     // preamble + protobuf header
  uint64_t chunk_header_bytes = 0;
  uint64_t payload_bytes = 0;
  uint64_t trailer_bytes = 0;
  uint32_t chunks = 0;
  /// bytes * 8 / shape.elements(): all-in, DESIGN.md section 3.
  double bits_per_element = 0;
  /// Per level: chunks and payload bytes.
  std::vector<uint32_t> chunks_per_level;
};
Result<StreamSummary> InspectStream(std::span<const uint8_t> bytes);

}  // namespace kvwire
