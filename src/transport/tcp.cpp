// tcp backend (Asio): frames of framing.h on one TCP connection per peer pair.
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <iostream>
#include <utility>

#include "transport/auth.h"
#include "transport/backends.h"
#include "transport/framing.h"
#include "transport/tcp_connection.h"

namespace kvwire::transport {
namespace {

constexpr uint32_t kPreAuthMaxFrame = 4096;

Status IoStatus(const std::string& what, const asio::error_code& ec) {
  if (ec == asio::error::eof || ec == asio::error::connection_reset ||
      ec == asio::error::broken_pipe)
    return Status(StatusCode::kIoError, what + ": peer closed the connection");
  return Status(StatusCode::kIoError, what + ": " + ec.message());
}

}  // namespace

Status ParseHostPort(const std::string& address, std::string* host, uint16_t* port) {
  size_t colon = address.rfind(':');
  KVWIRE_RETURN_ERROR_IF(colon == std::string::npos || colon + 1 == address.size(),
                         kInvalidArgument, "address '" + address + "' is not HOST:PORT");
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  const std::string p = address.substr(colon + 1);
  unsigned long v = 0;
  try {
    size_t used = 0;
    v = std::stoul(p, &used);
    KVWIRE_RETURN_ERROR_IF(used != p.size() || v > 65535, kInvalidArgument,
                           "bad port in '" + address + "'");
  } catch (const std::exception&) {
    return Status(StatusCode::kInvalidArgument, "bad port in '" + address + "'");
  }
  *host = h.empty() ? "0.0.0.0" : h;
  *port = static_cast<uint16_t>(v);
  return Status::Ok();
}

TcpConnection::TcpConnection(std::shared_ptr<asio::io_context> ctx, asio::ip::tcp::socket socket,
                             const TransportOptions& options, std::unique_ptr<TlsSession> tls,
                             std::shared_ptr<BufferPool> pool)
    : ctx_(std::move(ctx)),
      socket_(std::move(socket)),
      tls_(std::move(tls)),
      send_queue_(options.max_queued_bytes),
      recv_queue_(options.max_queued_bytes),
      pool_(pool ? std::move(pool) : std::make_shared<BufferPool>(options.max_pooled_bytes)) {
  asio::error_code ec;
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  auto ep = socket_.remote_endpoint(ec);
  remote_ = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
  reader_ = std::thread([this] { ReadLoop(); });
  writer_ = std::thread([this] { WriteLoop(); });
}

TcpConnection::~TcpConnection() { Close(); }

Result<std::unique_ptr<TcpConnection>> TcpConnection::Dial(const TransportOptions& options) {
  std::string host;
  uint16_t port = 0;
  KVWIRE_RETURN_IF_ERROR(ParseHostPort(options.address, &host, &port));
  std::shared_ptr<TlsContext> tls;
  if (options.tls.enabled) {
    KVWIRE_ASSIGN_OR_RETURN(tls, TlsContext::ForClient(options.tls, !options.key.empty()));
  }
  auto ctx = std::make_shared<asio::io_context>();
  asio::ip::tcp::socket socket(*ctx);
  try {
    asio::ip::tcp::resolver resolver(*ctx);
    auto endpoints = resolver.resolve(host, std::to_string(port));
    asio::error_code result = asio::error::would_block;
    asio::async_connect(
        socket, endpoints,
        [&](const asio::error_code& ec, const asio::ip::tcp::endpoint&) { result = ec; });
    ctx->run_for(std::chrono::milliseconds(options.connect_timeout_ms));
    if (result == asio::error::would_block) {
      socket.close();
      ctx->run();
      return Status(StatusCode::kTimeout, "connect to " + options.address + " timed out after " +
                                              std::to_string(options.connect_timeout_ms) + " ms");
    }
    if (result) return IoStatus("connect to " + options.address, result);
  } catch (const std::exception& e) {
    return Status(StatusCode::kIoError, "connect to " + options.address + ": " + e.what());
  }
  ctx->restart();
  std::unique_ptr<TlsSession> session;
  if (tls) {
    auto t = TlsSession::Connect(tls, socket.native_handle(), host, options.handshake_timeout_ms);
    if (!t.ok()) return t.status().WithContext("connect to " + options.address);
    session = std::move(*t);
  }
  return std::make_unique<TcpConnection>(ctx, std::move(socket), options, std::move(session));
}

void TcpConnection::MarkAuthenticated(std::string peer_name) {
  peer_name_ = std::move(peer_name);
  authenticated_ = true;
}

Status TcpConnection::Send(Message msg) {
  KVWIRE_RETURN_IF_ERROR(ValidateMessageBounds(msg));
  if (!msg.borrowed.empty()) {
    // Borrowed bytes (a chunk of the caller's KV cache) are the caller's again when Send
    // returns: written here, straight from its memory, once the messages queued ahead of this
    // one are out. The caller's thread blocks while the socket drains, as it would in the
    // queue's back-pressure wait; a peer that stops reading releases it when the connection
    // fails or is closed (the socket is shut down).
    std::unique_lock lock(write_mu_);
    while (unwritten_ != 0 && !send_queue_.closed()) {
      drained_cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
    return WriteInline(std::move(lock), msg);
  }
  // A small message with nothing ahead of it is written on the caller's thread: waking the
  // writer thread for it would cost two context switches, a large share of a compressed chunk's
  // or an ack's handling. Large frames (fp16 chunks) keep the writer thread, so that the caller
  // goes on while the socket drains. Order holds: a message is counted in unwritten_ from before
  // it is queued until the writer has written it, under write_mu_, so a caller that finds the
  // count at zero under that lock has nothing earlier left to write.
  if (msg.bytes() <= kInlineWriteBytes) {
    std::unique_lock lock(write_mu_, std::try_to_lock);
    if (lock.owns_lock() && unwritten_ == 0) return WriteInline(std::move(lock), msg);
  }
  ++unwritten_;
  Status s = send_queue_.Push(std::move(msg));
  if (!s.ok()) --unwritten_;
  return s;
}

Status TcpConnection::WriteInline(std::unique_lock<std::mutex> lock, Message& msg) {
  if (send_queue_.closed()) return send_queue_.Push(std::move(msg));  // the close reason
  if (Status s = WriteLocked(msg); !s.ok()) {
    lock.unlock();
    Fail(s);
    return s;
  }
  if (send_pooling_) pool_->Put(std::move(msg.payload));
  return Status::Ok();
}

Result<Message> TcpConnection::Receive(int timeout_ms) { return recv_queue_.Pop(timeout_ms); }

void TcpConnection::Fail(Status why) {
  recv_queue_.Close(why);
  send_queue_.Close(why);
  // Wakes the other thread's blocking read/write.
  ::shutdown(socket_.native_handle(), SHUT_RDWR);
}

Status TcpConnection::ReadBytes(asio::mutable_buffer b) {
  if (b.size() == 0) return Status::Ok();
  if (tls_) return tls_->ReadExactly(static_cast<uint8_t*>(b.data()), b.size());
  asio::error_code ec;
  asio::read(socket_, b, ec);
  return ec ? IoStatus("read", ec) : Status::Ok();
}

Status TcpConnection::WriteLocked(const Message& m) {
  prefix_.clear();
  AppendFramePrefix(m, &prefix_);
  return WriteFrame(prefix_, m);
}

Status TcpConnection::WriteFrame(std::vector<uint8_t>& prefix, const Message& m) {
  if (tls_) {
    // The prefix and the meta in one TLS record (when they fit), the payload after them. The
    // meta goes after the prefix in the prefix scratch, which WriteLocked clears.
    prefix.insert(prefix.end(), m.meta.begin(), m.meta.end());
    KVWIRE_RETURN_IF_ERROR(tls_->WriteAll(prefix.data(), prefix.size()));
    KVWIRE_RETURN_IF_ERROR(tls_->WriteAll(m.payload.data(), m.payload.size()));
    return tls_->WriteAll(m.borrowed.data(), m.borrowed.size());
  }
  std::array<asio::const_buffer, 4> bufs = {asio::buffer(prefix), asio::buffer(m.meta),
                                            asio::buffer(m.payload),
                                            asio::buffer(m.borrowed.data(), m.borrowed.size())};
  asio::error_code ec;
  asio::write(socket_, bufs, ec);
  return ec ? IoStatus("write", ec) : Status::Ok();
}

void TcpConnection::ReadLoop() {
  std::array<uint8_t, kFramePrefixBytes> prefix{};
  for (;;) {
    if (Status s = ReadBytes(asio::buffer(prefix)); !s.ok()) return Fail(s);
    auto p = ParseFramePrefix(prefix);
    if (!p.ok()) return Fail(p.status().WithContext("from " + remote_));
    if (!authenticated_ && (p->kind != MessageKind::kControl || p->meta_bytes > kPreAuthMaxFrame)) {
      return Fail(Status(StatusCode::kUnauthenticated,
                         "oversized or data frame from unauthenticated peer " + remote_));
    }
    Message m;
    m.kind = p->kind;
    m.meta.resize(p->meta_bytes);
    std::shared_ptr<const LandingFn> land;
    if (p->kind == MessageKind::kData && p->payload_bytes > kLandingHeadBytes) {
      std::lock_guard lock(landing_mu_);
      land = landing_;
    }
    if (land) {
      if (Status s = ReadLanding(*land, p->payload_bytes, m); !s.ok()) return Fail(s);
      if (!recv_queue_.Push(std::move(m)).ok()) return;
      continue;
    }
    m.payload = pool_->Take(p->payload_bytes);  // bounds checked by ParseFramePrefix
    if (tls_) {
      Status s = ReadBytes(asio::buffer(m.meta));
      if (s.ok()) s = ReadBytes(asio::buffer(m.payload));
      if (!s.ok()) return Fail(s);
    } else {
      std::array<asio::mutable_buffer, 2> bufs = {asio::buffer(m.meta), asio::buffer(m.payload)};
      asio::error_code ec;
      asio::read(socket_, bufs, ec);
      if (ec) return Fail(IoStatus("read", ec));
    }
    if (!recv_queue_.Push(std::move(m)).ok()) return;
  }
}

bool TcpConnection::SetLanding(LandingFn fn) {
  auto f = fn ? std::make_shared<const LandingFn>(std::move(fn)) : nullptr;
  std::lock_guard lock(landing_mu_);
  landing_ = std::move(f);
  return true;
}

Status TcpConnection::ReadLanding(const LandingFn& land, uint32_t payload_bytes, Message& m) {
  std::array<uint8_t, kLandingHeadBytes> head{};
  if (tls_) {
    KVWIRE_RETURN_IF_ERROR(ReadBytes(asio::buffer(m.meta)));
    KVWIRE_RETURN_IF_ERROR(ReadBytes(asio::buffer(head)));
  } else {  // the meta and the chunk header in one read
    std::array<asio::mutable_buffer, 2> bufs = {asio::buffer(m.meta), asio::buffer(head)};
    asio::error_code ec;
    asio::read(socket_, bufs, ec);
    if (ec) return IoStatus("read", ec);
  }
  Landing l = AskLanding(land, m.meta, head, payload_bytes);
  // `done` runs once, whatever happens to the read.
  struct Done {
    std::function<void()> f;
    ~Done() {
      if (f) f();
    }
  } done{std::move(l.done)};
  const size_t rest = payload_bytes - kLandingHeadBytes;
  if (!l.bytes.empty()) {
    KVWIRE_RETURN_IF_ERROR(ReadBytes(asio::buffer(l.bytes.data(), rest)));
    m.payload.assign(head.begin(), head.end());
    m.landed = l.bytes;
    return Status::Ok();
  }
  m.payload = pool_->Take(payload_bytes);
  std::memcpy(m.payload.data(), head.data(), head.size());
  return ReadBytes(asio::buffer(m.payload.data() + head.size(), rest));
}

void TcpConnection::WriteLoop() {
  for (;;) {
    auto m = send_queue_.Pop(-1);
    if (!m.ok()) break;  // closed and drained
    Status s;
    {
      std::lock_guard lock(write_mu_);
      s = WriteLocked(*m);
      if (--unwritten_ == 0) drained_cv_.notify_all();
    }
    if (!s.ok()) {
      Fail(s);
      break;
    }
    if (send_pooling_) pool_->Put(std::move(m->payload));
  }
  std::lock_guard lock(writer_mu_);
  writer_done_ = true;
  writer_cv_.notify_all();
}

void TcpConnection::Close() {
  std::lock_guard close_lock(close_mu_);
  if (!closing_.exchange(true)) {
    // Let queued messages go out first (a final RequestDone, an Error), bounded in time.
    send_queue_.Close(Status(StatusCode::kCancelled, "connection closed"));
    {
      std::unique_lock lock(writer_mu_);
      writer_cv_.wait_for(lock, std::chrono::seconds(2), [&] { return writer_done_; });
    }
    recv_queue_.Close(Status(StatusCode::kCancelled, "connection closed"));
    ::shutdown(socket_.native_handle(), SHUT_RDWR);
  }
  if (reader_.joinable() && reader_.get_id() != std::this_thread::get_id()) reader_.join();
  if (writer_.joinable() && writer_.get_id() != std::this_thread::get_id()) writer_.join();
  // A Send writing on its own thread (a small message, or borrowed bytes: megabytes) holds
  // write_mu_ until its write returns, which the shutdown above makes prompt; the descriptor is
  // closed after it, never under it.
  std::lock_guard write_lock(write_mu_);
  asio::error_code ec;
  socket_.close(ec);
}

Result<std::unique_ptr<TcpAcceptor>> TcpAcceptor::Bind(const TransportOptions& options) {
  std::string host;
  uint16_t port = 0;
  KVWIRE_RETURN_IF_ERROR(ParseHostPort(options.address, &host, &port));
  std::unique_ptr<TcpAcceptor> a(new TcpAcceptor());
  a->options_ = options;
  a->pool_ = std::make_shared<BufferPool>(options.max_pooled_bytes);
  if (options.tls.enabled) {
    KVWIRE_ASSIGN_OR_RETURN(a->tls_, TlsContext::ForServer(options.tls));
  }
  a->ctx_ = std::make_shared<asio::io_context>();
  try {
    asio::ip::tcp::resolver resolver(*a->ctx_);
    auto results = resolver.resolve(host, std::to_string(port), asio::ip::resolver_base::passive);
    KVWIRE_RETURN_ERROR_IF(results.empty(), kInvalidArgument, "cannot resolve " + host);
    asio::ip::tcp::endpoint ep = *results.begin();
    a->acceptor_ = std::make_unique<asio::ip::tcp::acceptor>(*a->ctx_, ep, /*reuse_address=*/true);
    auto bound = a->acceptor_->local_endpoint();
    a->address_ = (bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                           : bound.address().to_string()) +
                  ":" + std::to_string(bound.port());
  } catch (const std::exception& e) {
    return Status(StatusCode::kIoError, "listen on " + options.address + ": " + e.what());
  }
  return a;
}

TcpAcceptor::~TcpAcceptor() { Close(); }

Result<std::unique_ptr<TcpConnection>> TcpAcceptor::AcceptRaw(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const int left = timeout_ms < 0 ? timeout_ms : RemainingMs(deadline);
    KVWIRE_ASSIGN_OR_RETURN(asio::ip::tcp::socket socket, AcceptSocket(left));
    if (!tls_) {
      return std::make_unique<TcpConnection>(ctx_, std::move(socket), options_, nullptr, pool_);
    }
    asio::error_code ec;
    auto from = socket.remote_endpoint(ec);
    auto t = TlsSession::Accept(tls_, socket.native_handle(), options_.handshake_timeout_ms);
    if (t.ok())
      return std::make_unique<TcpConnection>(ctx_, std::move(socket), options_, std::move(*t),
                                             pool_);
    LogRefusedPeer("tcp://" + address_ + " from " +
                       (ec ? std::string("?")
                           : from.address().to_string() + ":" + std::to_string(from.port())),
                   t.status());
  }
}

Result<asio::ip::tcp::socket> TcpAcceptor::AcceptSocket(int timeout_ms) {
  KVWIRE_RETURN_ERROR_IF(closed_, kCancelled, "listener closed");
  asio::ip::tcp::socket socket(*ctx_);
  asio::error_code result = asio::error::would_block;
  acceptor_->async_accept(socket, [&](const asio::error_code& ec) { result = ec; });
  ctx_->restart();
  if (timeout_ms < 0) {
    ctx_->run_one();
  } else {
    ctx_->run_for(std::chrono::milliseconds(timeout_ms));
  }
  if (result == asio::error::would_block) {
    asio::error_code ignored;
    acceptor_->cancel(ignored);
    ctx_->restart();
    ctx_->run();
    if (result == asio::error::operation_aborted && !closed_)
      return Status(StatusCode::kTimeout,
                    "no connection within " + std::to_string(timeout_ms) + " ms");
  }
  if (closed_) return Status(StatusCode::kCancelled, "listener closed");
  if (result) return IoStatus("accept", result);
  return socket;
}

void TcpAcceptor::Close() {
  if (closed_.exchange(true)) return;
  // Wakes a blocked AcceptRaw: shutting the listening fd makes the pending accept fail.
  if (acceptor_) ::shutdown(acceptor_->native_handle(), SHUT_RDWR);
}

namespace {

class TcpListener final : public Listener {
 public:
  TcpListener(std::unique_ptr<TcpAcceptor> acceptor, TransportOptions options)
      : acceptor_(std::move(acceptor)), options_(std::move(options)) {}
  Result<std::unique_ptr<Connection>> Accept(int timeout_ms) override {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      const int left = timeout_ms < 0 ? timeout_ms : RemainingMs(deadline);
      if (timeout_ms >= 0 && left == 0) return Status(StatusCode::kTimeout, "no connection");
      KVWIRE_ASSIGN_OR_RETURN(std::unique_ptr<TcpConnection> conn, acceptor_->AcceptRaw(left));
      std::string peer;
      TcpConnection* raw = conn.get();
      Status s = ServerHandshake(*conn, options_, &peer,
                                 [raw](const std::string& p) { raw->MarkAuthenticated(p); },
                                 conn->channel_binding());
      if (s.ok()) return std::unique_ptr<Connection>(std::move(conn));
      LogRefusedPeer("tcp://" + acceptor_->address() + " from " + conn->remote_address(), s);
    }
  }
  std::string address() const override { return acceptor_->address(); }
  void Close() override { acceptor_->Close(); }

