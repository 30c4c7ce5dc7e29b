// Receiver side of a session (kvwire/session.h, docs/PROTOCOL.md).
//
// Threads: one accept thread; one handler thread per connection, which validates every message,
// decodes chunks into the destination as they land and acknowledges them. Requests outlive
// connections (a sender that reconnects resumes them). Locks: a request's decode_mu before the
// core's mu_, never the other way round.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "kvwire/session.h"
#include "transport/chunk_grid.h"
#include "transport/control.h"

namespace kvwire {
namespace {

using Clock = std::chrono::steady_clock;
using transport::ChunkGrid;

struct RecvState {
  uint64_t id = 0;
  IncomingRequest info;
  std::vector<uint8_t> header;  // the reader points into it
  std::unique_ptr<StreamReader> reader;
  ChunkGrid grid;
  Clock::time_point start;

  std::mutex decode_mu;  // reader, dst, pending
  KvView dst;
  bool has_dst = false;
  std::deque<Message> pending;  // chunks received before SetDestination

  // Guarded by ReceiverCore::mu_.
  std::shared_ptr<Connection> conn;  // where acks go (the latest connection)
  std::vector<bool> have;
  uint32_t have_count = 0;
  std::vector<uint32_t> layer_chunks;  // decoded chunks per layer
  Status status = Status::InProgress();
  Clock::time_point last_progress;
  ReceiveStats st;
  bool announced = false;
};

class ReceiverCore {
 public:
  explicit ReceiverCore(ReceiverOptions o) : opts_(std::move(o)) {}
  ~ReceiverCore() { Close(); }

  Status Start() {
    KVWIRE_ASSIGN_OR_RETURN(transport_, CreateTransport(opts_.backend));
    KVWIRE_ASSIGN_OR_RETURN(listener_, transport_->Listen(opts_.transport));
    accept_ = std::thread([this] { AcceptLoop(); });
    return Status::Ok();
  }
  std::string address() const { return listener_->address(); }
  Result<IncomingRequest> NextRequest(int timeout_ms);
  Status SetDestination(uint64_t id, const KvView& dst);
  Status WaitLayer(uint64_t id, uint32_t layer, int timeout_ms);
  Status Wait(uint64_t id, int timeout_ms);
  Result<ReceiveStats> stats(uint64_t id) const;
  Status Release(uint64_t id);
  void Close();

 private:
  void AcceptLoop();
  void ServeConnection(std::shared_ptr<Connection> conn);
  Status HandleControl(const std::shared_ptr<Connection>& conn, const control::Control& c);
  Status HandleData(const std::shared_ptr<Connection>& conn, Message msg);
  Status HandleBegin(const std::shared_ptr<Connection>& conn, const control::RequestBegin& b);
  // Decodes one validated chunk (decode_mu held) and acknowledges it.
  void DecodeAndAck(const std::shared_ptr<RecvState>& s, const control::ChunkDescriptor& d,
                    const Message& msg);
  void FailLocked(RecvState* s, Status why);
  void CheckStalls();
  std::shared_ptr<RecvState> Find(uint64_t id) const {
    std::lock_guard lock(mu_);
    auto it = requests_.find(id);
    return it == requests_.end() ? nullptr : it->second;
  }
  static void SendControl(const std::shared_ptr<Connection>& conn, const control::Control& c) {
    auto m = transport::MakeControlMessage(c);
    if (m.ok() && conn) (void)conn->Send(std::move(*m));
  }
  void Log(const std::string& line) const {
    if (opts_.verbose) std::cerr << "kvwire serve: " << line << "\n";
  }

