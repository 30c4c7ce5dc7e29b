// StreamWriter: KV view -> stream bytes (docs/FORMAT.md). The layouts live in stream_format.h.
//
// Determinism: the chunks of a layer may be encoded by several threads, but each lands in its
// own buffer and the buffers are appended in chunk order, so the bytes never depend on the
// thread count. Nothing is appended to the caller's buffer unless the whole call succeeds.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "codec/quant_common.h"
#include "codec/scratch.h"
#include "codec/stream_format.h"
#include "kvwire/profile.h"
#include "kvwire/stream.h"
#include "kvwire_stream.pb.h"

namespace kvwire {
namespace format {

std::vector<uint8_t> EncodeHeader(const HeaderFields& f, uint16_t major, uint16_t minor) {
  proto::StreamHeader pb;
  auto* shape = pb.mutable_shape();
  shape->set_layers(f.info.shape.layers);
  shape->set_tokens(f.info.shape.tokens);
  shape->set_kv_heads(f.info.shape.kv_heads);
  shape->set_head_dim(f.info.shape.head_dim);
  pb.set_dtype(static_cast<proto::StreamHeader::DType>(f.info.dtype));
  pb.set_token_begin(f.info.token_begin);
  pb.set_positions_start(f.info.metadata.positions_start);
  pb.set_rope_theta(f.info.metadata.rope_theta);
  pb.set_rope_style(f.info.metadata.rope_style);
  pb.set_model_fingerprint(f.info.metadata.model_fingerprint);
  pb.set_profile_id(f.info.profile_id);
  for (size_t i = 0; i < f.info.levels.size(); ++i) {
    auto* level = pb.add_levels();
    level->set_spec(f.info.levels[i]);
    level->set_codec_id(i < f.codec_ids.size() ? f.codec_ids[i] : 0);
    level->set_token_alignment(i < f.alignments.size() ? f.alignments[i] : 0);
  }
  pb.mutable_writer()->set_chunk_tokens(f.chunk_tokens);

  // Fields are written in field-number order and the message has no maps: deterministic.
  std::string body;
  pb.SerializeToString(&body);

  std::vector<uint8_t> out(preamble::kSize + body.size() + 4);
  EncodePreamble(Preamble{major, minor, static_cast<uint32_t>(body.size())}, out.data());
  std::memcpy(out.data() + preamble::kSize, body.data(), body.size());
  const size_t crc_at = preamble::kSize + body.size();
  StoreLE32(out.data() + crc_at, Crc32c({out.data(), crc_at}));
  return out;
}

}  // namespace format

namespace {

std::string ChunkName(uint32_t layer, KvKind kind, uint32_t begin, uint32_t tokens) {
  return "layer " + std::to_string(layer) + " " + std::string(KvKindName(kind)) + " tokens [" +
         std::to_string(begin) + ", " + std::to_string(uint64_t{begin} + tokens) + ")";
}

Status ValidateInfo(const StreamInfo& info) {
  KVWIRE_RETURN_IF_ERROR(ValidateShape(info.shape).WithContext("stream shape"));
  KVWIRE_RETURN_ERROR_IF(
      uint64_t{info.token_begin} + info.shape.tokens > kMaxTokens, kInvalidArgument,
      "token_begin " + std::to_string(info.token_begin) + " + tokens " +
          std::to_string(info.shape.tokens) + " exceeds " + std::to_string(kMaxTokens));
  KVWIRE_RETURN_ERROR_IF(static_cast<uint8_t>(info.dtype) > static_cast<uint8_t>(DType::kBF16),
                         kInvalidArgument, "unknown dtype");
  KVWIRE_RETURN_ERROR_IF(info.levels.empty() || info.levels.size() > kMaxLevels, kInvalidArgument,
                         "a stream needs 1 to " + std::to_string(kMaxLevels) + " levels, got " +
                             std::to_string(info.levels.size()));
  KVWIRE_RETURN_ERROR_IF(!std::isfinite(info.metadata.rope_theta) || info.metadata.rope_theta < 0,
                         kInvalidArgument, "rope_theta must be finite and >= 0");
  KVWIRE_RETURN_ERROR_IF(
      info.metadata.positions_start < 0 ||
          info.metadata.positions_start > format::kMaxPositionsStart,
      kInvalidArgument,
      "positions_start " + std::to_string(info.metadata.positions_start) + " outside [0, 2^40]");
  return Status::Ok();
}

}  // namespace

struct StreamWriter::Impl {
  StreamInfo info;
  StreamWriterOptions options;
  std::vector<std::unique_ptr<Codec>> codecs;  // one per level
  std::vector<uint32_t> alignments;            // one per level
  std::vector<uint32_t> chunk_step;            // tokens per chunk, one per level
  std::vector<uint8_t> header;                 // the whole header region
  uint32_t stream_tag = 0;                     // CRC32C of the header region

