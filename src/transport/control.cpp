#include "transport/control.h"

#include <cmath>

#include "kvwire/kv_view.h"
#include "kvwire/session.h"
#include "kvwire/stream.h"

namespace kvwire::transport {
namespace {

using control::Control;

#define CHECK_FIELD(cond, msg) KVWIRE_RETURN_ERROR_IF(!(cond), kCorrupt, std::string(msg))

constexpr size_t kMaxName = 256;
constexpr size_t kMaxMessage = 1024;
constexpr size_t kMaxProfileId = 128;
constexpr size_t kMaxCodecSpec = 256;

// Text fields end up in logs: bounded, and printable ASCII only (no terminal escapes, no forged
// log lines).
Status CheckString(const std::string& s, size_t max, const char* what) {
  CHECK_FIELD(s.size() <= max,
              std::string(what) + " longer than " + std::to_string(max) + " bytes");
  for (char c : s)
    CHECK_FIELD(c >= 0x20 && c <= 0x7e, std::string(what) + " is not printable ASCII");
  return Status::Ok();
}

Status CheckRequestId(uint64_t id) {
  CHECK_FIELD(id != 0, "request_id 0");
  return Status::Ok();
}

Status ValidateLevel(const control::Level& l) {
  KVWIRE_RETURN_IF_ERROR(CheckString(l.codec(), kMaxCodecSpec, "level codec"));
  CHECK_FIELD(!l.codec().empty(), "level without a codec");
  CHECK_FIELD(std::isfinite(l.bits_per_element()) && l.bits_per_element() >= 0 &&
                  l.bits_per_element() <= 64,
              "level bits_per_element out of range");
  CHECK_FIELD(std::isfinite(l.kl()), "level kl not finite");
  return Status::Ok();
}

Status ValidateRequestBegin(const control::RequestBegin& r) {
  KVWIRE_RETURN_IF_ERROR(CheckRequestId(r.request_id()));
  CHECK_FIELD(r.has_shape(), "request_begin without a shape");
  KvShape shape{r.shape().layers(), r.shape().tokens(), r.shape().kv_heads(), r.shape().head_dim()};
  Status s = ValidateShape(shape);
  if (!s.ok()) return Status(StatusCode::kCorrupt, "request_begin shape: " + s.message());
  CHECK_FIELD(r.dtype() <= uint32_t(DType::kBF16), "request_begin dtype out of range");
  CHECK_FIELD(r.token_begin() <= kMaxTokens, "request_begin token_begin out of range");
  CHECK_FIELD(r.levels_size() >= 1 && r.levels_size() <= int(kMaxLevels),
              "request_begin needs 1.." + std::to_string(kMaxLevels) + " levels");
  for (const auto& l : r.levels()) KVWIRE_RETURN_IF_ERROR(ValidateLevel(l));
  KVWIRE_RETURN_IF_ERROR(CheckString(r.profile_id(), kMaxProfileId, "profile_id"));
  CHECK_FIELD(std::isfinite(r.max_kl()), "max_kl not finite");
  CHECK_FIELD(std::isfinite(r.min_bits()) && r.min_bits() <= 64, "min_bits out of range");
  CHECK_FIELD(r.deadline_ms() <= 24ull * 3600 * 1000, "deadline_ms longer than a day");
  CHECK_FIELD(r.chunk_tokens() <= kMaxTokens, "chunk_tokens out of range");
  CHECK_FIELD(r.stream_header().size() <= kMaxHeaderBytes + 64, "stream_header too large");
  CHECK_FIELD(r.user_data().size() <= kMaxRequestUserDataBytes, "user_data too large");
  // The number of chunks must fit the sequence space (a first chunk shortened by the
  // request's token_begin adds at most one).
  const uint64_t per_layer =
      r.chunk_tokens() == 0
          ? 1
          : (uint64_t{shape.tokens} + r.chunk_tokens() - 1) / r.chunk_tokens() + 1;
  CHECK_FIELD(per_layer * 2 * shape.layers <= kMaxChunkSeq, "request has too many chunks");
  return Status::Ok();
}

Status ValidateBody(const Control& m) {
  switch (m.body_case()) {
    case Control::kHello: {
      const auto& h = m.hello();
      KVWIRE_RETURN_IF_ERROR(CheckString(h.node_name(), kMaxName, "node_name"));
      CHECK_FIELD(h.client_nonce().size() == kNonceBytes, "hello nonce must be 32 bytes");
      return Status::Ok();
    }
    case Control::kChallenge: {
      const auto& c = m.challenge();
      KVWIRE_RETURN_IF_ERROR(CheckString(c.node_name(), kMaxName, "node_name"));
      CHECK_FIELD(c.server_nonce().size() == kNonceBytes, "challenge nonce must be 32 bytes");
      CHECK_FIELD(c.server_mac().empty() || c.server_mac().size() == kMacBytes,
                  "challenge mac must be 32 bytes");
      return Status::Ok();
    }
    case Control::kAuthProof:
      CHECK_FIELD(
          m.auth_proof().client_mac().empty() || m.auth_proof().client_mac().size() == kMacBytes,
          "auth_proof mac must be 32 bytes");
      return Status::Ok();
    case Control::kAuthOk:
      return Status::Ok();
    case Control::kCapabilities: {
      const auto& c = m.capabilities();
      CHECK_FIELD(c.backends_size() <= 16, "too many backends");
      for (const auto& b : c.backends()) KVWIRE_RETURN_IF_ERROR(CheckString(b, 64, "backend"));
      CHECK_FIELD(c.codecs_size() <= 256, "too many codecs");
      for (const auto& b : c.codecs())
        KVWIRE_RETURN_IF_ERROR(CheckString(b, kMaxCodecSpec, "codec"));
      CHECK_FIELD(c.profile_ids_size() <= 256, "too many profile ids");
      for (const auto& b : c.profile_ids())
        KVWIRE_RETURN_IF_ERROR(CheckString(b, kMaxProfileId, "profile id"));
      return Status::Ok();
    }
    case Control::kUcxAddress:
      CHECK_FIELD(!m.ucx_address().worker_address().empty() &&
                      m.ucx_address().worker_address().size() <= (64u << 10),
                  "ucx worker address size out of range");
      return Status::Ok();
    case Control::kProfileOffer:
      CHECK_FIELD(!m.profile_offer().profile_id().empty(), "profile_offer without an id");
      KVWIRE_RETURN_IF_ERROR(
          CheckString(m.profile_offer().profile_id(), kMaxProfileId, "profile id"));
      CHECK_FIELD(m.profile_offer().bytes() <= (1ull << 32), "profile larger than 4 GiB");
      return Status::Ok();
    case Control::kProfileRequest:
      return CheckString(m.profile_request().profile_id(), kMaxProfileId, "profile id");
    case Control::kProfileData:
      KVWIRE_RETURN_IF_ERROR(
          CheckString(m.profile_data().profile_id(), kMaxProfileId, "profile id"));
      CHECK_FIELD(m.profile_data().data().size() <= kMaxProfileDataBytes, "profile_data too large");
      CHECK_FIELD(m.profile_data().total_bytes() <= kMaxProfileBytes,
                  "profile larger than " + std::to_string(kMaxProfileBytes) + " bytes");
      CHECK_FIELD(m.profile_data().offset() + m.profile_data().data().size() <=
                      m.profile_data().total_bytes(),
                  "profile_data beyond the profile's size");
      KVWIRE_RETURN_IF_ERROR(CheckString(m.profile_data().message(), kMaxMessage, "message"));
      CHECK_FIELD(m.profile_data().status_code() == 0 || m.profile_data().data().empty(),
                  "profile_data with both an error and data");
      return Status::Ok();
    case Control::kRequestBegin:
      return ValidateRequestBegin(m.request_begin());
    case Control::kRequestAccept:
      KVWIRE_RETURN_IF_ERROR(CheckRequestId(m.request_accept().request_id()));
      CHECK_FIELD(m.request_accept().have_chunks_size() <= int(kMaxChunkSeq), "too many chunks");
      for (uint32_t s : m.request_accept().have_chunks())
        CHECK_FIELD(s < kMaxChunkSeq, "chunk seq out of range");
      return Status::Ok();
    case Control::kAck:
      KVWIRE_RETURN_IF_ERROR(CheckRequestId(m.ack().request_id()));
      CHECK_FIELD(m.ack().seqs_size() >= 1 && m.ack().seqs_size() <= int(kMaxAcksPerMessage),
                  "ack with 0 or too many seqs");
      for (uint32_t s : m.ack().seqs()) CHECK_FIELD(s < kMaxChunkSeq, "ack seq out of range");
      return Status::Ok();
    case Control::kLevelChange:
      KVWIRE_RETURN_IF_ERROR(CheckRequestId(m.level_change().request_id()));
      CHECK_FIELD(
          m.level_change().from_level() < kMaxLevels && m.level_change().to_level() < kMaxLevels,
          "level out of range");
      CHECK_FIELD(std::isfinite(m.level_change().goodput_bytes_per_s()), "goodput not finite");
      return CheckString(m.level_change().reason(), 256, "reason");
    case Control::kRequestEnd:
      KVWIRE_RETURN_IF_ERROR(CheckRequestId(m.request_end().request_id()));
      CHECK_FIELD(m.request_end().chunks() <= kMaxChunkSeq, "chunk count out of range");
      return Status::Ok();
    case Control::kRequestDone:
      KVWIRE_RETURN_IF_ERROR(CheckRequestId(m.request_done().request_id()));
      return CheckString(m.request_done().message(), kMaxMessage, "message");
    case Control::kError:
      return CheckString(m.error().message(), kMaxMessage, "message");
    case Control::kResume:
      return CheckRequestId(m.resume().request_id());
    case Control::kMigrateBegin:
      KVWIRE_RETURN_IF_ERROR(CheckRequestId(m.migrate_begin().request_id()));
      CHECK_FIELD(m.migrate_begin().prefix_tokens() <= kMaxTokens, "prefix_tokens out of range");
      return Status::Ok();
    case Control::kMigrateTail:
      KVWIRE_RETURN_IF_ERROR(CheckRequestId(m.migrate_tail().request_id()));
      CHECK_FIELD(m.migrate_tail().tokens() <= kMaxTokens, "tokens out of range");
      return Status::Ok();
    case Control::kMigrateCommit:
      return CheckRequestId(m.migrate_commit().request_id());
    case Control::kMigrateConfirm:
      return CheckRequestId(m.migrate_confirm().request_id());
    case Control::kPing:
    case Control::kPong:
      return Status::Ok();
    case Control::BODY_NOT_SET:
      break;
  }
  return Status(StatusCode::kCorrupt, "control message without a known body");
}

}  // namespace

Status ValidateControl(const Control& msg) {
  Status s = ValidateBody(msg);
  if (!s.ok()) return s.WithContext("control message " + ControlName(msg));
  return s;
}

Result<Control> ParseControl(std::span<const uint8_t> bytes) {
  KVWIRE_RETURN_ERROR_IF(bytes.size() > kMaxControlMessageBytes, kResourceExhausted,
                         "control message of " + std::to_string(bytes.size()) + " bytes");
  Control msg;
  KVWIRE_RETURN_ERROR_IF(!msg.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())),
                         kCorrupt, "control message is not a valid protobuf");
  KVWIRE_RETURN_IF_ERROR(ValidateControl(msg));
  return msg;
}

