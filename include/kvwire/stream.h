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
/// Most elements (tokens x kv_heads x head_dim) one chunk may hold: bounds the float32 scratch
/// buffer a reader allocates per chunk (256 MiB). Writers split tensors to stay below it.
inline constexpr uint64_t kMaxChunkElements = 1ull << 26;
/// A chunk may not decode to more than this many elements per payload byte (a floor of 1/32
/// bit per element on every payload), so a tiny hostile stream cannot announce a huge cache.
inline constexpr uint64_t kMaxElementsPerPayloadByte = 256;

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

/// CRC32C (Castagnoli), the checksum of every chunk payload and of the stream. `crc` is the
/// value of a previous call (0 to start): Crc32c(b, Crc32c(a)) == Crc32c(a followed by b).
uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc = 0);

struct StreamWriterOptions {
  /// Tokens per chunk; 0 = one chunk per (layer, K|V). Rounded up to the codec's alignment;
  /// lowered (to a multiple of the alignment) where a chunk would exceed kMaxChunkElements.
  /// Chunk boundaries fall on multiples of that step in sequence coordinates
  /// (info.token_begin + stream token), so the first chunk may be shorter: the rule a session
  /// cuts a request by, too.
  uint32_t chunk_tokens = 0;
  /// Worker threads used to encode the chunks of one layer (output bytes do not depend on it).
  int threads = 1;
  CodecImpl impl = CodecImpl::kOptimized;
};

/// Encodes a KV cache into a stream, layer by layer. Not thread-safe (one writer per stream).
///
/// Source views: a KvView given to the writer (and a destination given to the reader) has the
/// stream's layers, kv_heads and head_dim, and either exactly info.shape.tokens tokens (view
/// token t is stream token t) or at least info.token_begin + info.shape.tokens tokens (the view
/// holds the whole sequence; stream token t is view token info.token_begin + t). Its dtype may
/// differ from info.dtype.
class StreamWriter {
 public:
  /// `info.levels` must name at least one codec; `profile` is needed by profile-based codecs
  /// and must outlive the writer.
  static Result<std::unique_ptr<StreamWriter>> Create(StreamInfo info,
                                                      StreamWriterOptions options = {},
                                                      const Profile* profile = nullptr);
  ~StreamWriter();

  const StreamInfo& info() const;
  /// The codec of `level` (< info().levels.size()), made once when the writer was created.
  const Codec& codec(uint8_t level) const;

  /// Appends the stream header.
  Status WriteHeader(std::vector<uint8_t>* out);
  /// Appends the chunk frames of layer `layer` (K then V) read from `kv`, coded at `level`.
  /// Layers must be written in increasing order, each once.
  Status WriteLayer(const KvView& kv, uint32_t layer, uint8_t level, std::vector<uint8_t>* out);
  /// Appends the trailer; every layer must have been written.
  Status Finish(std::vector<uint8_t>* out);

  /// Appends one chunk frame (header + payload) to `out`, without stream bookkeeping (for
  /// transports).
  Status EncodeChunk(const KvView& kv, uint32_t layer, KvKind kind, uint32_t token_begin,
                     uint32_t tokens, uint8_t level, std::vector<uint8_t>* out) const;
  /// Like EncodeChunk, but `frame` becomes that one frame, in its own storage: a buffer kept
  /// for reuse (Connection::TakeBuffer) is filled without a new allocation, and at the fp16
  /// level without zero-filling either. On error `frame`'s contents are unspecified.
  Status EncodeChunkInto(const KvView& kv, uint32_t layer, KvKind kind, uint32_t token_begin,
                         uint32_t tokens, uint8_t level, std::vector<uint8_t>* frame) const;

  /// True when a chunk's payload at `level` may be the bytes of `kv` as they lie: the fp16 level
  /// (optimized implementation) from an fp16 view with packed token rows one after another (a
  /// contiguous cache, a mapped dump, the blocks of a paged cache). It is, for each chunk whose
  /// rows form one span (KvView::RawSpan: in a paged cache, rows within one block or adjacent
  /// blocks); other chunks, and head-major views, are copied.
  bool PayloadIsView(const KvView& kv, uint8_t level) const;
  /// Like EncodeChunkInto, but where PayloadIsView holds, `frame` becomes the 40-byte chunk
  /// header alone and `*borrowed` the payload: the chunk's rows in `kv` itself, read once for
  /// the CRC and the finiteness check and not copied (a transport writes them straight from
  /// there: Message::borrowed). The frame on the wire is `frame` followed by `*borrowed`, the
  /// bytes EncodeChunkInto would make. Elsewhere `*borrowed` is empty and `frame` the whole frame.
  Status EncodeChunkBorrowing(const KvView& kv, uint32_t layer, KvKind kind, uint32_t token_begin,
                              uint32_t tokens, uint8_t level, std::vector<uint8_t>* frame,
                              std::span<const uint8_t>* borrowed) const;

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
  /// Set by Next/ParseFrame when the chunk's level stores fp16 values as they are and they were
  /// found finite while the CRC was checked, so DecodeChunk need not read them again for that.
  bool payload_finite_halves = false;
};

