// Receiver side of a session (kvwire/session.h, docs/PROTOCOL.md).
//
// Threads: one accept thread; one handler thread per connection, which validates every message,
// decodes chunks into the destination as they land and acknowledges them. Requests outlive
// connections (a sender that reconnects resumes them). Locks: a request's decode_mu before the
// core's mu_, never the other way round.
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "common/log_line.h"
#include "kvwire/codec.h"
#include "kvwire/profile.h"
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
  std::unique_ptr<StreamReader> reader;    // null while the profile is fetched
  std::shared_ptr<const Profile> profile;  // a fetched profile the reader uses
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
  // The last chunk's ack and RequestDone are handed to the connection (after mu_ is released):
  // until then Wait does not report the request done, so a receiver closed right after Wait
  // returns cannot drop them and leave its sender waiting for a completion that never comes.
  bool done_sent = false;
  // The profile the stream needs, while it is fetched from the sender: the request is known
  // (its chunks are buffered) but not handed to the application yet.
  std::string awaiting_profile;
  // Chunks being read straight into dst by a connection's reading thread (receive_in_place):
  // claimed per seq, so nothing else writes those rows meanwhile, and counted per connection,
  // so that a request that ends can close the connections still writing into its dst and wait
  // for them (ReceiverCore::DrainLandings) before the application may free it.
  std::vector<uint8_t> landing;
  uint32_t landing_total = 0;
  std::map<const Connection*, std::pair<std::weak_ptr<Connection>, uint32_t>> landing_conns;
};

// Whether `d` names a chunk of s's grid exactly, at one of its levels.
bool NamesGridChunk(const RecvState& s, const control::ChunkDescriptor& d) {
  const ChunkGrid& g = s.grid;
  return d.seq() < g.total() && d.layer() == g.LayerOf(d.seq()) &&
         d.kind() == static_cast<uint32_t>(g.KindOf(d.seq())) &&
         d.token_begin() == g.TokenBegin(g.IndexOf(d.seq())) &&
         d.tokens() == g.Tokens(g.IndexOf(d.seq())) && d.level() < s.info.levels.size();
}

// Whether a chunk frame's header names the chunk its descriptor does.
bool HeaderMatches(const ChunkHeader& h, const control::ChunkDescriptor& d) {
  return h.layer == d.layer() && static_cast<uint32_t>(h.kind) == d.kind() &&
         h.token_begin == d.token_begin() && h.tokens == d.tokens() && h.level == d.level();
}

// Profiles fetched from senders: at most this many kept for later requests (a request holds
// its own reference), and at most this many fetches at once.
constexpr size_t kMaxFetchedProfiles = 4;
constexpr size_t kMaxProfileFetches = 4;

class ReceiverCore {
 public:
  explicit ReceiverCore(ReceiverOptions o) : opts_(std::move(o)) {}
  ~ReceiverCore() { Close(); }

  Status Start() {
    if (opts_.profile != nullptr) {
      KVWIRE_ASSIGN_OR_RETURN(local_profile_id_, opts_.profile->Id());
      // As the sender: the fraqtl state of the profile is built before the first request.
      (void)CreateCodec("fraqtl@2", opts_.profile);
    }
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
  // Joins the handlers of ended connections and drops their references (mu_ held), so that a
  // connection's memory goes when it ends, not when the next one arrives. True if any ended.
  bool PruneHandlersLocked();
  void ServeConnection(std::shared_ptr<Connection> conn);
  Status HandleControl(const std::shared_ptr<Connection>& conn, const control::Control& c);
  Status HandleData(const std::shared_ptr<Connection>& conn, Message msg);
  Status HandleBegin(const std::shared_ptr<Connection>& conn, const control::RequestBegin& b);
  Status HandleProfileData(const std::shared_ptr<Connection>& conn, const control::ProfileData& d);
  // Asks `conn`'s sender for profile `id` for request `request` (mu_ held). False: too many
  // fetches at once. *ask: a ProfileRequest must be sent (outside the lock).
  bool StartFetchLocked(const std::string& id, uint64_t request,
                        const std::shared_ptr<Connection>& conn, bool* ask);
  static void AskForProfile(const std::shared_ptr<Connection>& conn, const std::string& id) {
    control::Control c;
    c.mutable_profile_request()->set_profile_id(id);
    SendControl(conn, c);
  }
  // The landing function of `conn` (Connection::SetLanding): the chunk's rows in dst when the
  // chunk is an fp16 one of a request in progress that holds no copy of it and whose dst takes
  // it as it is; the claim ends when the connection calls `done`.
  Landing Land(const std::weak_ptr<Connection>& conn, std::span<const uint8_t> meta,
               std::span<const uint8_t> head, uint64_t payload_bytes);
  // Connections still writing into s's dst (mu_ held), except `keep`.
  static std::vector<std::shared_ptr<Connection>> LandingConnectionsLocked(const RecvState& s,
                                                                           const Connection* keep);
  // Once s has ended: closes the connections still writing into its dst and waits until none
  // is (no lock held; closing a connection joins its reading thread).
  void DrainLandings(const std::shared_ptr<RecvState>& s);
  // Decodes one validated chunk (decode_mu held) and acknowledges it; a chunk received into a
  // buffer first waits for a read of the same chunk into dst (RecvState::landing) to end.
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
    if (opts_.verbose) WriteLogLine(stderr, "kvwire serve: " + line);
  }