Result<control::ChunkDescriptor> ParseChunkDescriptor(const Message& msg) {
  KVWIRE_RETURN_ERROR_IF(msg.kind != MessageKind::kData, kCorrupt, "expected a data message");
  return ParseChunkDescriptor(msg.meta, uint64_t{msg.payload.size()} + msg.landed.size());
}

Result<control::ChunkDescriptor> ParseChunkDescriptor(std::span<const uint8_t> meta,
                                                      uint64_t payload_bytes) {
  KVWIRE_RETURN_ERROR_IF(meta.size() > kMaxMetaBytes, kResourceExhausted, "descriptor too large");
  control::ChunkDescriptor d;
  KVWIRE_RETURN_ERROR_IF(!d.ParseFromArray(meta.data(), static_cast<int>(meta.size())), kCorrupt,
                         "chunk descriptor is not a valid protobuf");
  KVWIRE_RETURN_IF_ERROR(CheckRequestId(d.request_id()));
  CHECK_FIELD(d.seq() < kMaxChunkSeq, "chunk seq out of range");
  CHECK_FIELD(d.layer() < kMaxLayers, "chunk layer out of range");
  CHECK_FIELD(d.kind() <= 1, "chunk kind out of range");
  CHECK_FIELD(
      d.tokens() >= 1 && d.tokens() <= kMaxTokens && d.token_begin() <= kMaxTokens - d.tokens(),
      "chunk token range out of range");
  CHECK_FIELD(d.level() < kMaxLevels, "chunk level out of range");
  CHECK_FIELD(d.payload_bytes() == payload_bytes,
              "chunk descriptor says " + std::to_string(d.payload_bytes()) +
                  " payload bytes, frame has " + std::to_string(payload_bytes));
  return d;
}

