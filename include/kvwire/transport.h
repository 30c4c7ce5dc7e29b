// kvwire/transport.h — one abstract transport that moves framed messages between two peers.
//
// A backend is chosen by name ("inproc", "tcp", "ucx") from a factory, NIXL-style: every backend
// answers the same capability queries, and an optional operation a backend lacks returns
// StatusCode::kUnsupported instead of being special-cased by callers.
//
// A connection carries two kinds of messages, in order, exactly once, or fails:
//   - control: `meta` is one serialized kvwire.control.Control (proto/kvwire_control.proto),
//     at most kMaxControlMessageBytes;
//   - data:    `meta` is one serialized kvwire.control.ChunkDescriptor and `payload` one chunk
//     frame (docs/FORMAT.md), at most kMaxDataMessageBytes in all.
// The backend enforces those bounds on what it receives before it allocates anything; the
// contents of `meta` are validated by the session layer (docs/PROTOCOL.md).
//
// Connection set-up authenticates both ends with a pre-shared key (HMAC-SHA256
// challenge-response, docs/PROTOCOL.md) before any other message is accepted; a peer that
// fails is refused and logged. The tcp backend can run the connection inside TLS (TlsOptions),
// which adds confidentiality to the authentication. The ucx backend bootstraps over an
// authenticated TCP control connection, on which the UCP worker addresses are exchanged.
//
// Buffer reuse (optional, for throughput): a caller done with a received message hands it back
// with Connection::Recycle, and a sender asks the connection for payload buffers with
// Connection::TakeBuffer. The tcp and ucx backends then receive into, and hand out, buffers they
// already hold instead of allocating, zero-filling and page-faulting a fresh one per message:
// at most TransportOptions::max_pooled_bytes per dialled connection, and as much for all the
// connections one Listener accepted together (they share one pool, so a receiver that takes a
// connection per request keeps its buffers warm from one to the next). Callers that use neither
// are unaffected.
//
// Thread-safety: a Connection may be used by one sending thread and one receiving thread at the
// same time (Send and Receive are independent); Close may be called from any thread and wakes
// both; Recycle and TakeBuffer may be called from any thread. Listener::Accept is for one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvwire/status.h"

namespace kvwire {

inline constexpr uint32_t kMaxControlMessageBytes = 1u << 20;  // 1 MiB
inline constexpr uint32_t kMaxDataMessageBytes = 64u << 20;    // 64 MiB, meta + payload
inline constexpr uint32_t kMaxMetaBytes = 64u << 10;           // data-frame meta bound

enum class MessageKind : uint8_t { kControl = 1, kData = 2 };

/// One message. Owns its bytes, except `borrowed`.
struct Message {
  MessageKind kind = MessageKind::kControl;
  std::vector<uint8_t> meta;
  std::vector<uint8_t> payload;  // empty for control messages
  /// Sending only: bytes that follow `payload` on the wire, lent by the caller (say, a chunk of
  /// the KV cache itself, so that it is not copied into `payload` first). They must stay valid
  /// and unchanged until Send returns, and no longer: a connection that writes them out before
  /// Send returns (Connection::WritesBorrowed) does so, any other copies them onto `payload`
  /// first. The receiver sees one payload. Always empty in a received message.
  /// Except with `sent` (below).
  std::span<const uint8_t> borrowed;
  /// Sending only, with `borrowed`, on a connection whose LendsUntilSent() is true (others
  /// ignore it): the bytes must then stay valid and unchanged until the connection calls
  /// `sent`, which it does exactly once when it reads them no more (the message sent, failed,
  /// or dropped by a close), on any thread, before or after Send returns. It must not block
  /// on the connection (nor wait for a thread that closes it).
  std::function<void()> sent;
  /// Receiving only: the payload's bytes after `payload`, which the connection read straight
  /// into the memory a landing function named (Connection::SetLanding). Always empty in a
  /// message to send.
  std::span<const uint8_t> landed;