/// Parses a complete stream held in memory. Not thread-safe.
class StreamReader {
 public:
  /// Validates the preamble and header; `bytes` must outlive the reader.
  static Result<std::unique_ptr<StreamReader>> Open(std::span<const uint8_t> bytes,
                                                    const Profile* profile = nullptr);
  /// Like Open, but creates no codecs: Next() still validates everything but payload contents
  /// (fields, bounds, ordering, every CRC32C, the trailer), without the profile and for codecs
  /// this build lacks; DecodeChunk returns kUnsupported. What InspectStream uses.
  static Result<std::unique_ptr<StreamReader>> OpenForInspection(std::span<const uint8_t> bytes);
  ~StreamReader();

  const StreamInfo& info() const;

  /// The next chunk, validated (header fields, bounds, CRC32C). Returns kNotFound after the
  /// last chunk, once the trailer has been verified. Any error is sticky.
  Result<ChunkRef> Next();

  /// Decodes `chunk` into `dst` (tokens must fit dst's shape; dtype conversion as needed).
  Status DecodeChunk(const ChunkRef& chunk, const KvView& dst, CodecImpl impl = CodecImpl::kOptimized);

  /// Reads every chunk and decodes it into `dst`, then verifies the trailer and that every
  /// (layer, K|V, token) was written exactly once. Always starts from the first chunk, whatever
  /// Next() calls came before. On error `dst` may be partly written.
  Status DecodeAll(const KvView& dst, CodecImpl impl = CodecImpl::kOptimized);

  /// Validates one chunk frame (40-byte header + payload, as StreamWriter::EncodeChunk makes it)
  /// against this stream's header — every field, the bounds, the stream tag, the payload
  /// CRC32C — but not the ordering rules of a whole stream, for transports that ship frames
  /// one by one and keep their own bookkeeping. `frame` must be exactly one frame and must
  /// outlive the returned ChunkRef; `offset` only appears in error messages. Open() needs only
  /// the header bytes for this use.
  Result<ChunkRef> ParseFrame(std::span<const uint8_t> frame, uint64_t offset = 0) const;
  /// The same, for a frame whose 40-byte header and payload lie apart (a payload received
  /// straight into its destination, PayloadDestination).
  Result<ChunkRef> ParseFrame(std::span<const uint8_t> header, std::span<const uint8_t> payload,
                              uint64_t offset) const;

  /// Where the payload of the chunk whose frame starts with `header` (its first 40 bytes) may
  /// be received as it is: the chunk's rows in `dst`, when the chunk is valid for this stream,
  /// its level stores fp16 values as they are, `dst` holds fp16 and the rows lie back to back
  /// (KvView::RawSpan). Empty otherwise. Nothing is checked of the payload: a frame received
  /// there must still pass ParseFrame(header, payload) before it counts, and DecodeChunk of it
  /// then only checks (the values are in place already).
  /// `parsed`, when given, receives the header's fields (where the span is not empty).
  std::span<uint8_t> PayloadDestination(std::span<const uint8_t> header, const KvView& dst,
                                        ChunkHeader* parsed = nullptr) const;

 private:
  StreamReader();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Decodes a whole stream into a new contiguous cache of the stream's dtype.
Result<KvCache> DecodeStream(std::span<const uint8_t> bytes, const Profile* profile = nullptr);

/// Summary for `kvwire inspect`: validates the whole stream (every CRC, the trailer) without
/// decoding payloads or creating codecs, so it works without the profile or for codecs this
/// build lacks. header_bytes + chunk_header_bytes + payload_bytes + trailer_bytes == bytes.
struct StreamSummary {
  StreamInfo info;
  uint64_t bytes = 0;            // whole stream
  uint64_t header_bytes = 0;     // preamble + protobuf header + its CRC32C
  uint64_t chunk_header_bytes = 0;
  uint64_t payload_bytes = 0;
  uint64_t trailer_bytes = 0;
  uint32_t chunks = 0;
  /// bytes * 8 / shape.elements(): all-in (docs/FORMAT.md section 12).
  double bits_per_element = 0;
  /// Per level: chunks and payload bytes.
  std::vector<uint32_t> chunks_per_level;
  std::vector<uint64_t> payload_bytes_per_level;
};
Result<StreamSummary> InspectStream(std::span<const uint8_t> bytes);

}  // namespace kvwire