Result<Message> MakeControlMessage(const Control& msg) {
  KVWIRE_RETURN_IF_ERROR(ValidateControl(msg).WithContext("refusing to send"));
  Message m;
  m.kind = MessageKind::kControl;
  m.meta.resize(msg.ByteSizeLong());
  KVWIRE_RETURN_ERROR_IF(m.meta.size() > kMaxControlMessageBytes, kResourceExhausted,
                         "control message too large");
  KVWIRE_RETURN_ERROR_IF(!msg.SerializeToArray(m.meta.data(), static_cast<int>(m.meta.size())),
                         kInternal, "control serialization failed");
  return m;
}

Result<Message> MakeDataMessage(const control::ChunkDescriptor& desc, std::vector<uint8_t> payload,
                                std::span<const uint8_t> borrowed) {
  Message m;
  m.kind = MessageKind::kData;
  m.meta.resize(desc.ByteSizeLong());
  KVWIRE_RETURN_ERROR_IF(!desc.SerializeToArray(m.meta.data(), static_cast<int>(m.meta.size())),
                         kInternal, "descriptor serialization failed");
  m.payload = std::move(payload);
  m.borrowed = borrowed;
  KVWIRE_RETURN_ERROR_IF(
      m.bytes() > kMaxDataMessageBytes, kResourceExhausted,
      "chunk of " + std::to_string(m.bytes()) + " bytes exceeds the data message bound");
  return m;
}

