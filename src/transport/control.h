// Validated parsing and building of control messages (proto/kvwire_control.proto).
// Nothing from the network is used before ParseControl / ParseChunkDescriptor accepted it.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "kvwire/codec.h"
#include "kvwire/profile.h"
#include "kvwire/status.h"
#include "kvwire/transport.h"
#include "kvwire_control.pb.h"

namespace kvwire::transport {

// docs/PROTOCOL.md; 2: the chunk grid's phase; 3: ucx data messages carry the chunk header in
// the AM header.
inline constexpr uint32_t kProtocolVersion = 3;
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kMacBytes = 32;
inline constexpr uint32_t kMaxChunkSeq = 1u << 24;
inline constexpr size_t kMaxAcksPerMessage = 4096;
/// Largest profile file a session transfers, and most bytes of it per ProfileData message.
inline constexpr uint64_t kMaxProfileBytes = 1ull << 30;
inline constexpr size_t kMaxProfileDataBytes = 512u << 10;

/// Parses and validates one Control (every field against the bounds in the .proto).
Result<control::Control> ParseControl(std::span<const uint8_t> bytes);
/// Validates an already parsed Control (what ParseControl runs after parsing).
Status ValidateControl(const control::Control& msg);

/// Parses and validates a data message's descriptor against its payload (`payload`, then
/// `landed`: Message::landed).
Result<control::ChunkDescriptor> ParseChunkDescriptor(const Message& msg);
/// The same from a data message's meta and its payload's size.
Result<control::ChunkDescriptor> ParseChunkDescriptor(std::span<const uint8_t> meta,
                                                      uint64_t payload_bytes);

/// Serializes a control message (validated first: we never send what we would refuse).
Result<Message> MakeControlMessage(const control::Control& msg);
/// A data message: descriptor + chunk frame (`payload`, then `borrowed`: Message::borrowed).
Result<Message> MakeDataMessage(const control::ChunkDescriptor& desc, std::vector<uint8_t> payload,
                                std::span<const uint8_t> borrowed = {});

/// This end's Capabilities, sent first on every session connection: its backend, the codec
/// families it can build (their registry patterns), the profiles it holds, its bound on data in
/// flight (sender) or buffered (receiver).
control::Control MakeCapabilities(std::string_view backend,
                                  const std::vector<std::string>& profile_ids,
                                  uint64_t max_inflight_bytes);
/// The registry pattern of the codec family `spec` belongs to ("int<b>-token" for "int3-token").
Result<std::string> CodecFamilyOf(std::string_view spec, const Profile* profile);

/// Name of the oneof case ("hello", "ack", ...), for logs and errors.
std::string ControlName(const control::Control& msg);

/// Builds an Error message body.
control::Control MakeError(uint64_t request_id, const Status& status);
/// The Status an Error message carries (codes out of range map to kInternal).
Status ErrorToStatus(const control::Error& error);

}  // namespace kvwire::transport