  bool header_written = false;
  bool finished = false;
  uint32_t next_layer = 0;
  uint64_t chunks = 0;
  // WriteLayer's frames, kept from layer to layer: fresh ones for every layer cost their page
  // faults again.
  std::vector<std::vector<uint8_t>> frames;
  uint64_t bytes = 0;
  uint32_t crc = 0;  // running CRC32C of every byte written so far

  void Account(std::span<const uint8_t> written) {
    crc = Crc32c(written, crc);
    bytes += written.size();
  }

  // Encodes one frame (header + payload) into `frame` (replacing its contents). With
  // `borrowed` non-null and the payload the view's bytes as they lie (PayloadIsView), `frame`
  // becomes the header only and *borrowed the payload; else *borrowed stays empty.
  Status EncodeFrame(const KvView& kv, uint32_t view_offset, uint32_t layer, KvKind kind,
                     uint32_t token_begin, uint32_t tokens, uint8_t level,
                     std::vector<uint8_t>* frame,
                     std::span<const uint8_t>* borrowed = nullptr) const;
  // fp16 token rows packed one after another in the view's token slots (of the sequence, or
  // of each block of a paged view).
  static bool Fp16RowsPacked(const KvView& kv) {
    return kv.dtype() == DType::kF16 && kv.rows_contiguous() &&
           kv.strides().token == static_cast<int64_t>(kv.row_bytes());
  }
  // fp16 token rows back to back (a contiguous cache, a mapped dump): every chunk's rows are
  // one span of the view's memory.
  static bool Fp16RowsBackToBack(const KvView& kv) { return !kv.paged() && Fp16RowsPacked(kv); }
  bool PayloadIsView(const KvView& kv, uint8_t level) const {
    return level < codecs.size() && codecs[level]->PayloadIsHalves() &&
           options.impl == CodecImpl::kOptimized && Fp16RowsPacked(kv);
  }
};

Status StreamWriter::Impl::EncodeFrame(const KvView& kv, uint32_t view_offset, uint32_t layer,
                                       KvKind kind, uint32_t token_begin, uint32_t tokens,
                                       uint8_t level, std::vector<uint8_t>* frame,
                                       std::span<const uint8_t>* borrowed) const {
  const std::string where = ChunkName(layer, kind, token_begin, tokens);
  const uint64_t elements = uint64_t{tokens} * info.shape.kv_heads * info.shape.head_dim;
  const Codec& codec = *codecs[level];
  const ChunkDesc desc = format::MakeChunkDesc(info, layer, kind, token_begin, tokens);
  std::optional<uint32_t> payload_crc;  // the fp16 copy path computes it with its check
  // The chunk's rows as one span of the view (a contiguous cache, or rows within one block or
  // adjacent blocks of a paged one), where the payload may be lent.
  const std::span<const uint8_t> lendable =
      borrowed != nullptr && PayloadIsView(kv, level)
          ? kv.RawSpan(layer, kind, view_offset + token_begin, tokens)
          : std::span<uint8_t>();
  try {
    if (!lendable.empty()) {
      // The payload is the chunk's rows where they lie: read once, for the CRC and the
      // finiteness check, and lent to the caller instead of copied.
      const uint8_t* rows = lendable.data();
      bool finite = false;
      payload_crc = format::Crc32cFiniteHalves(lendable, 0, &finite);
      if (!finite) {
        KVWIRE_RETURN_IF_ERROR(
            baseline::CheckFiniteHalves(desc, rows, codec.Spec()).WithContext(where));
      }
      frame->resize(kChunkHeaderBytes);
      *borrowed = lendable;
    } else if (codec.PayloadIsHalves() && kv.dtype() == DType::kF16 &&
               options.impl == CodecImpl::kOptimized) {
      // fp16 rows at the fp16 level: the payload is the rows as they are. (A frame of this
      // size already, say a pooled buffer from Connection::TakeBuffer, is not zero-filled.)
      frame->resize(kChunkHeaderBytes + 2 * elements);
      uint8_t* halves = frame->data() + kChunkHeaderBytes;
      // Copied a slice of about 64 KiB at a time, each slice's CRC and finiteness check read
      // while it is still in the core's cache: a chunk of megabytes then crosses memory once,
      // not once for the copy and again for the check.
      const uint64_t row = uint64_t{info.shape.kv_heads} * info.shape.head_dim * 2;
      const uint32_t slice = static_cast<uint32_t>(std::max<uint64_t>(1, (64u << 10) / row));
      uint32_t crc = 0;
      bool finite = true;
      for (uint32_t t = 0; t < tokens; t += slice) {
        const uint32_t n = std::min(slice, tokens - t);
        uint8_t* at = halves + t * row;
        KVWIRE_RETURN_IF_ERROR(
            kv.ReadRaw(layer, kind, view_offset + token_begin + t, n, at).WithContext(where));
        bool slice_finite = false;
        crc = format::Crc32cFiniteHalves({at, n * row}, crc, &slice_finite);
        finite = finite && slice_finite;
      }
      payload_crc = crc;
      if (!finite) {
        // Where, for the message.
        KVWIRE_RETURN_IF_ERROR(
            baseline::CheckFiniteHalves(desc, halves, codec.Spec()).WithContext(where));
      }
    } else if (Fp16RowsBackToBack(kv)) {
      // fp16 rows back to back (a contiguous cache, a mapped dump): the codec reads them where
      // they lie, without a float32 copy of the chunk.
      frame->assign(kChunkHeaderBytes, 0);
      const auto* halves =
          static_cast<const uint16_t*>(kv.Row(layer, kind, view_offset + token_begin));
      KVWIRE_RETURN_IF_ERROR(
          codec.EncodeHalves(desc, halves, frame, options.impl).WithContext(where));
    } else {
      // The float copy of the chunk, per thread and reused (scratch.h): a fresh zero-filled
      // buffer per chunk cost the sender ~20 % of its CPU in page clearing and faults (perf,
      // int3-token session).
      thread_local std::vector<float> values;
      Grow(&values, elements);
      KVWIRE_RETURN_IF_ERROR(
          kv.ReadF32(layer, kind, view_offset + token_begin, tokens, values.data())
              .WithContext(where));
      frame->assign(kChunkHeaderBytes, 0);
      KVWIRE_RETURN_IF_ERROR(
          codec.Encode(desc, values.data(), frame, options.impl).WithContext(where));
      ShedIfLarge(&values);
    }
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kResourceExhausted, where + ": out of memory");
  }
  const uint64_t payload = frame->size() - kChunkHeaderBytes + (borrowed ? borrowed->size() : 0);
  KVWIRE_RETURN_ERROR_IF(payload > kMaxChunkPayloadBytes, kResourceExhausted,
                         where + ": payload of " + std::to_string(payload) +
                             " bytes exceeds the format's bound; use a smaller chunk_tokens");
  KVWIRE_RETURN_ERROR_IF(elements > payload * kMaxElementsPerPayloadByte, kUnsupported,
                         where + ": codec '" + info.levels[level] + "' produced " +
                             std::to_string(payload) + " bytes for " + std::to_string(elements) +
                             " elements, below the format's floor of 1/32 bit per element");
  ChunkHeader h;
  h.layer = layer;
  h.kind = kind;
  h.level = level;
  h.codec_id = codecs[level]->Id();
  h.token_begin = token_begin;
  h.tokens = tokens;
  h.payload_bytes = static_cast<uint32_t>(payload);
  h.payload_crc32c =
      payload_crc ? *payload_crc : Crc32c({frame->data() + kChunkHeaderBytes, payload});
  format::EncodeChunkHeader(h, stream_tag, frame->data());
  return Status::Ok();
}