Control MakeCapabilities(std::string_view backend, const std::vector<std::string>& profile_ids,
                         uint64_t max_inflight_bytes) {
  Control c;
  auto* caps = c.mutable_capabilities();
  caps->add_backends(std::string(backend));
  for (const CodecFamily& f : ListCodecFamilies()) {
    if (caps->codecs_size() < 256 && f.pattern.size() <= kMaxCodecSpec) caps->add_codecs(f.pattern);
  }
  for (const std::string& id : profile_ids) {
    if (caps->profile_ids_size() < 256 && id.size() <= kMaxProfileId) caps->add_profile_ids(id);
  }
  caps->set_max_inflight_bytes(max_inflight_bytes);
  return c;
}

Result<std::string> CodecFamilyOf(std::string_view spec, const Profile* profile) {
  std::string name;
  CodecOptions options;
  KVWIRE_RETURN_IF_ERROR(ParseCodecSpec(spec, &name, &options));
  for (const CodecFamily& f : ListCodecFamilies()) {
    if (f.owns) {
      if (f.owns(name)) return f.pattern;
      continue;
    }
    auto made = f.make(name, options, profile);
    if (made.ok() || made.status().code() != StatusCode::kNotFound) return f.pattern;
  }
  return Status(StatusCode::kNotFound, "no codec family makes '" + std::string(spec) + "'");
}

std::string ControlName(const Control& msg) {
  if (msg.body_case() == Control::BODY_NOT_SET) return "(empty)";
  const auto* field = Control::descriptor()->FindFieldByNumber(msg.body_case());
  return field ? field->name() : "(unknown)";
}

Control MakeError(uint64_t request_id, const Status& status) {
  Control c;
  auto* e = c.mutable_error();
  e->set_request_id(request_id);
  e->set_status_code(static_cast<uint32_t>(status.code()));
  std::string text = status.message().substr(0, kMaxMessage);
  for (char& c : text)
    if (c < 0x20 || c > 0x7e) c = '?';
  e->set_message(std::move(text));
  return c;
}

Status ErrorToStatus(const control::Error& error) {
  StatusCode code =
      error.status_code() <= uint32_t(StatusCode::kInternal) && error.status_code() != 0
          ? static_cast<StatusCode>(error.status_code())
          : StatusCode::kInternal;
  return Status(code, "peer: " + error.message());
}

}  // namespace kvwire::transport
