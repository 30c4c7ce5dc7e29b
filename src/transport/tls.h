// TLS for the tcp backend (TransportOptions::tls): a TLS 1.3 session over a connected socket,
// driven by OpenSSL on the non-blocking file descriptor.
//
// A tcp connection reads on one thread and writes on another. OpenSSL does not allow two threads
// in one SSL object at once, so every SSL call runs under the session's mutex, and neither side
// holds it while it waits for the socket (poll): a reader blocked on an idle peer never stalls a
// writer. Shutting the socket down (what the connection does to fail or close) wakes both.
// The socket is written with MSG_NOSIGNAL, so a vanished peer is an error, not a SIGPIPE.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kvwire/status.h"
#include "kvwire/transport.h"

struct ssl_st;
struct ssl_ctx_st;

namespace kvwire::transport {

/// One OpenSSL context: certificates, CA and verification settings of one end.
class TlsContext {
 public:
  /// Listening side: cert_file and key_file are required; with a ca_file, client certificates
  /// are required and verified.
  static Result<std::shared_ptr<TlsContext>> ForServer(const TlsOptions& tls);
  /// Connecting side: with a ca_file the server's certificate and name are verified; without one,
  /// `have_key` must be true (the pre-shared key's channel binding authenticates the server).
  static Result<std::shared_ptr<TlsContext>> ForClient(const TlsOptions& tls, bool have_key);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  ssl_ctx_st* get() const { return ctx_; }
  bool verifies_peer() const { return verifies_peer_; }
  const std::string& server_name() const { return server_name_; }

 private:
  TlsContext() = default;
  ssl_ctx_st* ctx_ = nullptr;
  bool verifies_peer_ = false;
  std::string server_name_;
};

/// A TLS session on one connected socket. Read and Write may run on two threads at once.
class TlsSession {
 public:
  /// Client handshake on `fd` within timeout_ms; `host` is the name or IP address the server's
  /// certificate must carry when the context verifies it (TlsOptions::server_name wins).
  static Result<std::unique_ptr<TlsSession>> Connect(std::shared_ptr<TlsContext> ctx, int fd,
                                                     const std::string& host, int timeout_ms);
  /// Server handshake on `fd` within timeout_ms.
  static Result<std::unique_ptr<TlsSession>> Accept(std::shared_ptr<TlsContext> ctx, int fd,
                                                    int timeout_ms);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  /// Exactly n bytes, or an error (kIoError "peer closed the connection" at a clean end).
  Status ReadExactly(uint8_t* out, size_t n);
  /// All n bytes, or an error.
  Status WriteAll(const uint8_t* data, size_t n);

  /// 32 bytes of keying material exported from this session (RFC 8446 section 7.5): equal on
  /// both ends of one TLS session, different for any other.
  const std::vector<uint8_t>& channel_binding() const { return binding_; }

 private:
  TlsSession(std::shared_ptr<TlsContext> ctx, int fd) : ctx_(std::move(ctx)), fd_(fd) {}
  Status Init();  // non-blocking socket, SSL object, socket BIO
  Status Handshake(bool client, int timeout_ms);
  // Polls the socket for what an SSL call wanted (SSL_ERROR_WANT_READ: readable, else
  // writable), up to timeout_ms (< 0: no limit).
  void WaitForSocket(int ssl_error, int timeout_ms) const;
  // The status of a failed SSL call (`ssl_error` from SSL_get_error) during `during`.
  Status Failure(int ssl_error, const std::string& during);

  std::shared_ptr<TlsContext> ctx_;
  int fd_;
  ssl_st* ssl_ = nullptr;
  void* state_ = nullptr;  // the socket BIO's state (tls.cpp)
  std::mutex mu_;  // every call into ssl_ after the handshake
  std::vector<uint8_t> binding_;
};

/// kUnsupported when `options` ask for TLS on a backend that has none (`backend` names it).
Status RefuseTls(const TransportOptions& options, const std::string& backend);

}  // namespace kvwire::transport