StreamWriter::StreamWriter() : impl_(std::make_unique<Impl>()) {}
StreamWriter::~StreamWriter() = default;

const StreamInfo& StreamWriter::info() const { return impl_->info; }
const Codec& StreamWriter::codec(uint8_t level) const { return *impl_->codecs.at(level); }

Result<std::unique_ptr<StreamWriter>> StreamWriter::Create(StreamInfo info,
                                                           StreamWriterOptions options,
                                                           const Profile* profile) {
  KVWIRE_RETURN_IF_ERROR(ValidateInfo(info));
  KVWIRE_RETURN_ERROR_IF(options.threads < 1 || options.threads > 256, kInvalidArgument,
                         "threads must be in [1, 256], got " + std::to_string(options.threads));
  if (profile != nullptr) {
    // The header names the profile the decoder must hold (by content hash), so a reader with
    // another profile refuses the stream instead of decoding garbage.
    KVWIRE_ASSIGN_OR_RETURN(std::string id, profile->Id());
    KVWIRE_RETURN_ERROR_IF(!info.profile_id.empty() && info.profile_id != id, kInvalidArgument,
                           "info.profile_id '" + info.profile_id + "' is not the id '" + id +
                               "' of the profile given");
    info.profile_id = std::move(id);
  }
  std::unique_ptr<StreamWriter> writer(new StreamWriter());
  Impl& w = *writer->impl_;
  const uint64_t row = uint64_t{info.shape.kv_heads} * info.shape.head_dim;
  format::HeaderFields fields;
  for (size_t i = 0; i < info.levels.size(); ++i) {
    const std::string level = "level " + std::to_string(i);
    KVWIRE_ASSIGN_OR_RETURN(auto codec, CreateCodec(info.levels[i], profile));
    const uint32_t align = codec->TokenAlignment();
    KVWIRE_RETURN_ERROR_IF(
        align == 0 || align > kMaxTokens, kInternal,
        level + ": codec '" + codec->Spec() + "' has token alignment " + std::to_string(align));
    KVWIRE_RETURN_ERROR_IF(align * row > kMaxChunkElements, kInvalidArgument,
                           level + ": one aligned group of " + std::to_string(align) +
                               " tokens exceeds the chunk bound of " +
                               std::to_string(kMaxChunkElements) + " elements");
    const uint64_t want = options.chunk_tokens == 0 ? info.shape.tokens : options.chunk_tokens;
    const uint64_t rounded = (want + align - 1) / align * align;
    const uint64_t cap = kMaxChunkElements / row / align * align;
    w.chunk_step.push_back(static_cast<uint32_t>(std::min(rounded, cap)));
    w.alignments.push_back(align);
    fields.codec_ids.push_back(codec->Id());
    fields.alignments.push_back(align);
    info.levels[i] = codec->Spec();  // record the canonical spec
    w.codecs.push_back(std::move(codec));
  }
  fields.info = info;
  fields.chunk_tokens = options.chunk_tokens;
  w.header = format::EncodeHeader(fields);
  KVWIRE_RETURN_ERROR_IF(w.header.size() - format::kHeaderOverheadBytes > kMaxHeaderBytes,
                         kInvalidArgument,
                         "stream header of " + std::to_string(w.header.size()) +
                             " bytes exceeds the bound of " + std::to_string(kMaxHeaderBytes));
  w.stream_tag = format::LoadLE32(w.header.data() + w.header.size() - 4);
  w.info = std::move(info);
  w.options = options;
  return writer;
}