  size_t bytes() const { return meta.size() + payload.size() + borrowed.size() + landed.size(); }
};

/// The first bytes of a data message's payload that a landing function sees (a chunk frame's
/// header, docs/FORMAT.md).
inline constexpr size_t kLandingHeadBytes = 40;

/// Where the rest of a data message's payload goes (Connection::SetLanding).
struct Landing {
  /// Exactly the payload's bytes after its first kLandingHeadBytes; empty (or any other size):
  /// the payload is received into the message as usual.
  std::span<uint8_t> bytes;
  /// Called once, when the connection is done writing `bytes` (read whole, or the read failed)
  /// or has declined them. May be empty.
  std::function<void()> done;
};

/// Given a data message's meta, the first kLandingHeadBytes of its payload and the payload's
/// total size, says where the payload's remaining bytes land. Runs on the connection's receiving
/// thread, before the message is handed to Receive; it must not block on that connection.
using LandingFn = std::function<Landing(std::span<const uint8_t> meta,
                                        std::span<const uint8_t> head, uint64_t payload_bytes)>;

/// What a backend can do (answers do not change after creation).
struct TransportCaps {
  bool remote = false;          // reaches other processes / hosts
  bool rendezvous = false;      // large payloads move by rendezvous (receiver pulls)
  // Sends from the caller's buffer with no copy at all (MSG_ZEROCOPY, RDMA): none does yet. tcp
  // writes a message's borrowed bytes from the caller's memory (Connection::WritesBorrowed),
  // and ucx sends them from there after Send returned (Connection::LendsUntilSent); the kernel
  // or UCX's copy-based protocol still copies them once.
  bool zero_copy_send = false;
  bool gpu_memory = false;      // accepts device buffers
  bool tls = false;             // can encrypt the stream
  uint64_t max_message_bytes = kMaxDataMessageBytes;
};

/// TLS on a tcp connection (OpenSSL, TLS 1.3 only). Both ends must enable it; the pre-shared-key
/// handshake then runs inside TLS and is bound to that TLS session (its keying-material exporter
/// enters both HMACs), so a man in the middle who terminates TLS on each side cannot relay it.
struct TlsOptions {
  bool enabled = false;
  /// PEM certificate chain and private key. Required when listening; when connecting, they are
  /// presented as a client certificate (needed when the listener has a ca_file).
  std::string cert_file, key_file;
  /// PEM CA certificates. Connecting: verify the server's certificate against them, and its name
  /// (server_name, else the host of `address`; an IP address is matched against IP SANs). Without
  /// a ca_file the connecting side needs a pre-shared key, whose channel binding then
  /// authenticates the server. Listening: require and verify a client certificate.
  std::string ca_file;
  std::string server_name;
};

/// Options of Listen/Connect. Fields may be added; defaults stay valid.
struct TransportOptions {
  /// "HOST:PORT" for tcp/ucx (port 0 = ephemeral when listening), any name for inproc.
  std::string address;
  /// Pre-shared key (raw bytes, >= 16). Empty: no authentication, allowed only when
  /// `allow_unauthenticated` is set on both ends (tests, trusted loopback).
  std::vector<uint8_t> key;
  bool allow_unauthenticated = false;
  std::string node_name = "kvwire";
  int connect_timeout_ms = 5000;
  int handshake_timeout_ms = 5000;
  /// Bytes a connection may hold in its send queue before Send blocks (back-pressure).
  uint64_t max_queued_bytes = 256ull << 20;
  /// Bytes of buffers a dialled connection, or all connections of one Listener together, keep
  /// for reuse (Recycle, TakeBuffer); 0: none kept.
  uint64_t max_pooled_bytes = 128ull << 20;
  /// ucx: while a send or receive is in flight, the progress thread polls the network for up
  /// to this many microseconds after the last event before it sleeps (0: sleep at once). Polling
  /// spends a core during transfers and saves the wake-ups (on a VM, a cross-CPU interrupt each);
  /// on loopback it raised goodput by up to 1.5x when it was added (`kvwire bench transport`
  /// runs the ucx backend with 500). Other backends ignore it.
  uint32_t busy_poll_us = 0;
  /// tcp only; the other backends refuse `tls.enabled` (kUnsupported).
  TlsOptions tls;
};

/// One authenticated, bidirectional, ordered message connection.
class Connection {
 public:
  virtual ~Connection() = default;