  const ReceiverOptions opts_;
  std::string local_profile_id_;  // opts_.profile's
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Listener> listener_;
  mutable std::mutex mu_;
  // Waits of the application: cv_ for a request's layers and its end (WaitLayer, Wait),
  // notified when a layer completes or a request ends, not by every chunk; incoming_cv_ for
  // NextRequest. A chunk that completes nothing wakes no one (a per-chunk wake-up of every
  // waiting thread cost two context switches per chunk and contended for mu_).
  std::condition_variable cv_;
  std::condition_variable incoming_cv_;
  // Signalled when a chunk read into a destination ends (RecvState::landing) and when a request
  // fails; waited on by the rare caller that must not touch those rows meanwhile.
  std::condition_variable landing_cv_;
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
  std::vector<Handler> handlers_;  // pruned within 250 ms of their connection's end
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
  // Profiles being fetched (by id): the connection asked, the bytes so far, requests waiting.
  struct ProfileFetch {
    std::shared_ptr<Connection> conn;
    uint64_t total_bytes = 0;
    std::vector<uint8_t> bytes;
    std::vector<uint64_t> waiting;
  };
  std::map<std::string, ProfileFetch> fetches_;
  std::map<std::string, std::shared_ptr<const Profile>> fetched_;
  std::deque<std::string> fetched_order_;
};

void ReceiverCore::AcceptLoop() {
  for (;;) {
    // Wakes up regularly so requests whose connection is gone still hit their stall timeout.
    auto c = listener_->Accept(250);
    if (!c.ok() && c.status().code() == StatusCode::kTimeout) CheckStalls();
    bool pruned = false;
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      pruned = PruneHandlersLocked();
      if (c.ok()) {
        std::shared_ptr<Connection> conn = std::move(*c);
        Log("connection from '" + conn->peer_name() + "'");
        auto done = std::make_shared<std::atomic<bool>>(false);
        handlers_.push_back({std::thread([this, conn, done] {
                               ServeConnection(conn);
                               conn->Close();  // release the socket / UCX endpoint now
                               *done = true;
                             }),
                             conn, done});
      } else if (c.status().code() == StatusCode::kCancelled) {
        return;
      } else if (c.status().code() != StatusCode::kTimeout) {
        Log("accept failed: " + c.status().ToString());
      }
    }
#if defined(__GLIBC__)
    // What the ended connections freed (their buffer pools, UCX's fragment buffers: megabytes)
    // mostly lies inside glibc's heap, resident, until something asks for it back. Outside mu_:
    // the trim walks the heap, and the connections' threads need mu_ for every chunk.
    if (pruned) malloc_trim(0);
#endif
  }
}

bool ReceiverCore::PruneHandlersLocked() {
  bool pruned = false;
  for (auto it = handlers_.begin(); it != handlers_.end();) {
    if (*it->done) {
      it->thread.join();  // already finished: returns at once
      it = handlers_.erase(it);
      pruned = true;
    } else {
      ++it;
    }
  }
  return pruned;
}