Status StreamWriter::WriteHeader(std::vector<uint8_t>* out) {
  Impl& w = *impl_;
  KVWIRE_RETURN_ERROR_IF(w.header_written, kInvalidArgument, "stream header already written");
  out->insert(out->end(), w.header.begin(), w.header.end());
  w.Account(w.header);
  w.header_written = true;
  return Status::Ok();
}

Status StreamWriter::WriteLayer(const KvView& kv, uint32_t layer, uint8_t level,
                                std::vector<uint8_t>* out) {
  Impl& w = *impl_;
  KVWIRE_RETURN_ERROR_IF(!w.header_written, kInvalidArgument, "WriteLayer before WriteHeader");
  KVWIRE_RETURN_ERROR_IF(w.finished, kInvalidArgument, "WriteLayer after Finish");
  KVWIRE_RETURN_ERROR_IF(layer != w.next_layer, kInvalidArgument,
                         "layers must be written in order: expected layer " +
                             std::to_string(w.next_layer) + ", got " + std::to_string(layer));
  KVWIRE_RETURN_ERROR_IF(
      level >= w.codecs.size(), kInvalidArgument,
      "level " + std::to_string(level) + " >= " + std::to_string(w.codecs.size()) + " levels");
  KVWIRE_ASSIGN_OR_RETURN(const uint32_t view_offset, format::ViewTokenOffset(kv, w.info));

  struct Job {
    KvKind kind;
    uint32_t begin, tokens;
  };
  std::vector<Job> jobs;
  // Chunk boundaries fall on multiples of the step in sequence coordinates (the rule the session
  // cuts requests by, too); the step is a multiple of the alignment, so when the stream starts
  // off a multiple (token_begin % step = phase) only its shorter first chunk starts unaligned.
  const uint32_t step = w.chunk_step[level];
  const uint32_t phase = w.info.token_begin % step;
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    for (uint32_t t = 0; t < w.info.shape.tokens;) {
      const uint32_t len = std::min(step - (t == 0 ? phase : 0), w.info.shape.tokens - t);
      jobs.push_back(Job{kind, t, len});
      t += len;
    }
  }
  KVWIRE_RETURN_ERROR_IF(w.chunks + jobs.size() > UINT32_MAX, kResourceExhausted,
                         "more than 2^32-1 chunks in one stream; use a larger chunk_tokens");

  std::vector<std::vector<uint8_t>>& frames = w.frames;
  if (frames.size() < jobs.size()) frames.resize(jobs.size());
  std::vector<Status> status(jobs.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < jobs.size();) {
      status[i] = w.EncodeFrame(kv, view_offset, layer, jobs[i].kind, jobs[i].begin, jobs[i].tokens,
                                level, &frames[i]);
    }
  };
  const size_t helpers = std::min<size_t>(w.options.threads, jobs.size()) - 1;
  std::vector<std::thread> pool;
  try {
    for (size_t i = 0; i < helpers; ++i) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads than asked: the calling thread still does all remaining work.
  }
  work();
  for (std::thread& t : pool) t.join();

  for (const Status& s : status) KVWIRE_RETURN_IF_ERROR(s);  // first error in chunk order
  size_t bytes = 0;
  for (size_t i = 0; i < jobs.size(); ++i) bytes += frames[i].size();
  if (out->capacity() < out->size() + bytes) {  // one reallocation per layer at most
    out->reserve(std::max(out->size() + bytes, 2 * out->capacity()));
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    out->insert(out->end(), frames[i].begin(), frames[i].end());
    w.Account(frames[i]);
  }
  w.chunks += jobs.size();
  ++w.next_layer;
  return Status::Ok();
}

