// Mutual pre-shared-key authentication (docs/PROTOCOL.md, "Handshake"):
//
//   C -> S  Hello{version, client_nonce Nc}
//   S -> C  Challenge{version, server_nonce Ns, server_mac = HMAC(K, "kvwire-server"|Nc|Ns)}
//   C -> S  AuthProof{client_mac = HMAC(K, "kvwire-client"|Ns|Nc)}   (after checking server_mac)
//   S -> C  AuthOk                                                  (after checking client_mac)
//
// HMAC-SHA256; nonces are 32 bytes from the OpenSSL CSPRNG; MACs are compared in constant time.
// The labels make a MAC of one direction useless in the other, and fresh nonces on both sides
// make a recorded exchange useless later.
//
// Inside TLS (the tcp backend's TransportOptions::tls), both MACs also cover the TLS session's
// exported keying material B (TlsSession::channel_binding): server_mac = HMAC(K,
// "kvwire-server"|Nc|Ns|B), client_mac = HMAC(K, "kvwire-client"|Ns|Nc|B). A relay that ends TLS
// on each side sees two sessions with different B and cannot pass the exchange on.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kvwire/status.h"
#include "kvwire/transport.h"

namespace kvwire::transport {

inline constexpr size_t kMinKeyBytes = 16;

/// HMAC-SHA256(key, label | a | b).
std::vector<uint8_t> HmacSha256(std::span<const uint8_t> key, std::string_view label,
                                std::span<const uint8_t> a, std::span<const uint8_t> b);

/// Equal length and contents, in time independent of the contents.
bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b);

/// `n` bytes from the OpenSSL CSPRNG.
Result<std::vector<uint8_t>> RandomBytes(size_t n);

/// Key file contents -> key: hex (even number of hex digits, >= 32 bytes once decoded, whitespace
/// ignored) or raw bytes (>= kMinKeyBytes).
Result<std::vector<uint8_t>> ParseKey(std::span<const uint8_t> contents);

/// Checks a configured key (empty only with allow_unauthenticated).
Status ValidateKeyOptions(const TransportOptions& options);

/// Runs the client side of the handshake on a fresh connection; sets `peer_name` on success.
/// `channel_binding`: B above when the connection runs in TLS, else empty.
Status ClientHandshake(Connection& conn, const TransportOptions& options, std::string* peer_name,
                       std::span<const uint8_t> channel_binding = {});
/// Runs the server side; sets `peer_name` on success. The failure reason is in the Status (the
/// caller logs it); the peer gets an Error message without details that would help guessing.
/// `verified` (when given) runs once the peer is verified and before AuthOk is sent: a
/// connection that drops data frames from unauthenticated peers must be marked authenticated
/// there, since the client may send its first data frame as soon as AuthOk arrives.
Status ServerHandshake(Connection& conn, const TransportOptions& options, std::string* peer_name,
                       const std::function<void(const std::string& peer)>& verified = {},
                       std::span<const uint8_t> channel_binding = {});

}  // namespace kvwire::transport