  const ReceiverOptions opts_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Listener> listener_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, std::shared_ptr<RecvState>> requests_;
  std::deque<uint64_t> incoming_;
  uint64_t buffered_bytes_ = 0;
  bool closed_ = false;
  std::thread accept_;
  struct Handler {
    std::thread thread;
    std::shared_ptr<Connection> conn;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<Handler> handlers_;  // pruned as connections end (memory back to baseline)
  // How the most recently released requests ended. A sender whose final acks and RequestDone
  // died with its connection resumes after the application already released the request; it
  // must learn the outcome, not have the request opened again as a new one.
  struct Released {
    Status status;
    uint32_t chunks = 0;
  };
  static constexpr size_t kMaxReleased = 4096;
  std::map<uint64_t, Released> released_;
  std::deque<uint64_t> released_order_;
};

void ReceiverCore::AcceptLoop() {
  for (;;) {
    // Wakes up regularly so requests whose connection is gone still hit their stall timeout.
    auto c = listener_->Accept(250);
    if (!c.ok() && c.status().code() == StatusCode::kTimeout) {
      CheckStalls();
      std::lock_guard lock(mu_);
      if (closed_) return;
      continue;
    }
    std::lock_guard lock(mu_);
    if (closed_) return;
    if (!c.ok()) {
      if (c.status().code() == StatusCode::kCancelled) return;
      Log("accept failed: " + c.status().ToString());
      continue;
    }
    std::shared_ptr<Connection> conn = std::move(*c);
    Log("connection from '" + conn->peer_name() + "'");
    for (auto it = handlers_.begin(); it != handlers_.end();) {
      if (*it->done) {
        it->thread.join();  // already finished: returns at once
        it = handlers_.erase(it);
      } else {
        ++it;
      }
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    handlers_.push_back({std::thread([this, conn, done] {
                           ServeConnection(conn);
                           conn->Close();  // release the socket / UCX endpoint now
                           *done = true;
                         }),
                         conn, done});
  }
}

void ReceiverCore::ServeConnection(std::shared_ptr<Connection> conn) {
  for (;;) {
    auto m = conn->Receive(250);
    if (!m.ok()) {
      if (m.status().code() == StatusCode::kTimeout) {
        CheckStalls();
        continue;
      }
      Log("connection from '" + conn->peer_name() + "' ended: " + m.status().ToString());
      return;  // its requests wait for a resume (or their stall timeout)
    }
    Status s = m->kind == MessageKind::kControl
                   ? [&] {
                       auto c = transport::ParseControl(m->meta);
                       return c.ok() ? HandleControl(conn, *c) : c.status();
                     }()
                   : HandleData(conn, std::move(*m));
    if (!s.ok()) {
      // A malformed or hostile message: refuse the peer, log why.
      Log("closing connection from '" + conn->peer_name() + "': " + s.ToString());
      std::cerr << "kvwire: refused peer '" << conn->peer_name() << "': " << s.ToString() << "\n";
      SendControl(conn, transport::MakeError(0, s));
      conn->Close();
      return;
    }
  }
}

Status ReceiverCore::HandleBegin(const std::shared_ptr<Connection>& conn,
                                 const control::RequestBegin& b) {
  const uint64_t id = b.request_id();
  if (auto existing = Find(id)) {
    // A resume (or a repeated begin after a reconnect): rebind and say what we hold.
    KVWIRE_RETURN_ERROR_IF(!b.resume(), kCorrupt,
                           "request " + std::to_string(id) + " opened twice");
    control::Control acc;
    acc.mutable_request_accept()->set_request_id(id);
    Status status;
    {
      std::lock_guard lock(mu_);
      existing->conn = conn;
      existing->last_progress = Clock::now();
      for (uint32_t i = 0; i < existing->have.size(); ++i)
        if (existing->have[i]) acc.mutable_request_accept()->add_have_chunks(i);
      status = existing->status;
    }
    Log("request " + std::to_string(id) + " resumed with " +
        std::to_string(acc.request_accept().have_chunks_size()) + " chunks held");
    SendControl(conn, acc);
    if (!status.in_progress()) {
      control::Control done;
      done.mutable_request_done()->set_request_id(id);
      done.mutable_request_done()->set_status_code(static_cast<uint32_t>(status.code()));
      done.mutable_request_done()->set_message(transport::MakeError(id, status).error().message());
      SendControl(conn, done);
    }
    return Status::Ok();
  }
  if (b.resume()) {
    std::optional<Released> gone;
    {
      std::lock_guard lock(mu_);
      if (auto it = released_.find(id); it != released_.end()) gone = it->second;
    }
    if (gone) {
      control::Control acc;
      acc.mutable_request_accept()->set_request_id(id);
      if (gone->status.ok()) {  // complete: it held every chunk
        for (uint32_t i = 0; i < gone->chunks; ++i)
          acc.mutable_request_accept()->add_have_chunks(i);
      }
      Log("request " + std::to_string(id) + " resumed after release: " + gone->status.ToString());
      SendControl(conn, acc);
      control::Control done;
      done.mutable_request_done()->set_request_id(id);
      done.mutable_request_done()->set_status_code(static_cast<uint32_t>(gone->status.code()));
      done.mutable_request_done()->set_message(
          transport::MakeError(id, gone->status).error().message());
      SendControl(conn, done);
      return Status::Ok();
    }
  }
  auto s = std::make_shared<RecvState>();
  s->id = id;
  s->header.assign(b.stream_header().begin(), b.stream_header().end());
  auto reader = StreamReader::Open(s->header, opts_.profile);
  if (!reader.ok()) {
    SendControl(conn, transport::MakeError(id, reader.status().WithContext("stream header")));
    return Status::Ok();  // the request is refused, the connection stays
  }
  s->reader = std::move(*reader);
  const StreamInfo& info = s->reader->info();
  const KvShape shape{b.shape().layers(), b.shape().tokens(), b.shape().kv_heads(),
                      b.shape().head_dim()};
  KVWIRE_RETURN_ERROR_IF(!(info.shape == shape) || info.levels.size() != size_t(b.levels_size()) ||
                             info.token_begin != b.token_begin(),
                         kCorrupt, "request_begin disagrees with its stream header");
  for (int i = 0; i < b.levels_size(); ++i)
    KVWIRE_RETURN_ERROR_IF(info.levels[i] != b.levels(i).codec(), kCorrupt,
                           "request_begin level codec disagrees with its stream header");
  auto grid = ChunkGrid::Make(shape, b.chunk_tokens());
  KVWIRE_RETURN_ERROR_IF(!grid.ok(), kCorrupt,
                         "request_begin chunking: " + grid.status().message());
  s->grid = *grid;
  s->info.request_id = id;
  s->info.info = info;
  for (const auto& l : b.levels())
    s->info.levels.push_back({l.codec(), l.bits_per_element(), l.kl()});
  s->info.max_kl = b.max_kl();
  s->info.deadline_ms = b.deadline_ms();
  s->info.peer = conn->peer_name();
  s->info.user_data = b.user_data();
  s->have.assign(s->grid.total(), false);
  s->layer_chunks.assign(shape.layers, 0);
  s->st.chunks_per_level.assign(info.levels.size(), 0);
  s->start = s->last_progress = Clock::now();
  s->conn = conn;
  {
    std::lock_guard lock(mu_);
    KVWIRE_RETURN_ERROR_IF(closed_, kCancelled, "receiver closed");
    requests_[id] = s;
    incoming_.push_back(id);
    cv_.notify_all();
  }
  Log("request " + std::to_string(id) + " from '" + conn->peer_name() +
      "': " + std::to_string(shape.layers) + " layers x " + std::to_string(shape.tokens) +
      " tokens, " + std::to_string(s->grid.total()) + " chunks, max_kl " +
      std::to_string(b.max_kl()) + ", deadline " + std::to_string(b.deadline_ms()) + " ms");
  control::Control acc;
  acc.mutable_request_accept()->set_request_id(id);
  SendControl(conn, acc);
  return Status::Ok();
}

Status ReceiverCore::HandleControl(const std::shared_ptr<Connection>& conn,
                                   const control::Control& c) {
  switch (c.body_case()) {
    case control::Control::kRequestBegin:
      return HandleBegin(conn, c.request_begin());
    case control::Control::kRequestEnd: {
      auto s = Find(c.request_end().request_id());
      if (s && c.request_end().chunks() != s->grid.total()) {
        std::lock_guard lock(mu_);
        FailLocked(s.get(), Status(StatusCode::kCorrupt,
                                   "sender announced " + std::to_string(c.request_end().chunks()) +
                                       " chunks, expected " + std::to_string(s->grid.total())));
      }
      return Status::Ok();
    }
    case control::Control::kLevelChange: {
      const auto& l = c.level_change();
      Log("request " + std::to_string(l.request_id()) + ": sender moved to level " +
          std::to_string(l.to_level()) + " (" + l.reason() + ")");
      return Status::Ok();
    }
    case control::Control::kPing: {
      control::Control p;
      p.mutable_pong()->set_nonce(c.ping().nonce());
      SendControl(conn, p);
      return Status::Ok();
    }
    case control::Control::kError: {
      if (auto s = Find(c.error().request_id())) {
        std::lock_guard lock(mu_);
        FailLocked(s.get(), transport::ErrorToStatus(c.error()));
      }
      return Status::Ok();
    }
    case control::Control::kHello:
    case control::Control::kChallenge:
    case control::Control::kAuthProof:
    case control::Control::kAuthOk:
      return Status(StatusCode::kCorrupt, "handshake message after the handshake");
    default:
      return Status::Ok();  // capabilities, profile and migration messages: not handled yet
  }
}

Status ReceiverCore::HandleData(const std::shared_ptr<Connection>& conn, Message msg) {
  KVWIRE_ASSIGN_OR_RETURN(control::ChunkDescriptor d, transport::ParseChunkDescriptor(msg));
  auto s = Find(d.request_id());
  if (!s) {
    SendControl(conn, transport::MakeError(d.request_id(),
                                           Status(StatusCode::kNotFound, "unknown request")));
    return Status::Ok();
  }
  const ChunkGrid& g = s->grid;
  // The descriptor must name a chunk of this request's grid exactly.
  KVWIRE_RETURN_ERROR_IF(d.seq() >= g.total() || d.layer() != g.LayerOf(d.seq()) ||
                             d.kind() != static_cast<uint32_t>(g.KindOf(d.seq())) ||
                             d.token_begin() != g.TokenBegin(g.IndexOf(d.seq())) ||
                             d.tokens() != g.Tokens(g.IndexOf(d.seq())) ||
                             d.level() >= s->info.levels.size(),
                         kCorrupt,
                         "chunk descriptor " + std::to_string(d.seq()) +
                             " does not match request " + std::to_string(d.request_id()));
  std::lock_guard decode_lock(s->decode_mu);
  {
    std::lock_guard lock(mu_);
    s->st.wire_bytes += msg.bytes();
    if (!s->status.in_progress() || s->have[d.seq()]) {
      // Duplicate (a resend after a resume) or late: harmless, acknowledge again.
      ++s->st.duplicate_chunks;
      control::Control ack;
      ack.mutable_ack()->set_request_id(s->id);
      ack.mutable_ack()->add_seqs(d.seq());
      SendControl(conn, ack);
      conn->Recycle(std::move(msg));
      return Status::Ok();
    }
    if (!s->has_dst) {
      if (buffered_bytes_ + msg.bytes() > opts_.max_buffered_bytes) {
        FailLocked(s.get(), Status(StatusCode::kResourceExhausted,
                                   "more than " + std::to_string(opts_.max_buffered_bytes) +
                                       " bytes buffered before SetDestination"));
        return Status::Ok();
      }
      buffered_bytes_ += msg.bytes();
      s->pending.push_back(std::move(msg));
      return Status::Ok();
    }
  }
  DecodeAndAck(s, d, msg);
  conn->Recycle(std::move(msg));  // its buffer receives a later chunk
  return Status::Ok();
}

void ReceiverCore::DecodeAndAck(const std::shared_ptr<RecvState>& s,
                                const control::ChunkDescriptor& d, const Message& msg) {
  Status st;
  auto ref = s->reader->ParseFrame(msg.payload);
  if (!ref.ok()) {
    st = ref.status();
  } else {
    const ChunkHeader& h = ref->header;
    if (h.layer != d.layer() || static_cast<uint32_t>(h.kind) != d.kind() ||
        h.token_begin != d.token_begin() || h.tokens != d.tokens() || h.level != d.level()) {
      st = Status(StatusCode::kCorrupt, "chunk frame disagrees with its descriptor");
    } else {
      st = s->reader->DecodeChunk(*ref, s->dst);
    }
  }
  std::shared_ptr<Connection> conn;
  control::Control ack, done;
  {
    std::lock_guard lock(mu_);
    if (!s->status.in_progress()) return;
    if (!st.ok()) {
      FailLocked(s.get(), st.WithContext("chunk " + std::to_string(d.seq())));
      return;
    }
    if (s->have[d.seq()]) return;
    s->have[d.seq()] = true;
    ++s->have_count;
    ++s->layer_chunks[d.layer()];
    ++s->st.chunks;
    ++s->st.chunks_per_level[d.level()];
    s->last_progress = Clock::now();
    conn = s->conn;
    ack.mutable_ack()->set_request_id(s->id);
    ack.mutable_ack()->add_seqs(d.seq());
    ack.mutable_ack()->set_bytes(msg.bytes());
    if (s->have_count == s->grid.total()) {
      s->status = Status::Ok();
      s->st.seconds = std::chrono::duration<double>(Clock::now() - s->start).count();
      done.mutable_request_done()->set_request_id(s->id);
      Log("request " + std::to_string(s->id) + " complete: " + std::to_string(s->st.chunks) +
          " chunks, " + std::to_string(s->st.wire_bytes) + " bytes, " +
          std::to_string(s->st.seconds * 1000) + " ms");
    }
    cv_.notify_all();
  }
  SendControl(conn, ack);
  if (done.has_request_done()) SendControl(conn, done);
}

void ReceiverCore::FailLocked(RecvState* s, Status why) {
  if (!s->status.in_progress()) return;
  Log("request " + std::to_string(s->id) + " failed: " + why.ToString());
  s->status = why;
  control::Control err = transport::MakeError(s->id, why);
  SendControl(s->conn, err);
  cv_.notify_all();
}

void ReceiverCore::CheckStalls() {
  std::lock_guard lock(mu_);
  const auto now = Clock::now();
  for (auto& [id, s] : requests_) {
    if (s->status.in_progress() &&
        now - s->last_progress > std::chrono::milliseconds(opts_.stall_timeout_ms)) {
      FailLocked(s.get(),
                 Status(StatusCode::kTimeout, "stalled: nothing received for " +
                                                  std::to_string(opts_.stall_timeout_ms) + " ms"));
    }
  }
}

Result<IncomingRequest> ReceiverCore::NextRequest(int timeout_ms) {
  std::unique_lock lock(mu_);
  auto ready = [&] { return closed_ || !incoming_.empty(); };
  if (timeout_ms < 0) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) {
    return Status(StatusCode::kTimeout, "no request within " + std::to_string(timeout_ms) + " ms");
  }
  if (closed_) return Status(StatusCode::kCancelled, "receiver closed");
  const uint64_t id = incoming_.front();
  incoming_.pop_front();
  auto it = requests_.find(id);
  KVWIRE_RETURN_ERROR_IF(it == requests_.end(), kInternal, "request vanished");
  it->second->announced = true;
  return it->second->info;
}

Status ReceiverCore::SetDestination(uint64_t id, const KvView& dst) {
  auto s = Find(id);
  KVWIRE_RETURN_ERROR_IF(!s, kNotFound, "no request " + std::to_string(id));
  const KvShape& want = s->grid.shape;
  const KvShape& have = dst.shape();
  KVWIRE_RETURN_ERROR_IF(have.layers != want.layers || have.kv_heads != want.kv_heads ||
                             have.head_dim != want.head_dim ||
                             (have.tokens != want.tokens &&
                              have.tokens < uint64_t{s->info.info.token_begin} + want.tokens),
                         kInvalidArgument,
                         "destination shape does not fit request " + std::to_string(id));
  std::lock_guard decode_lock(s->decode_mu);
  std::deque<Message> pending;
  std::shared_ptr<Connection> conn;
  {
    std::lock_guard lock(mu_);
    KVWIRE_RETURN_ERROR_IF(s->has_dst, kInvalidArgument, "destination already set");
    s->dst = dst;
    s->has_dst = true;
    pending.swap(s->pending);
    for (auto& m : pending) buffered_bytes_ -= m.bytes();
    conn = s->conn;
  }
  for (auto& m : pending) {
    auto d = transport::ParseChunkDescriptor(m);  // validated on arrival
    if (d.ok()) DecodeAndAck(s, *d, m);
    if (conn) conn->Recycle(std::move(m));
  }
  return Status::Ok();
}

Status ReceiverCore::WaitLayer(uint64_t id, uint32_t layer, int timeout_ms) {
  auto s = Find(id);
  KVWIRE_RETURN_ERROR_IF(!s, kNotFound, "no request " + std::to_string(id));
  KVWIRE_RETURN_ERROR_IF(layer >= s->grid.shape.layers, kInvalidArgument,
                         "no layer " + std::to_string(layer));
  std::unique_lock lock(mu_);
  auto ready = [&] {
    return closed_ || !s->status.in_progress() ||
           s->layer_chunks[layer] == s->grid.chunks_per_layer();
  };
  if (timeout_ms < 0) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) {
    return Status::InProgress();
  }
  if (s->layer_chunks[layer] == s->grid.chunks_per_layer()) return Status::Ok();
  if (closed_ && s->status.in_progress()) return Status(StatusCode::kCancelled, "receiver closed");
  return s->status;
}

Status ReceiverCore::Wait(uint64_t id, int timeout_ms) {
  auto s = Find(id);
  KVWIRE_RETURN_ERROR_IF(!s, kNotFound, "no request " + std::to_string(id));
  std::unique_lock lock(mu_);
  auto ready = [&] { return closed_ || !s->status.in_progress(); };
  if (timeout_ms < 0) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) {
    return Status::InProgress();
  }
  if (closed_ && s->status.in_progress()) return Status(StatusCode::kCancelled, "receiver closed");
  return s->status;
}

Result<ReceiveStats> ReceiverCore::stats(uint64_t id) const {
  auto s = Find(id);
  KVWIRE_RETURN_ERROR_IF(!s, kNotFound, "no request " + std::to_string(id));
  std::lock_guard lock(mu_);
  return s->st;
}

Status ReceiverCore::Release(uint64_t id) {
  auto s = Find(id);
  KVWIRE_RETURN_ERROR_IF(!s, kNotFound, "no request " + std::to_string(id));
  std::lock_guard decode_lock(s->decode_mu);
  std::lock_guard lock(mu_);
  if (s->status.in_progress())
    FailLocked(s.get(), Status(StatusCode::kCancelled, "released by the receiver"));
  for (auto& m : s->pending) buffered_bytes_ -= m.bytes();
  s->pending.clear();
  s->has_dst = false;
  if (released_.insert_or_assign(id, Released{s->status, s->grid.total()}).second) {
    released_order_.push_back(id);
    if (released_order_.size() > kMaxReleased) {
      released_.erase(released_order_.front());
      released_order_.pop_front();
    }
  }
  requests_.erase(id);
  return Status::Ok();
}

void ReceiverCore::Close() {
  std::vector<std::shared_ptr<Connection>> conns;
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
    for (auto& [id, s] : requests_)
      FailLocked(s.get(), Status(StatusCode::kCancelled, "receiver closed"));
    for (auto& h : handlers_) conns.push_back(h.conn);
    cv_.notify_all();
  }
  if (listener_) listener_->Close();
  if (accept_.joinable()) accept_.join();
  for (auto& c : conns) c->Close();
  for (auto& h : handlers_) h.thread.join();
  handlers_.clear();
}