Status StreamWriter::Finish(std::vector<uint8_t>* out) {
  Impl& w = *impl_;
  KVWIRE_RETURN_ERROR_IF(!w.header_written, kInvalidArgument, "Finish before WriteHeader");
  KVWIRE_RETURN_ERROR_IF(w.finished, kInvalidArgument, "Finish called twice");
  KVWIRE_RETURN_ERROR_IF(w.next_layer != w.info.shape.layers, kInvalidArgument,
                         "Finish after " + std::to_string(w.next_layer) + " of " +
                             std::to_string(w.info.shape.layers) + " layers");
  std::vector<std::vector<uint8_t>>().swap(w.frames);
  format::Trailer t;
  t.chunk_count = static_cast<uint32_t>(w.chunks);
  t.total_bytes = w.bytes + format::trailer::kSize;
  t.stream_crc = w.crc;
  uint8_t bytes[format::trailer::kSize];
  format::EncodeTrailer(t, bytes);
  out->insert(out->end(), bytes, bytes + sizeof(bytes));
  w.Account(bytes);
  w.finished = true;
  return Status::Ok();
}

Status StreamWriter::EncodeChunk(const KvView& kv, uint32_t layer, KvKind kind,
                                 uint32_t token_begin, uint32_t tokens, uint8_t level,
                                 std::vector<uint8_t>* out) const {
  // Into a frame of its own, so that an error leaves `out` as it was.
  std::vector<uint8_t> frame;
  KVWIRE_RETURN_IF_ERROR(EncodeChunkInto(kv, layer, kind, token_begin, tokens, level, &frame));
  if (out->empty()) {
    *out = std::move(frame);
  } else {
    out->insert(out->end(), frame.begin(), frame.end());
  }
  return Status::Ok();
}