 private:
  std::unique_ptr<TcpAcceptor> acceptor_;
  TransportOptions options_;
};

class TcpTransport final : public Transport {
 public:
  std::string_view name() const override { return "tcp"; }
  TransportCaps caps() const override {
    TransportCaps c;
    c.remote = true;
    c.tls = true;
    return c;
  }
  Result<std::unique_ptr<Listener>> Listen(const TransportOptions& options) override {
    KVWIRE_RETURN_IF_ERROR(ValidateKeyOptions(options));
    KVWIRE_ASSIGN_OR_RETURN(auto acceptor, TcpAcceptor::Bind(options));
    return std::unique_ptr<Listener>(std::make_unique<TcpListener>(std::move(acceptor), options));
  }
  Result<std::unique_ptr<Connection>> Connect(const TransportOptions& options) override {
    KVWIRE_RETURN_IF_ERROR(ValidateKeyOptions(options));
    KVWIRE_ASSIGN_OR_RETURN(auto conn, TcpConnection::Dial(options));
    std::string peer;
    Status s = ClientHandshake(*conn, options, &peer, conn->channel_binding());
    if (!s.ok()) {
      // What a TLS listener does to a plain hello: hangs up, or its record reads as a bad frame.
      // Not a reset or an unreachable network, which have nothing to do with TLS.
      if (!options.tls.enabled &&
          (s.code() == StatusCode::kCorrupt ||
           (s.code() == StatusCode::kIoError &&
            s.message().find("peer closed the connection") != std::string::npos)))
        s = Status(s.code(), s.message() + " (if the listener uses TLS, enable it here too)");
      return s.WithContext("connect tcp://" + options.address);
    }
    conn->MarkAuthenticated(std::move(peer));
    return std::unique_ptr<Connection>(std::move(conn));
  }
};

}  // namespace

std::unique_ptr<Transport> MakeTcpTransport() { return std::make_unique<TcpTransport>(); }

}  // namespace kvwire::transport