class ReceiverHandle final : public Receiver {
 public:
  explicit ReceiverHandle(std::unique_ptr<ReceiverCore> core) : core_(std::move(core)) {}
  std::string address() const override { return core_->address(); }
  Result<IncomingRequest> NextRequest(int t) override { return core_->NextRequest(t); }
  Status SetDestination(uint64_t id, const KvView& dst) override {
    return core_->SetDestination(id, dst);
  }
  Status WaitLayer(uint64_t id, uint32_t layer, int t) override {
    return core_->WaitLayer(id, layer, t);
  }
  Status Wait(uint64_t id, int t) override { return core_->Wait(id, t); }
  Result<ReceiveStats> stats(uint64_t id) const override { return core_->stats(id); }
  Status Release(uint64_t id) override { return core_->Release(id); }
  void Close() override { core_->Close(); }

 private:
  std::unique_ptr<ReceiverCore> core_;
};

}  // namespace

Result<std::unique_ptr<Receiver>> Receiver::Listen(const ReceiverOptions& options) {
  auto core = std::make_unique<ReceiverCore>(options);
  KVWIRE_RETURN_IF_ERROR(core->Start());
  return std::unique_ptr<Receiver>(std::make_unique<ReceiverHandle>(std::move(core)));
}

}  // namespace kvwire
