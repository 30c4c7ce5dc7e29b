// The tcp backend's connection and acceptor, also used by the ucx backend for its
// authenticated bootstrap/control connection. Blocking Asio I/O on two threads per connection
// (one writer draining the send queue, one reader filling the receive queue; a small message
// with nothing queued ahead of it is written by the thread that sends it); both queues are
// bounded, so a slow peer back-pressures the sender through TCP flow control. With
// TransportOptions::tls the TLS handshake runs as the socket is dialled or accepted, before the
// connection exists, and the two threads read and write through the TLS session (tls.h).
#pragma once

#include <asio.hpp>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kvwire/transport.h"
#include "transport/buffer_pool.h"
#include "transport/message_queue.h"
#include "transport/tls.h"

namespace kvwire::transport {

/// Splits "host:port" / "[v6]:port".
Status ParseHostPort(const std::string& address, std::string* host, uint16_t* port);

class TcpConnection final : public Connection {
 public:
  /// Opens a TCP connection, and its TLS session when options.tls is enabled (no kvwire
  /// handshake yet: call ClientHandshake, then MarkAuthenticated).
  static Result<std::unique_ptr<TcpConnection>> Dial(const TransportOptions& options);
  /// `pool`: the buffer pool to receive into and hand out from, shared with other connections
  /// (those one acceptor accepted); null: a pool of this connection's own.
  TcpConnection(std::shared_ptr<asio::io_context> ctx, asio::ip::tcp::socket socket,
                const TransportOptions& options, std::unique_ptr<TlsSession> tls = nullptr,
                std::shared_ptr<BufferPool> pool = nullptr);
  ~TcpConnection() override;

  Status Send(Message msg) override;
  Result<Message> Receive(int timeout_ms) override;
  void Close() override;
  const std::string& peer_name() const override { return peer_name_; }
  void Recycle(Message&& msg) override { pool_->Put(std::move(msg.payload)); }
  std::vector<uint8_t> TakeBuffer(size_t bytes) override {
    send_pooling_ = true;
    return pool_->Take(bytes);
  }
  /// A message's borrowed bytes are written by Send itself, after what is queued ahead of it.
  bool WritesBorrowed() const override { return true; }
  /// Data payloads go where `fn` says: the reading thread reads the first kLandingHeadBytes,
  /// asks, and reads the rest there (TLS too).
  bool SetLanding(LandingFn fn) override;
  /// The pool this connection uses (the ucx backend's connection shares its bootstrap's).
  const std::shared_ptr<BufferPool>& pool() const { return pool_; }

  /// Lifts the pre-authentication limits (small control frames only).
  void MarkAuthenticated(std::string peer_name);
  std::string remote_address() const { return remote_; }
  /// The TLS session's channel binding (TlsSession::channel_binding); empty without TLS.
  std::vector<uint8_t> channel_binding() const {
    return tls_ ? tls_->channel_binding() : std::vector<uint8_t>{};
  }

 private:
  void ReadLoop();
  // Reads a data message's meta and payload (its prefix already read) into `m`: the payload
  // straight into what the landing function names, or into a pooled buffer.
  Status ReadLanding(const LandingFn& land, uint32_t payload_bytes, Message& m);
  void WriteLoop();
  void Fail(Status why);
  Status ReadBytes(asio::mutable_buffer b);
  // Writes `msg` on the caller's thread (`lock` holds write_mu_, nothing is left unwritten
  // ahead of it); a failed write fails the connection.
  Status WriteInline(std::unique_lock<std::mutex> lock, Message& msg);
  // Writes one frame (write_mu_ held): its prefix into prefix_, then WriteFrame.
  Status WriteLocked(const Message& m);
  // Writes one frame; `prefix` holds its prefix and is scratch (TLS appends the meta).
  Status WriteFrame(std::vector<uint8_t>& prefix, const Message& m);

  std::shared_ptr<asio::io_context> ctx_;
  asio::ip::tcp::socket socket_;
  std::unique_ptr<TlsSession> tls_;
  std::string remote_;
  std::string peer_name_;
  MessageQueue send_queue_, recv_queue_;
  // Received payloads; sent ones too once TakeBuffer was used. Shared by the connections of one
  // acceptor, so that a process serving one request after another keeps its buffers warm.
  std::shared_ptr<BufferPool> pool_;
  std::atomic<bool> send_pooling_{false};
  std::atomic<bool> authenticated_{false};
  std::atomic<bool> closing_{false};
  std::mutex landing_mu_;
  std::shared_ptr<const LandingFn> landing_;  // under landing_mu_; null: none
  std::mutex close_mu_;
  // Frames are written under write_mu_, by the writer thread or inline by Send;
  // unwritten_ counts the messages queued and not yet written. A message with borrowed bytes
  // is always written inline, once unwritten_ is zero (drained_cv_, under write_mu_).
  static constexpr uint64_t kInlineWriteBytes = 256 << 10;
  std::mutex write_mu_;
  std::atomic<uint64_t> unwritten_{0};
  std::condition_variable drained_cv_;
  std::vector<uint8_t> prefix_;  // the frame prefix being written, under write_mu_
  std::mutex writer_mu_;
  std::condition_variable writer_cv_;
  bool writer_done_ = false;
  std::thread reader_, writer_;
};

class TcpAcceptor {
 public:
  /// Binds and listens on options.address (port 0: ephemeral).
  static Result<std::unique_ptr<TcpAcceptor>> Bind(const TransportOptions& options);
  ~TcpAcceptor();
  /// Next TCP connection, not yet authenticated; with TLS, the next whose TLS handshake succeeds
  /// (the others are logged and dropped).
  Result<std::unique_ptr<TcpConnection>> AcceptRaw(int timeout_ms);
  std::string address() const { return address_; }
  void Close();

 private:
  TcpAcceptor() = default;
  Result<asio::ip::tcp::socket> AcceptSocket(int timeout_ms);
  std::shared_ptr<asio::io_context> ctx_;
  std::shared_ptr<TlsContext> tls_;
  std::shared_ptr<BufferPool> pool_;  // of every connection it accepts
  std::unique_ptr<asio::ip::tcp::acceptor> acceptor_;
  TransportOptions options_;
  std::string address_;
  std::atomic<bool> closed_{false};
};

}  // namespace kvwire::transport
