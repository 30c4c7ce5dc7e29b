// Frames on a byte stream (tcp backend, ucx bootstrap):
//
//   u32 LE body_bytes | u8 kind | u32 LE meta_bytes | meta | payload
//   body_bytes = 1 + 4 + meta_bytes + payload_bytes
//
// Bounds (checked on the prefix, before anything is allocated): control frames have no payload
// and meta <= kMaxControlMessageBytes; data frames have meta <= kMaxMetaBytes and
// meta + payload <= kMaxDataMessageBytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "kvwire/status.h"
#include "kvwire/transport.h"

namespace kvwire::transport {

inline constexpr size_t kFramePrefixBytes = 9;

struct FramePrefix {
  MessageKind kind = MessageKind::kControl;
  uint32_t meta_bytes = 0;
  uint32_t payload_bytes = 0;
};

/// Validates a frame prefix (kind, lengths, bounds).
Result<FramePrefix> ParseFramePrefix(std::span<const uint8_t, kFramePrefixBytes> prefix);

/// Checks a message against the bounds of its kind (what Send refuses).
Status ValidateMessageBounds(const Message& msg);
/// The same check on sizes announced by a peer, before anything is allocated for them.
Status CheckMessageBounds(MessageKind kind, uint64_t meta_bytes, uint64_t payload_bytes);

/// Appends a message's borrowed bytes to its payload (a backend that cannot write them before
/// Send returns owns a copy instead).
void CopyBorrowed(Message* msg);

/// A landing function's answer for a data message (Connection::SetLanding), as a backend uses
/// it: `bytes` exactly the payload after its first kLandingHeadBytes, or empty where the
/// function declined or named memory of another size (its `done` has then already run).
Landing AskLanding(const LandingFn& fn, std::span<const uint8_t> meta,
                   std::span<const uint8_t> head, uint64_t payload_bytes);

/// Appends the prefix of `msg` (which must pass ValidateMessageBounds).
void AppendFramePrefix(const Message& msg, std::vector<uint8_t>* out);

/// Appends the whole frame of `msg`.
Status AppendFrame(const Message& msg, std::vector<uint8_t>* out);

/// Splits a byte stream into messages, incrementally. Errors are sticky.
class FrameDecoder {
 public:
  /// Appends bytes received.
  void Feed(std::span<const uint8_t> bytes);
  /// The next complete message, std::nullopt if more bytes are needed, or the error.
  Result<std::optional<Message>> Next();
  /// Bytes buffered and not yet returned.
  size_t buffered() const { return buffer_.size() - consumed_; }

 private:
  std::vector<uint8_t> buffer_;
  size_t consumed_ = 0;
  uint64_t offset_ = 0;  // stream offset of buffer_[0], for error messages
  Status error_;
};

}  // namespace kvwire::transport
