#include "transport/framing.h"

#include <cstring>
#include <string>
#include <utility>

namespace kvwire::transport {
namespace {

uint32_t LoadLe32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

void StoreLe32(uint32_t v, std::vector<uint8_t>* out) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

Status CheckBounds(MessageKind kind, uint64_t meta, uint64_t payload) {
  if (kind == MessageKind::kControl) {
    KVWIRE_RETURN_ERROR_IF(payload != 0, kCorrupt,
                           "control frame with a payload of " + std::to_string(payload) + " bytes");
    KVWIRE_RETURN_ERROR_IF(meta == 0, kCorrupt, "empty control frame");
    KVWIRE_RETURN_ERROR_IF(meta > kMaxControlMessageBytes, kResourceExhausted,
                           "control frame of " + std::to_string(meta) + " bytes > bound " +
                               std::to_string(kMaxControlMessageBytes));
    return Status::Ok();
  }
  if (kind == MessageKind::kData) {
    KVWIRE_RETURN_ERROR_IF(meta == 0, kCorrupt, "data frame without a descriptor");
    KVWIRE_RETURN_ERROR_IF(meta > kMaxMetaBytes, kResourceExhausted,
                           "data frame descriptor of " + std::to_string(meta) + " bytes > bound " +
                               std::to_string(kMaxMetaBytes));
    KVWIRE_RETURN_ERROR_IF(meta + payload > kMaxDataMessageBytes, kResourceExhausted,
                           "data frame of " + std::to_string(meta + payload) + " bytes > bound " +
                               std::to_string(kMaxDataMessageBytes));
    return Status::Ok();
  }
  return Status(StatusCode::kCorrupt, "unknown frame kind " + std::to_string(int(kind)));
}

}  // namespace

Result<FramePrefix> ParseFramePrefix(std::span<const uint8_t, kFramePrefixBytes> prefix) {
  const uint32_t body = LoadLe32(prefix.data());
  const uint8_t kind = prefix[4];
  const uint32_t meta = LoadLe32(prefix.data() + 5);
  KVWIRE_RETURN_ERROR_IF(
      kind != uint8_t(MessageKind::kControl) && kind != uint8_t(MessageKind::kData), kCorrupt,
      "unknown frame kind " + std::to_string(kind));
  KVWIRE_RETURN_ERROR_IF(body < 5 || uint64_t{meta} > uint64_t{body} - 5, kCorrupt,
                         "frame length " + std::to_string(body) + " shorter than its meta (" +
                             std::to_string(meta) + " bytes)");
  FramePrefix p;
  p.kind = static_cast<MessageKind>(kind);
  p.meta_bytes = meta;
  p.payload_bytes = body - 5 - meta;
  KVWIRE_RETURN_IF_ERROR(CheckBounds(p.kind, p.meta_bytes, p.payload_bytes));
  return p;
}

Status ValidateMessageBounds(const Message& msg) {
  return CheckBounds(msg.kind, msg.meta.size(), msg.payload.size() + msg.borrowed.size());
}

void CopyBorrowed(Message* msg) {
  if (msg->borrowed.empty()) return;
  msg->payload.insert(msg->payload.end(), msg->borrowed.begin(), msg->borrowed.end());
  msg->borrowed = {};
}

Status CheckMessageBounds(MessageKind kind, uint64_t meta_bytes, uint64_t payload_bytes) {
  return CheckBounds(kind, meta_bytes, payload_bytes);
}

Landing AskLanding(const LandingFn& fn, std::span<const uint8_t> meta,
                   std::span<const uint8_t> head, uint64_t payload_bytes) {
  Landing l = fn(meta, head, payload_bytes);
  if (l.bytes.size() != payload_bytes - kLandingHeadBytes) {
    if (l.done) std::exchange(l.done, nullptr)();  // declined: nothing will be written there
    l.bytes = {};
  }
  return l;
}

void AppendFramePrefix(const Message& msg, std::vector<uint8_t>* out) {
  StoreLe32(static_cast<uint32_t>(5 + msg.meta.size() + msg.payload.size() + msg.borrowed.size()),
            out);
  out->push_back(static_cast<uint8_t>(msg.kind));
  StoreLe32(static_cast<uint32_t>(msg.meta.size()), out);
}

Status AppendFrame(const Message& msg, std::vector<uint8_t>* out) {
  KVWIRE_RETURN_IF_ERROR(ValidateMessageBounds(msg));
  AppendFramePrefix(msg, out);
  out->insert(out->end(), msg.meta.begin(), msg.meta.end());
  out->insert(out->end(), msg.payload.begin(), msg.payload.end());
  out->insert(out->end(), msg.borrowed.begin(), msg.borrowed.end());
  return Status::Ok();
}

void FrameDecoder::Feed(std::span<const uint8_t> bytes) {
  if (!error_.ok()) return;
  // Compact before growing so the buffer holds at most one frame plus one read.
  if (consumed_ > 0 && consumed_ * 2 >= buffer_.size()) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<ptrdiff_t>(consumed_));
    offset_ += consumed_;
    consumed_ = 0;
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

Result<std::optional<Message>> FrameDecoder::Next() {
  if (!error_.ok()) return error_;
  const size_t avail = buffer_.size() - consumed_;
  if (avail < kFramePrefixBytes) return std::optional<Message>();
  const uint8_t* p = buffer_.data() + consumed_;
  auto prefix = ParseFramePrefix(std::span<const uint8_t, kFramePrefixBytes>(p, kFramePrefixBytes));
  if (!prefix.ok()) {
    error_ = prefix.status().WithContext("frame at offset " + std::to_string(offset_ + consumed_));
    return error_;
  }
  const size_t total = kFramePrefixBytes + size_t{prefix->meta_bytes} + prefix->payload_bytes;
  if (avail < total) return std::optional<Message>();
  Message msg;
  msg.kind = prefix->kind;
  const uint8_t* meta = p + kFramePrefixBytes;
  msg.meta.assign(meta, meta + prefix->meta_bytes);
  msg.payload.assign(meta + prefix->meta_bytes, meta + prefix->meta_bytes + prefix->payload_bytes);
  consumed_ += total;
  return std::optional<Message>(std::move(msg));
}

}  // namespace kvwire::transport