Status StreamWriter::EncodeChunkInto(const KvView& kv, uint32_t layer, KvKind kind,
                                     uint32_t token_begin, uint32_t tokens, uint8_t level,
                                     std::vector<uint8_t>* frame) const {
  return EncodeChunkBorrowing(kv, layer, kind, token_begin, tokens, level, frame, nullptr);
}

bool StreamWriter::PayloadIsView(const KvView& kv, uint8_t level) const {
  return impl_->PayloadIsView(kv, level);
}

Status StreamWriter::EncodeChunkBorrowing(const KvView& kv, uint32_t layer, KvKind kind,
                                          uint32_t token_begin, uint32_t tokens, uint8_t level,
                                          std::vector<uint8_t>* frame,
                                          std::span<const uint8_t>* borrowed) const {
  const Impl& w = *impl_;
  if (borrowed != nullptr) *borrowed = {};
  const KvShape& s = w.info.shape;
  KVWIRE_RETURN_ERROR_IF(
      level >= w.codecs.size(), kInvalidArgument,
      "level " + std::to_string(level) + " >= " + std::to_string(w.codecs.size()) + " levels");
  KVWIRE_RETURN_ERROR_IF(layer >= s.layers, kInvalidArgument,
                         "layer " + std::to_string(layer) + " >= " + std::to_string(s.layers));
  KVWIRE_RETURN_ERROR_IF(kind != KvKind::kKey && kind != KvKind::kValue, kInvalidArgument,
                         "bad K|V kind");
  KVWIRE_RETURN_ERROR_IF(tokens == 0 || uint64_t{token_begin} + tokens > s.tokens, kInvalidArgument,
                         "chunk tokens [" + std::to_string(token_begin) + ", " +
                             std::to_string(uint64_t{token_begin} + tokens) +
                             ") empty or outside the stream's " + std::to_string(s.tokens));
  KVWIRE_RETURN_ERROR_IF(
      !format::ChunkStartAligned(w.info, token_begin, w.alignments[level]), kInvalidArgument,
      "chunk at stream token " + std::to_string(token_begin) + " (sequence token " +
          std::to_string(w.info.token_begin + token_begin) +
          ") does not start at a multiple of the codec's alignment " +
          std::to_string(w.alignments[level]));
  KVWIRE_RETURN_ERROR_IF(uint64_t{tokens} * s.kv_heads * s.head_dim > kMaxChunkElements,
                         kInvalidArgument,
                         "chunk of " + std::to_string(tokens) + " tokens exceeds " +
                             std::to_string(kMaxChunkElements) + " elements");
  KVWIRE_ASSIGN_OR_RETURN(const uint32_t view_offset, format::ViewTokenOffset(kv, w.info));
  return w.EncodeFrame(kv, view_offset, layer, kind, token_begin, tokens, level, frame, borrowed);
}

Result<std::vector<uint8_t>> EncodeStream(const KvView& kv, StreamInfo info,
                                          StreamWriterOptions options, const Profile* profile) {
  KVWIRE_ASSIGN_OR_RETURN(auto writer, StreamWriter::Create(std::move(info), options, profile));
  std::vector<uint8_t> out;
  KVWIRE_RETURN_IF_ERROR(writer->WriteHeader(&out));
  const uint32_t layers = writer->info().shape.layers;
  for (uint32_t l = 0; l < layers; ++l) {
    const size_t before = out.size();
    KVWIRE_RETURN_IF_ERROR(writer->WriteLayer(kv, l, 0, &out));
    if (l == 0 && layers > 1) {  // the other layers will be about this size: room for them
      const size_t layer = out.size() - before;
      out.reserve(out.size() + (layers - 1) * (layer + layer / 16) + format::trailer::kSize);
    }
  }
  KVWIRE_RETURN_IF_ERROR(writer->Finish(&out));
  return out;
}

}  // namespace kvwire
