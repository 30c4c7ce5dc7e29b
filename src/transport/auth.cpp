#include "transport/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>

#include "transport/backends.h"
#include "transport/control.h"

namespace kvwire::transport {
namespace {

using Clock = std::chrono::steady_clock;

std::span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

Status SendControl(Connection& conn, const control::Control& c) {
  KVWIRE_ASSIGN_OR_RETURN(Message m, MakeControlMessage(c));
  return conn.Send(std::move(m));
}

Result<control::Control> ReceiveControl(Connection& conn, Clock::time_point deadline,
                                        control::Control::BodyCase expected) {
  KVWIRE_ASSIGN_OR_RETURN(Message m, conn.Receive(RemainingMs(deadline)));
  KVWIRE_RETURN_ERROR_IF(m.kind != MessageKind::kControl, kUnauthenticated,
                         "data message before authentication");
  KVWIRE_ASSIGN_OR_RETURN(control::Control c, ParseControl(m.meta));
  if (c.body_case() == control::Control::kError) return ErrorToStatus(c.error());
  KVWIRE_RETURN_ERROR_IF(c.body_case() != expected, kUnauthenticated,
                         "unexpected " + ControlName(c) + " during the handshake");
  return c;
}

// The second MAC input: the other side's nonce, then the TLS channel binding (empty without TLS).
std::vector<uint8_t> Bound(std::span<const uint8_t> nonce, std::span<const uint8_t> binding) {
  std::vector<uint8_t> out(nonce.begin(), nonce.end());
  out.insert(out.end(), binding.begin(), binding.end());
  return out;
}

}  // namespace

std::vector<uint8_t> HmacSha256(std::span<const uint8_t> key, std::string_view label,
                                std::span<const uint8_t> a, std::span<const uint8_t> b) {
  std::vector<uint8_t> msg;
  msg.reserve(label.size() + a.size() + b.size());
  msg.insert(msg.end(), label.begin(), label.end());
  msg.insert(msg.end(), a.begin(), a.end());
  msg.insert(msg.end(), b.begin(), b.end());
  std::vector<uint8_t> mac(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  static const uint8_t kEmpty = 0;
  HMAC(EVP_sha256(), key.empty() ? &kEmpty : key.data(), static_cast<int>(key.size()), msg.data(),
       msg.size(), mac.data(), &len);
  mac.resize(len);
  return mac;
}

bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.size() != b.size() || a.empty()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Result<std::vector<uint8_t>> RandomBytes(size_t n) {
  std::vector<uint8_t> out(n);
  KVWIRE_RETURN_ERROR_IF(RAND_bytes(out.data(), static_cast<int>(n)) != 1, kInternal,
                         "OpenSSL RAND_bytes failed");
  return out;
}

Result<std::vector<uint8_t>> ParseKey(std::span<const uint8_t> contents) {
  std::string hex;
  bool all_hex = !contents.empty();
  for (uint8_t c : contents) {
    if (std::isspace(c)) continue;
    if (!std::isxdigit(c)) {
      all_hex = false;
      break;
    }
    hex.push_back(static_cast<char>(c));
  }
  if (all_hex && hex.size() >= 2 * 32 && hex.size() % 2 == 0) {
    std::vector<uint8_t> key(hex.size() / 2);
    for (size_t i = 0; i < key.size(); ++i)
      key[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    return key;
  }
  KVWIRE_RETURN_ERROR_IF(contents.size() < kMinKeyBytes, kInvalidArgument,
                         "key shorter than " + std::to_string(kMinKeyBytes) + " bytes");
  return std::vector<uint8_t>(contents.begin(), contents.end());
}

Status ValidateKeyOptions(const TransportOptions& options) {
  if (options.key.empty()) {
    KVWIRE_RETURN_ERROR_IF(!options.allow_unauthenticated, kInvalidArgument,
                           "no pre-shared key configured (use a key file, or allow "
                           "unauthenticated peers explicitly)");
    return Status::Ok();
  }
  KVWIRE_RETURN_ERROR_IF(options.key.size() < kMinKeyBytes, kInvalidArgument,
                         "pre-shared key shorter than " + std::to_string(kMinKeyBytes) + " bytes");
  return Status::Ok();
}

Status ClientHandshake(Connection& conn, const TransportOptions& options, std::string* peer_name,
                       std::span<const uint8_t> channel_binding) {
  KVWIRE_RETURN_IF_ERROR(ValidateKeyOptions(options));
  const auto deadline = Clock::now() + std::chrono::milliseconds(options.handshake_timeout_ms);
  KVWIRE_ASSIGN_OR_RETURN(std::vector<uint8_t> nc, RandomBytes(kNonceBytes));
  control::Control hello;
  hello.mutable_hello()->set_protocol_version(kProtocolVersion);
  hello.mutable_hello()->set_node_name(options.node_name.substr(0, 256));
  hello.mutable_hello()->set_client_nonce(nc.data(), nc.size());
  hello.mutable_hello()->set_want_auth(!options.key.empty());
  KVWIRE_RETURN_IF_ERROR(SendControl(conn, hello));

  KVWIRE_ASSIGN_OR_RETURN(control::Control ch,
                          ReceiveControl(conn, deadline, control::Control::kChallenge));
  const auto& c = ch.challenge();
  KVWIRE_RETURN_ERROR_IF(c.protocol_version() != kProtocolVersion, kVersionMismatch,
                         "server speaks protocol " + std::to_string(c.protocol_version()) +
                             ", this build " + std::to_string(kProtocolVersion));
  std::vector<uint8_t> proof;
  if (options.key.empty()) {
    KVWIRE_RETURN_ERROR_IF(!c.server_mac().empty(), kUnauthenticated,
                           "server requires a pre-shared key and none is configured");
  } else {
    KVWIRE_RETURN_ERROR_IF(c.server_mac().empty(), kUnauthenticated,
                           "server did not authenticate itself (it runs without a key)");
    auto expect = HmacSha256(options.key, "kvwire-server", nc,
                             Bound(AsBytes(c.server_nonce()), channel_binding));
    KVWIRE_RETURN_ERROR_IF(!ConstantTimeEqual(expect, AsBytes(c.server_mac())), kUnauthenticated,
                           channel_binding.empty()
                               ? "server failed authentication (wrong key?)"
                               : "server failed authentication (wrong key, or a TLS session "
                                 "that is not the server's: a relay in between?)");
    proof = HmacSha256(options.key, "kvwire-client", AsBytes(c.server_nonce()),
                       Bound(nc, channel_binding));
  }
  control::Control p;
  p.mutable_auth_proof()->set_client_mac(proof.data(), proof.size());
  KVWIRE_RETURN_IF_ERROR(SendControl(conn, p));
  KVWIRE_ASSIGN_OR_RETURN(control::Control ok,
                          ReceiveControl(conn, deadline, control::Control::kAuthOk));
  (void)ok;
  *peer_name = c.node_name();
  return Status::Ok();
}

Status ServerHandshake(Connection& conn, const TransportOptions& options, std::string* peer_name,
                       const std::function<void(const std::string& peer)>& verified,
                       std::span<const uint8_t> channel_binding) {
  KVWIRE_RETURN_IF_ERROR(ValidateKeyOptions(options));
  const auto deadline = Clock::now() + std::chrono::milliseconds(options.handshake_timeout_ms);
  auto refuse = [&](Status why) {
    // Tell the peer only that it was refused; the reason stays in our log.
    (void)SendControl(conn, MakeError(0, Status(why.code(), "handshake refused")));
    return why;
  };
  auto h = ReceiveControl(conn, deadline, control::Control::kHello);
  if (!h.ok()) return refuse(h.status());
  const auto& hello = h->hello();
  if (hello.protocol_version() != kProtocolVersion) {
    return refuse(Status(StatusCode::kVersionMismatch,
                         "client speaks protocol " + std::to_string(hello.protocol_version())));
  }
  if (hello.want_auth() == options.key.empty()) {
    return refuse(Status(StatusCode::kUnauthenticated,
                         options.key.empty() ? "client wants authentication, server has no key"
                                             : "client did not offer authentication"));
  }
  KVWIRE_ASSIGN_OR_RETURN(std::vector<uint8_t> ns, RandomBytes(kNonceBytes));
  const auto nc = AsBytes(hello.client_nonce());
  control::Control ch;
  ch.mutable_challenge()->set_protocol_version(kProtocolVersion);
  ch.mutable_challenge()->set_node_name(options.node_name.substr(0, 256));
  ch.mutable_challenge()->set_server_nonce(ns.data(), ns.size());
  if (!options.key.empty()) {
    auto mac = HmacSha256(options.key, "kvwire-server", nc, Bound(ns, channel_binding));
    ch.mutable_challenge()->set_server_mac(mac.data(), mac.size());
  }
  KVWIRE_RETURN_IF_ERROR(SendControl(conn, ch));
  auto p = ReceiveControl(conn, deadline, control::Control::kAuthProof);
  if (!p.ok()) return refuse(p.status());
  if (!options.key.empty()) {
    auto expect = HmacSha256(options.key, "kvwire-client", ns, Bound(nc, channel_binding));
    if (!ConstantTimeEqual(expect, AsBytes(p->auth_proof().client_mac()))) {
      return refuse(Status(StatusCode::kUnauthenticated,
                           "peer '" + hello.node_name() + "' failed authentication (wrong key)"));
    }
  }
  *peer_name = hello.node_name();
  if (verified) verified(*peer_name);
  control::Control ok;
  ok.mutable_auth_ok();
  KVWIRE_RETURN_IF_ERROR(SendControl(conn, ok));
  return Status::Ok();
}

}  // namespace kvwire::transport

namespace kvwire {

Result<std::vector<uint8_t>> LoadKeyFile(const std::string& path) {
  struct stat st {};
  KVWIRE_RETURN_ERROR_IF(::stat(path.c_str(), &st) != 0, kNotFound,
                         "key file " + path + " not found");
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    std::cerr << "kvwire: warning: key file " << path
              << " is accessible by group or others (chmod 600 it)\n";
  }
  KVWIRE_RETURN_ERROR_IF(st.st_size > (1 << 16), kInvalidArgument,
                         "key file " + path + " is too large");
  std::ifstream in(path, std::ios::binary);
  KVWIRE_RETURN_ERROR_IF(!in, kIoError, "cannot read key file " + path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  auto key = transport::ParseKey(bytes);
  if (!key.ok()) return key.status().WithContext("key file " + path);
  return key;
}

}  // namespace kvwire