void ReceiverCore::ServeConnection(std::shared_ptr<Connection> conn) {
  if (opts_.receive_in_place) {
    conn->SetLanding([this, weak = std::weak_ptr<Connection>(conn)](
                         std::span<const uint8_t> meta, std::span<const uint8_t> head,
                         uint64_t payload_bytes) { return Land(weak, meta, head, payload_bytes); });
  }
  {
    std::vector<std::string> held;
    if (!local_profile_id_.empty()) held.push_back(local_profile_id_);
    std::lock_guard lock(mu_);
    for (const auto& [id, p] : fetched_) held.push_back(id);
    SendControl(conn, transport::MakeCapabilities(opts_.backend, held, opts_.max_buffered_bytes));
  }
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
      WriteLogLine(stderr, "kvwire: refused peer '" + conn->peer_name() + "': " + s.ToString());
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
    bool ask = false;
    std::string profile_id;
    std::vector<std::shared_ptr<Connection>> stale;
    {
      std::lock_guard lock(mu_);
      // A connection the sender gave up on may still be reading a chunk into dst: it is closed,
      // so that the resent chunk does not wait for it (HandleData) and nothing writes after.
      stale = LandingConnectionsLocked(*existing, conn.get());
      existing->conn = conn;
      existing->last_progress = Clock::now();
      for (uint32_t i = 0; i < existing->have.size(); ++i)
        if (existing->have[i]) acc.mutable_request_accept()->add_have_chunks(i);
      status = existing->status;
      if (status.in_progress() && !existing->awaiting_profile.empty()) {
        // Its profile was being fetched on the broken connection: ask again on this one.
        profile_id = existing->awaiting_profile;
        (void)StartFetchLocked(profile_id, id, conn, &ask);
      }
    }
    for (auto& c : stale) c->Close();
    stale.clear();
    if (ask) AskForProfile(conn, profile_id);
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
  // The profile the stream needs: none, ours, one fetched before, or one to fetch now from the
  // sender (which must hold it: it encodes with it).
  auto peek = StreamReader::OpenForInspection(s->header);
  if (!peek.ok()) {
    SendControl(conn, transport::MakeError(id, peek.status().WithContext("stream header")));
    return Status::Ok();  // the request is refused, the connection stays
  }
  const std::string profile_id = (*peek)->info().profile_id;
  const Profile* profile = opts_.profile;
  bool fetch = false;
  if (!profile_id.empty() && profile_id != local_profile_id_) {
    std::lock_guard lock(mu_);
    if (auto it = fetched_.find(profile_id); it != fetched_.end()) {
      s->profile = it->second;
      profile = s->profile.get();
    } else {
      fetch = opts_.fetch_profiles;
    }
  }
  if (!fetch && !profile_id.empty() && profile_id != local_profile_id_ && !s->profile) {
    const Status missing(StatusCode::kNotFound,
                         "the stream needs profile '" + profile_id + "'; this receiver holds " +
                             (local_profile_id_.empty() ? "none" : "'" + local_profile_id_ + "'") +
                             " and does not fetch profiles (ReceiverOptions::fetch_profiles)");
    SendControl(conn, transport::MakeError(id, missing));
    return Status::Ok();
  }
  if (!fetch) {
    auto reader = StreamReader::Open(s->header, profile);
    if (!reader.ok()) {
      SendControl(conn, transport::MakeError(id, reader.status().WithContext("stream header")));
      return Status::Ok();
    }
    s->reader = std::move(*reader);
  }
  const StreamInfo& info = fetch ? (*peek)->info() : s->reader->info();
  const KvShape shape{b.shape().layers(), b.shape().tokens(), b.shape().kv_heads(),
                      b.shape().head_dim()};
  KVWIRE_RETURN_ERROR_IF(!(info.shape == shape) || info.levels.size() != size_t(b.levels_size()) ||
                             info.token_begin != b.token_begin(),
                         kCorrupt, "request_begin disagrees with its stream header");
  for (int i = 0; i < b.levels_size(); ++i)
    KVWIRE_RETURN_ERROR_IF(info.levels[i] != b.levels(i).codec(), kCorrupt,
                           "request_begin level codec disagrees with its stream header");
  auto grid = ChunkGrid::Make(shape, b.token_begin(), b.chunk_tokens());
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
  s->landing.assign(s->grid.total(), 0);
  s->layer_chunks.assign(shape.layers, 0);
  s->st.chunks_per_level.assign(info.levels.size(), 0);
  s->start = s->last_progress = Clock::now();
  s->conn = conn;
  bool ask = false;
  bool dup = false;
  {
    std::lock_guard lock(mu_);
    KVWIRE_RETURN_ERROR_IF(closed_, kCancelled, "receiver closed");
    // Another connection may have opened the same request since Find() above: a sender that
    // reconnected while its first begin was still in flight. Two states under one id would
    // hand the application the id twice; the later begin is answered as a resume instead.
    // A resume may also have lost the race to the application releasing the request: it
    // then learns the request's outcome, as a resume after release does.
    dup = requests_.count(id) != 0 || (b.resume() && released_.count(id) != 0);
    if (!dup) {
      if (fetch && !StartFetchLocked(profile_id, id, conn, &ask)) {
        SendControl(conn, transport::MakeError(
                              id, Status(StatusCode::kResourceExhausted,
                                         "already fetching " + std::to_string(kMaxProfileFetches) +
                                             " profiles; profile '" + profile_id + "' refused")));
        return Status::Ok();
      }
      requests_[id] = s;
      if (fetch) {
        s->awaiting_profile = profile_id;
      } else {
        incoming_.push_back(id);
        incoming_cv_.notify_all();
      }
    }
  }
  if (dup) {
    KVWIRE_RETURN_ERROR_IF(!b.resume(), kCorrupt,
                           "request " + std::to_string(id) + " opened twice");
    return HandleBegin(conn, b);  // Find() or the released list sees it now
  }
  Log("request " + std::to_string(id) + " from '" + conn->peer_name() +
      "': " + std::to_string(shape.layers) + " layers x " + std::to_string(shape.tokens) +
      " tokens, " + std::to_string(s->grid.total()) + " chunks, max_kl " +
      std::to_string(b.max_kl()) + ", deadline " + std::to_string(b.deadline_ms()) + " ms" +
      (fetch ? "; fetching its profile " + profile_id + " from the sender" : ""));
  if (ask) AskForProfile(conn, profile_id);
  control::Control acc;
  acc.mutable_request_accept()->set_request_id(id);
  acc.mutable_request_accept()->set_fresh(true);
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
    case control::Control::kProfileData:
      return HandleProfileData(conn, c.profile_data());
    case control::Control::kCapabilities: {
      const auto& caps = c.capabilities();
      Log("sender '" + conn->peer_name() + "' (" +
          (caps.backends_size() ? caps.backends(0) : std::string("?")) + "): " +
          std::to_string(caps.codecs_size()) + " codec families, " +
          std::to_string(caps.profile_ids_size()) + " profile(s)");
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
      return Status::Ok();  // profile offers and migration: not handled yet
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
  KVWIRE_RETURN_ERROR_IF(!NamesGridChunk(*s, d), kCorrupt,
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
      // A chunk read into a destination always finds it set (Land): this one outlived it.
      if (!msg.landed.empty()) return Status::Ok();
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
  if (msg.landed.empty()) {
    std::unique_lock lock(mu_);
    // Another connection may be reading this chunk into dst (a resend raced it): its rows are
    // written once that read ends; a request that ends meanwhile is not decoded into.
    landing_cv_.wait(lock, [&] { return !s->landing[d.seq()] || !s->status.in_progress(); });
    if (!s->status.in_progress()) return;
  }
  Status st;
  auto ref = msg.landed.empty() ? s->reader->ParseFrame(msg.payload)
                                : s->reader->ParseFrame(msg.payload, msg.landed, 0);
  if (!ref.ok()) {
    st = ref.status();
  } else {
    if (!HeaderMatches(ref->header, d)) {
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
    if (!msg.landed.empty()) ++s->st.landed_chunks;
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
    if (s->layer_chunks[d.layer()] == s->grid.chunks_per_layer()) cv_.notify_all();
  }
  SendControl(conn, ack);
  if (done.has_request_done()) {
    SendControl(conn, done);
    std::lock_guard lock(mu_);
    s->done_sent = true;
    cv_.notify_all();
  }
}

void ReceiverCore::FailLocked(RecvState* s, Status why) {
  if (!s->status.in_progress()) return;
  Log("request " + std::to_string(s->id) + " failed: " + why.ToString());
  s->status = why;
  control::Control err = transport::MakeError(s->id, why);
  SendControl(s->conn, err);
  if (!s->awaiting_profile.empty()) {
    // Never handed out: the application learns of it, failed, and releases it.
    s->awaiting_profile.clear();
    incoming_.push_back(s->id);
    incoming_cv_.notify_all();
  }
  cv_.notify_all();
  landing_cv_.notify_all();
}

Landing ReceiverCore::Land(const std::weak_ptr<Connection>& conn, std::span<const uint8_t> meta,
                           std::span<const uint8_t> head, uint64_t payload_bytes) {
  auto d = transport::ParseChunkDescriptor(meta, payload_bytes);
  if (!d.ok()) return {};  // HandleData refuses it, with the reason
  auto s = Find(d->request_id());
  auto c = conn.lock();
  if (!s || !c) return {};
  std::lock_guard lock(mu_);
  // dst and the reader are set under both locks (SetDestination), so mu_ alone may read them.
  if (!s->status.in_progress() || !s->has_dst || !NamesGridChunk(*s, *d) || s->have[d->seq()] ||
      s->landing[d->seq()]) {
    return {};
  }
  ChunkHeader h;
  const std::span<uint8_t> rows = s->reader->PayloadDestination(head, s->dst, &h);
  // The frame header must name this very chunk, as DecodeAndAck checks again.
  if (rows.size() != payload_bytes - kLandingHeadBytes || !HeaderMatches(h, *d)) {
    return {};
  }
  const uint64_t seq = d->seq();
  s->landing[seq] = 1;
  ++s->landing_total;
  auto& entry = s->landing_conns[c.get()];
  entry.first = c;
  ++entry.second;
  const Connection* key = c.get();
  return {rows, [this, s, seq, key] {
            std::lock_guard done_lock(mu_);
            s->landing[seq] = 0;
            --s->landing_total;
            auto it = s->landing_conns.find(key);
            if (it != s->landing_conns.end() && --it->second.second == 0)
              s->landing_conns.erase(it);
            landing_cv_.notify_all();
          }};
}

std::vector<std::shared_ptr<Connection>> ReceiverCore::LandingConnectionsLocked(
    const RecvState& s, const Connection* keep) {
  std::vector<std::shared_ptr<Connection>> out;
  for (const auto& [key, entry] : s.landing_conns) {
    if (key == keep) continue;
    if (auto c = entry.first.lock()) out.push_back(std::move(c));
  }
  return out;
}

void ReceiverCore::DrainLandings(const std::shared_ptr<RecvState>& s) {
  std::vector<std::shared_ptr<Connection>> writing;
  {
    std::lock_guard lock(mu_);
    if (s->landing_total == 0) return;
    writing = LandingConnectionsLocked(*s, nullptr);
  }
  for (auto& c : writing) c->Close();  // its reading thread has returned once Close does
  writing.clear();
  std::unique_lock lock(mu_);
  landing_cv_.wait(lock, [&] { return s->landing_total == 0; });
}

bool ReceiverCore::StartFetchLocked(const std::string& id, uint64_t request,
                                    const std::shared_ptr<Connection>& conn, bool* ask) {
  auto it = fetches_.find(id);
  if (it == fetches_.end()) {
    if (fetches_.size() >= kMaxProfileFetches) return false;
    it = fetches_.emplace(id, ProfileFetch{}).first;
  }
  ProfileFetch& f = it->second;
  if (f.conn != conn) {  // new, or asked on a connection that broke: start over on this one
    f.conn = conn;
    f.total_bytes = 0;
    f.bytes.clear();
    *ask = true;
  }
  if (std::find(f.waiting.begin(), f.waiting.end(), request) == f.waiting.end())
    f.waiting.push_back(request);
  return true;
}

Status ReceiverCore::HandleProfileData(const std::shared_ptr<Connection>& conn,
                                       const control::ProfileData& d) {
  const std::string& id = d.profile_id();
  std::vector<uint64_t> waiting;
  std::vector<uint8_t> bytes;
  Status failed;
  {
    std::lock_guard lock(mu_);
    auto it = fetches_.find(id);
    if (it == fetches_.end() || it->second.conn != conn) {
      // A fetch abandoned for a newer connection may still drain here: ignore it. Otherwise the
      // sender sent what nobody asked for.
      KVWIRE_RETURN_ERROR_IF(it == fetches_.end(), kCorrupt,
                             "profile_data for profile '" + id + "', which was not requested");
      return Status::Ok();
    }
    ProfileFetch& f = it->second;
    if (d.status_code() != 0) {
      failed = Status(StatusCode::kNotFound,
                      "the sender cannot send profile '" + id + "': " + d.message());
    } else {
      KVWIRE_RETURN_ERROR_IF(d.offset() != f.bytes.size(), kCorrupt,
                             "profile_data at offset " + std::to_string(d.offset()) +
                                 ", expected " + std::to_string(f.bytes.size()));
      if (f.bytes.empty()) f.total_bytes = d.total_bytes();
      KVWIRE_RETURN_ERROR_IF(d.total_bytes() != f.total_bytes, kCorrupt,
                             "profile_data changed the profile's size");
      f.bytes.insert(f.bytes.end(), d.data().begin(), d.data().end());
      if (!d.last()) return Status::Ok();
      KVWIRE_RETURN_ERROR_IF(f.bytes.size() != f.total_bytes, kCorrupt,
                             "profile ended at " + std::to_string(f.bytes.size()) + " of " +
                                 std::to_string(f.total_bytes) + " bytes");
    }
    waiting = std::move(f.waiting);
    bytes = std::move(f.bytes);
    fetches_.erase(it);
  }
  std::shared_ptr<const Profile> profile;
  if (failed.ok()) {
    // The id is the hash of the file: what arrived is the profile the stream was encoded with.
    if (ProfileIdOfBytes(bytes) != id) {
      failed = Status(StatusCode::kCorrupt, "the profile received does not hash to its id '" +
                                                id + "'");
    } else if (auto p = Profile::Parse(bytes); !p.ok()) {
      failed = p.status().WithContext("profile '" + id + "' from the sender");
    } else {
      profile = std::make_shared<const Profile>(std::move(*p));
      Log("profile " + id + " received (" + std::to_string(bytes.size()) + " bytes)");
      std::lock_guard lock(mu_);
      if (fetched_.emplace(id, profile).second) fetched_order_.push_back(id);
      while (fetched_order_.size() > kMaxFetchedProfiles) {
        fetched_.erase(fetched_order_.front());
        fetched_order_.pop_front();
      }
    }
  }
  for (uint64_t request : waiting) {
    auto s = Find(request);
    if (!s) continue;
    Status st = failed;
    if (st.ok()) {
      auto reader = StreamReader::Open(s->header, profile.get());
      if (reader.ok()) {
        std::lock_guard decode_lock(s->decode_mu);
        s->reader = std::move(*reader);
        s->profile = profile;
      } else {
        st = reader.status().WithContext("stream header");
      }
    }
    std::lock_guard lock(mu_);
    if (!s->status.in_progress() || s->awaiting_profile != id) continue;
    if (!st.ok()) {
      FailLocked(s.get(), st);
      continue;
    }
    s->awaiting_profile.clear();
    s->last_progress = Clock::now();
    incoming_.push_back(request);
    incoming_cv_.notify_all();
  }
  return Status::Ok();
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
  const auto give_up = Clock::now() + std::chrono::milliseconds(timeout_ms);
  auto ready = [&] { return closed_ || !incoming_.empty(); };
  for (;;) {
    if (timeout_ms < 0) {
      incoming_cv_.wait(lock, ready);
    } else if (!incoming_cv_.wait_until(lock, give_up, ready)) {
      return Status(StatusCode::kTimeout,
                    "no request within " + std::to_string(timeout_ms) + " ms");
    }
    if (closed_) return Status(StatusCode::kCancelled, "receiver closed");
    const uint64_t id = incoming_.front();
    incoming_.pop_front();
    // Released already (the application may release an id it learnt of elsewhere): nothing
    // to hand out.
    auto it = requests_.find(id);
    if (it == requests_.end() || it->second->announced) continue;
    it->second->announced = true;
    return it->second->info;
  }
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
    if (!s->reader) {  // its profile is being fetched, or the fetch failed
      return s->status.in_progress()
                 ? Status(StatusCode::kNotFound, "request " + std::to_string(id) +
                                                     " is not ready: its profile is being fetched")
                 : s->status;
    }
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
  const Status failed = s->status;
  lock.unlock();
  DrainLandings(s);  // the caller may free dst once it learns of the failure
  return failed;
}

Status ReceiverCore::Wait(uint64_t id, int timeout_ms) {
  auto s = Find(id);
  KVWIRE_RETURN_ERROR_IF(!s, kNotFound, "no request " + std::to_string(id));
  std::unique_lock lock(mu_);
  auto ready = [&] {
    return closed_ || (!s->status.in_progress() && (!s->status.ok() || s->done_sent));
  };
  if (timeout_ms < 0) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) {
    return Status::InProgress();
  }
  if (closed_ && s->status.in_progress()) return Status(StatusCode::kCancelled, "receiver closed");
  const Status over = s->status;
  lock.unlock();
  DrainLandings(s);  // the caller may free dst now
  return over;
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
  std::unique_lock decode_lock(s->decode_mu);
  std::unique_lock lock(mu_);
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
  lock.unlock();
  decode_lock.unlock();
  DrainLandings(s);  // no new claims: it is over and no longer found
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
    incoming_cv_.notify_all();
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