  /// Queues `msg` for sending. Blocks while more than max_queued_bytes are queued
  /// (back-pressure). Errors: kInvalidArgument (too large), kIoError/kCancelled (closed).
  virtual Status Send(Message msg) = 0;

  /// Next message from the peer. kTimeout after `timeout_ms` (< 0: wait forever) with nothing
  /// received, kCancelled once closed locally, kIoError when the peer went away, kCorrupt on a
  /// malformed frame (the connection is then closed).
  virtual Result<Message> Receive(int timeout_ms) = 0;

  /// Closes both directions; pending and later Send/Receive fail. Idempotent.
  virtual void Close() = 0;

  /// The peer's node name, as it announced it during the handshake.
  virtual const std::string& peer_name() const = 0;

  /// Optional: hands back a message that Receive returned, once the caller is done with it; its
  /// buffers are reused by later receives (and TakeBuffer) on this connection, or on any
  /// connection of the same Listener. The pool is bounded by max_pooled_bytes; what does not fit
  /// is freed. Default: frees the message.
  virtual void Recycle(Message&& msg) { Message done = std::move(msg); }

  /// Optional: a buffer of exactly `bytes` bytes for the payload of a message to Send on this
  /// connection. Contents unspecified (possibly bytes of an earlier message): the caller
  /// overwrites them. Once a caller has used it, the payloads of sent messages go back to the
  /// connection's pool when their send completes. Default: a new zero-filled buffer.
  virtual std::vector<uint8_t> TakeBuffer(size_t bytes) { return std::vector<uint8_t>(bytes); }

  /// True when Send writes a message's borrowed bytes out itself before it returns, so a caller
  /// gains by lending them instead of copying; false when Send would copy them (the default).
  virtual bool WritesBorrowed() const { return false; }

  /// True when Send sends a message's borrowed bytes from the caller's memory after it returned,
  /// if the message has a `sent` callback, which says when they are the caller's again (else
  /// Send copies them). False by default.
  virtual bool LendsUntilSent() const { return false; }

  /// Optional: from now on, data messages whose payload is longer than kLandingHeadBytes are
  /// offered to `fn`; where it names memory, the payload's first kLandingHeadBytes arrive in
  /// `payload` and the rest is read straight into that memory (`landed`), saving the receiver a
  /// copy. False (the default) when the backend cannot: messages arrive whole, as before.
  virtual bool SetLanding(LandingFn) { return false; }
};

/// Accepts connections on one address.
class Listener {
 public:
  virtual ~Listener() = default;
  /// Next authenticated connection; kTimeout after `timeout_ms` (< 0: wait forever). A peer
  /// that fails the handshake is logged and skipped (Accept keeps waiting).
  virtual Result<std::unique_ptr<Connection>> Accept(int timeout_ms) = 0;
  /// The address actually bound ("127.0.0.1:40123"; the inproc name).
  virtual std::string address() const = 0;
  /// Stops accepting and wakes Accept. Idempotent.
  virtual void Close() = 0;
};

/// A backend. Create one with CreateTransport.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::string_view name() const = 0;
  virtual TransportCaps caps() const = 0;
  virtual Result<std::unique_ptr<Listener>> Listen(const TransportOptions& options) = 0;
  virtual Result<std::unique_ptr<Connection>> Connect(const TransportOptions& options) = 0;
};

/// Backend by name: "inproc", "tcp", "ucx" (kUnsupported when built without UCX, kNotFound
/// for an unknown name).
Result<std::unique_ptr<Transport>> CreateTransport(std::string_view name);
/// Names of the backends this build provides.
std::vector<std::string> AvailableTransports();

/// Reads a pre-shared key file: 64+ hex characters (whitespace ignored) or >= 16 raw bytes.
/// Warns on stderr if the file is readable by group or others.
Result<std::vector<uint8_t>> LoadKeyFile(const std::string& path);

}  // namespace kvwire
