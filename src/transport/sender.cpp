// Sender side of a session (kvwire/session.h, docs/PROTOCOL.md).
//
// Threads: an encoder thread turns pushed layers into chunk frames and sends them (the
// transport's own send queue overlaps the wire with the next layer's encoding); a receive thread
// handles accepts, acks and completions, and reconnects after a broken connection. One mutex
// guards the session state; encoding and Send() run outside it.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <numeric>
#include <set>
#include <thread>

#include "common/log_line.h"
#include "kvwire/codec.h"
#include "kvwire/profile.h"
#include "kvwire/session.h"
#include "transport/chunk_grid.h"
#include "transport/control.h"
#include "transport/goodput.h"
#include "transport/level_chooser.h"

namespace kvwire {
namespace {

using Clock = std::chrono::steady_clock;
using transport::ChunkGrid;

// SenderOptions::encode_threads: 0 = the machine's cores, at most 4.
int EncodeThreads(int option) {
  if (option > 0) return std::min(option, 64);
  const unsigned cores = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp(cores, 1u, 4u));
}

// Threads that encode chunks for the encoder thread, which sends them in order. Tasks run in the order they were given;
// Stop() lets the queued ones finish (their futures are waited on) and joins.
class EncodePool {
 public:
  void Start(int threads) {
    for (int i = 0; i < threads; ++i) {
      try {
        threads_.emplace_back([this] { Loop(); });
      } catch (const std::system_error&) {
        break;  // fewer threads: the encoder thread still encodes what the pool cannot
      }
    }
  }
  int threads() const { return static_cast<int>(threads_.size()); }
  void Run(std::function<void()> task) {
    {
      std::lock_guard lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stopping, nothing left
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

// Until the first goodput sample, an adaptive request (a deadline or an accuracy budget) keeps at
// most this much in flight: the level chooser has no measurement yet and picks a level blind
// (the quickest to compute, or the cheapest), so a full window (64 MiB by default, half a second
// at 1 Gbit/s) would all go at that level.
// Its first goodput sample waits until half of it (or everything in flight) is acknowledged: a
// single chunk's round trip measures latency, not the link (measured: a 512 KiB fp16 chunk on an
// unshaped veth read as a third of the link's rate, enough to pick a slower compressed level).
constexpr uint64_t kProbeWindowBytes = 4 << 20;
constexpr double kProbeWindowSeconds = 0.02;
// A level limited by its codec is timed over periods of at least this long (its acks come one
// chunk at a time, after decoding).
constexpr double kDeliverySampleSeconds = 0.005;
// Its delivery rate is an exponential average of those periods, this weight on the newest: an
// error low only makes the chooser leave that level sooner, the safe side.
constexpr double kDeliveredWeight = 0.3;
// The next wait between connection attempts: doubled, capped by the options (and by a minute,
// whatever the options say).
int NextBackoff(int ms, const SenderOptions& o) {
  const int cap = std::clamp(o.max_reconnect_backoff_ms, 1, 60000);
  return ms >= cap / 2 ? cap : std::max(1, ms) * 2;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

class SenderCore;

struct SendState final : SendRequest, std::enable_shared_from_this<SendState> {
  std::weak_ptr<SenderCore> core;
  uint64_t id = 0;
  KvView kv;
  SendRequestOptions opts;
  std::unique_ptr<StreamWriter> writer;
  std::vector<uint8_t> header;
  ChunkGrid grid;
  std::vector<transport::LevelInfo> levels;
  Clock::time_point start, deadline;
  bool has_deadline = false;
  // The level whose chunks measure the link: the quickest to compute where codec speeds are
  // known (acks come after decoding, so a codec-bound level's acks measure its codec); -1: every
  // level's chunks measure it.
  int measure_level = -1;

  // Guarded by SenderCore::mu_.
  uint32_t layers_pushed = 0;
  uint32_t chunks_sent = 0;
  uint64_t elements_sent = 0;
  // Each chunk as last sent: bytes on the wire and level (bytes 0: not sent yet). A chunk to
  // resend is encoded again from the KV cache (the codecs are deterministic), so no copy of it
  // is kept.
  struct Sent {
    uint64_t bytes;
    uint32_t elements;
    uint8_t level;
  };
  std::vector<Sent> sent;     // [chunks]
  std::set<uint32_t> unacked;  // sent, not acknowledged yet
  // Threads reading `kv` outside the lock (encoding). The request is reported done only once
  // this is 0, so that the caller may free the KV cache as soon as Wait or Poll says so.
  int kv_readers = 0;
  std::vector<bool> acked;
  uint32_t acked_count = 0;
  bool end_sent = false;
  int current_level = -1;
  // Per level: elements per second its chunks were seen to be delivered (encoded, sent, decoded
  // and acknowledged) while only that level was acknowledged, an exponential average; 0 until
  // seen. Only for levels that do not measure the link: the chooser takes it over the codec
  // speeds measured before the transfer where it is slower (a codec that shares its cores with
  // other work, on either side, runs slower than it did alone).
  std::vector<double> delivered;
  Status status = Status::InProgress();
  SendStats st;

  Status PushLayer(uint32_t layer) override;
  Status PushAll() override;
  Status Poll() const override;
  Status Wait(int timeout_ms) override;
  SendStats stats() const override;
};

class SenderCore : public std::enable_shared_from_this<SenderCore> {
 public:
  explicit SenderCore(SenderOptions o) : opts_(std::move(o)) {}

  Status Start() {
    if (opts_.profile != nullptr) {
      // Served to a receiver that asks for it (ProfileRequest).
      KVWIRE_ASSIGN_OR_RETURN(profile_bytes_, opts_.profile->Serialize());
      KVWIRE_ASSIGN_OR_RETURN(profile_id_, opts_.profile->Id());  // remembered for Open
      // What a fraqtl codec derives from the profile (bases, tables, ladders: tens of ms) is
      // built now and shared by every request's codecs, not on the first request's clock.
      (void)CreateCodec("fraqtl@2", opts_.profile);
    }
    KVWIRE_ASSIGN_OR_RETURN(transport_, CreateTransport(opts_.backend));
    // The first connection gets the retries a broken one gets: a link that blips or a reset
    // while connecting is no answer from the receiver. What the receiver does answer (a wrong
    // key, another protocol version, a refused certificate) and bad options fail at once.
    int backoff = std::max(1, opts_.reconnect_backoff_ms);
    const auto give_up = Clock::now() + std::chrono::milliseconds(opts_.reconnect_window_ms);
    for (int attempt = 1;; ++attempt) {
      bool authenticated = false;
      Status s = ConnectOnce(&authenticated);
      if (s.ok()) break;
      conn_.reset();
      // An i/o error or a timeout, even once the peer has authenticated: a link that goes
      // down between the authentication and the receiver's capabilities looks exactly like
      // that. A receiver that answers (a wrong key, another protocol version) is final.
      const bool transient =
          s.code() == StatusCode::kIoError || s.code() == StatusCode::kTimeout;
      if (!transient) return s;
      const auto now = Clock::now();
      if (now >= give_up) {
        return opts_.reconnect_window_ms == 0 ? s : s.WithContext(WindowExpired(attempt));
      }
      const int wait = WaitBefore(backoff, give_up - now);
      Log("connect attempt " + std::to_string(attempt) + " failed (" + s.ToString() +
          "); retrying in " + std::to_string(wait) + " ms");
      std::this_thread::sleep_for(std::chrono::milliseconds(wait));
      backoff = NextBackoff(backoff, opts_);
    }
    Log("receiver '" + conn_->peer_name() + "' decodes " +
        std::to_string(peer_caps_.codecs_size()) + " codec families, holds " +
        std::to_string(peer_caps_.profile_ids_size()) + " profile(s)");
    if (const int n = EncodeThreads(opts_.encode_threads); n > 1) pool_.Start(n);
    encoder_ = std::thread([this] { EncodeLoop(); });
    receiver_ = std::thread([this] { ReceiveLoop(); });
    return Status::Ok();
  }

  Result<std::shared_ptr<SendRequest>> Open(const KvView& kv, const SendRequestOptions& o);
  void Close();

  // Called by SendState.
  Status Push(const std::shared_ptr<SendState>& s, uint32_t layer);
  Status PushAll(const std::shared_ptr<SendState>& s);
  Status WaitFor(SendState* s, int timeout_ms);
  Status PollOf(const SendState* s) const {
    std::lock_guard lock(mu_);
    return s->kv_readers == 0 ? s->status : Status::InProgress();
  }
  SendStats StatsOf(const SendState* s) const {
    std::lock_guard lock(mu_);
    SendStats st = s->st;
    st.goodput_bytes_per_s = goodput_.estimate();
    return st;
  }

 private:
  void EncodeLoop();
  void EncodeLayer(const std::shared_ptr<SendState>& s, uint32_t layer);
  // Chunk `seq` of `s` at `level` as a data message. Call with a kv_readers count held. The
  // frame goes into a buffer from `buffers`' pool (Connection::TakeBuffer) when it is given:
  // no allocation, zero-fill or page faults per chunk once the sent chunks come back to it.
  // Where `buffers` writes borrowed bytes itself (or lends them until sent) and the payload is
  // the KV's own bytes, the message borrows them instead: the kv_readers count must then be
  // held until it is sent (until Message::sent runs, on a connection that lends until sent).
  Result<Message> EncodeChunk(const SendState& s, uint32_t seq, uint8_t level,
                              Connection* buffers) const;
  // Ends a kv_readers count taken under mu_ (held when called).
  void ReleaseKvLocked(SendState* s) {
    if (--s->kv_readers == 0 && !s->status.in_progress()) {
      cv_.notify_all();
      done_cv_.notify_all();
    }
  }
  void ReceiveLoop();
  void Handle(const control::Control& c);
  control::Control MyCapabilities() const {
    return transport::MakeCapabilities(
        opts_.backend, profile_id_.empty() ? std::vector<std::string>{} : std::vector{profile_id_},
        opts_.max_inflight_bytes);
  }
  // Answers a ProfileRequest: the profile in pieces, or why not.
  void ServeProfile(const std::shared_ptr<Connection>& conn, const std::string& id) const;
  // One connection attempt: connect, authenticate, capabilities both ways (Open() checks every
  // level against the receiver's codec families). Sets conn_ and peer_caps_, and
  // *authenticated once the handshake succeeded.
  Status ConnectOnce(bool* authenticated);
  bool Reconnect(const Status& why);
  void FailLocked(SendState* s, Status why);
  void FailAllLocked(const Status& why);
  void FinishLocked(SendState* s, Status result);
  static void SendOn(const std::shared_ptr<Connection>& conn, const control::Control& c) {
    auto m = transport::MakeControlMessage(c);
    if (m.ok() && conn) (void)conn->Send(std::move(*m));
  }
  // A request that failed here (its KV could not be encoded) fails at the receiver too, at
  // once, instead of when the receiver's stall timeout runs out. Best effort: a broken
  // connection fails the request there anyway.
  static void TellReceiver(const std::shared_ptr<Connection>& conn, uint64_t id,
                           const Status& why) {
    SendOn(conn, transport::MakeError(id, why));
  }
  control::Control BeginMessage(const SendState& s, bool resume) const;
  // The wait before the next attempt: the backoff, or what is left of the window.
  static int WaitBefore(int backoff, Clock::duration left) {
    const auto left_ms = std::chrono::duration_cast<std::chrono::milliseconds>(left).count();
    return static_cast<int>(std::clamp<int64_t>(left_ms, 0, backoff));
  }
  std::string WindowExpired(int attempts) const {
    return std::to_string(attempts) + (attempts == 1 ? " connect attempt" : " connect attempts") +
           " in the reconnect window of " + std::to_string(opts_.reconnect_window_ms) +
           " ms failed";
  }
  // What a chunk of `level` of `s` measures when acknowledged: the link ({0, -1}) when its level
  // measures it, else that request's level's delivery ({request id, level}).
  static std::pair<uint64_t, int> SampleKey(const SendState& s, int level) {
    if (s.measure_level < 0 || level == s.measure_level) return {0, -1};
    return {s.id, level};
  }
  // In flight while the probe runs: kProbeWindowBytes, or what the best sample so far moves in
  // kProbeWindowSeconds where that is more, so a fast link is not probed through a window that
  // caps it (a probe that lasts until the rate stops growing would otherwise measure the cap).
  uint64_t ProbeWindowLocked() const {
    return std::max<uint64_t>(kProbeWindowBytes,
                              static_cast<uint64_t>(goodput_.estimate() * kProbeWindowSeconds));
  }
  void StartSampleLocked(const SendState& s, int level, Clock::time_point now) {
    sample_key_ = SampleKey(s, level);
    sample_start_ = now;
    sample_bytes_ = sample_elements_ = 0;
  }

  void Log(const std::string& line) const {
    if (opts_.verbose) WriteLogLine(stderr, "kvwire send: " + line);
  }

  const SenderOptions opts_;
  std::vector<uint8_t> profile_bytes_;  // opts_.profile serialized, and its id
  std::string profile_id_;
  control::Capabilities peer_caps_;  // the receiver's latest (guarded by mu_ once running)
  std::unique_ptr<Transport> transport_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // WaitFor's own: notified when a request finishes or its last kv reader ends, not by every
  // ack (cv_ is, for the back-pressure wait), so a caller in Wait sleeps through a transfer.
  std::condition_variable done_cv_;
  std::shared_ptr<Connection> conn_;
  std::map<uint64_t, std::shared_ptr<SendState>> requests_;
  std::deque<std::pair<std::shared_ptr<SendState>, uint32_t>> jobs_;
  uint64_t inflight_bytes_ = 0;
  // The link's goodput from acks of the level that measures it. Until its probe is over the
  // chooser sees none, so it keeps that level, and adaptive requests keep kProbeWindowBytes in
  // flight at most.
  transport::GoodputEstimator goodput_;
  // The sample period in progress: what it measures (SampleKey), since when, and what was
  // acknowledged in it.
  std::pair<uint64_t, int> sample_key_{0, -1};
  Clock::time_point sample_start_{};
  uint64_t sample_bytes_ = 0, sample_elements_ = 0;
  Clock::time_point last_ack_{};
  Clock::time_point last_heard_{};  // any message from the receiver
  Clock::time_point last_ping_{};
  uint64_t pings_ = 0;
  bool closed_ = false;
  std::thread encoder_, receiver_;
  EncodePool pool_;  // encode_threads threads when more than one, else none
};

Status SendState::PushLayer(uint32_t layer) {
  auto c = core.lock();
  KVWIRE_RETURN_ERROR_IF(!c, kCancelled, "sender closed");
  return c->Push(shared_from_this(), layer);
}
Status SendState::PushAll() {
  auto c = core.lock();
  KVWIRE_RETURN_ERROR_IF(!c, kCancelled, "sender closed");
  return c->PushAll(shared_from_this());
}
Status SendState::Poll() const {
  auto c = core.lock();
  if (!c) return status.in_progress() ? Status(StatusCode::kCancelled, "sender closed") : status;
  return c->PollOf(this);
}
Status SendState::Wait(int timeout_ms) {
  auto c = core.lock();
  if (!c) return status.in_progress() ? Status(StatusCode::kCancelled, "sender closed") : status;
  return c->WaitFor(this, timeout_ms);
}
SendStats SendState::stats() const {
  auto c = core.lock();
  return c ? c->StatsOf(this) : st;
}

control::Control SenderCore::BeginMessage(const SendState& s, bool resume) const {
  control::Control c;
  auto* b = c.mutable_request_begin();
  b->set_request_id(s.id);
  b->mutable_shape()->set_layers(s.grid.shape.layers);
  b->mutable_shape()->set_tokens(s.grid.shape.tokens);
  b->mutable_shape()->set_kv_heads(s.grid.shape.kv_heads);
  b->mutable_shape()->set_head_dim(s.grid.shape.head_dim);
  b->set_dtype(static_cast<uint32_t>(s.kv.dtype()));
  b->set_token_begin(s.opts.token_begin);
  for (const auto& l : s.opts.levels) {
    auto* lv = b->add_levels();
    lv->set_codec(l.codec);
    lv->set_bits_per_element(l.bits_per_element);
    lv->set_kl(l.kl);
  }
  b->set_profile_id(s.opts.profile_id);
  b->set_max_kl(s.opts.max_kl);
  b->set_min_bits(s.opts.min_bits);
  b->set_deadline_ms(static_cast<uint64_t>(std::max(0, s.opts.deadline_ms)));
  b->set_chunk_tokens(s.grid.chunk_tokens);
  b->set_stream_header(s.header.data(), s.header.size());
  b->set_resume(resume);
  b->set_user_data(s.opts.user_data);
  return c;
}

Result<std::shared_ptr<SendRequest>> SenderCore::Open(const KvView& kv,
                                                      const SendRequestOptions& o) {
  KVWIRE_RETURN_ERROR_IF(o.request_id == 0, kInvalidArgument, "request_id must not be 0");
  KVWIRE_RETURN_ERROR_IF(o.levels.empty() || o.levels.size() > kMaxLevels, kInvalidArgument,
                         "a request needs 1.." + std::to_string(kMaxLevels) + " levels");
  KVWIRE_RETURN_ERROR_IF(o.user_data.size() > kMaxRequestUserDataBytes, kInvalidArgument,
                         "user_data longer than " + std::to_string(kMaxRequestUserDataBytes) +
                             " bytes");
  KVWIRE_RETURN_IF_ERROR(ValidateShape(kv.shape()));
  auto s = std::make_shared<SendState>();
  s->core = weak_from_this();
  s->id = o.request_id;
  s->kv = kv;
  s->opts = o;
  // The stream writer makes each level's codec, once for the request: its codecs encode every
  // chunk, and they give the canonical specs and token alignments used below.
  StreamInfo info;
  info.shape = kv.shape();
  info.dtype = kv.dtype();
  info.token_begin = o.token_begin;
  info.metadata = o.metadata;
  info.profile_id = o.profile_id;
  for (const auto& l : s->opts.levels) info.levels.push_back(l.codec);
  KVWIRE_ASSIGN_OR_RETURN(s->writer, StreamWriter::Create(info, {}, opts_.profile));
  uint32_t alignment = 1;
  for (size_t i = 0; i < s->opts.levels.size(); ++i) {
    auto& l = s->opts.levels[i];
    const Codec& codec = s->writer->codec(static_cast<uint8_t>(i));
    KVWIRE_ASSIGN_OR_RETURN(const std::string family,
                            transport::CodecFamilyOf(l.codec, opts_.profile));
    {
      std::lock_guard lock(mu_);
      const auto& theirs = peer_caps_.codecs();
      KVWIRE_RETURN_ERROR_IF(std::find(theirs.begin(), theirs.end(), family) == theirs.end(),
                             kUnsupported,
                             "the receiver cannot decode codec '" + l.codec + "' (family '" +
                                 family + "' is not among its " +
                                 std::to_string(theirs.size()) + " codec families)");
    }
    // The stream header records canonical specs ("kivi2" -> "kivi2:g=32,r=32"); RequestBegin
    // must name the same ones, or the receiver refuses the request.
    l.codec = codec.Spec();
    alignment = std::lcm(alignment, std::max<uint32_t>(codec.TokenAlignment(), 1));
    s->levels.push_back(
        {l.bits_per_element, l.kl, l.encode_elements_per_s, l.decode_elements_per_s});
    const double speed = std::min(l.encode_elements_per_s, l.decode_elements_per_s);
    if (speed > 0 && (s->measure_level < 0 ||
                      speed > std::min(s->opts.levels[s->measure_level].encode_elements_per_s,
                                       s->opts.levels[s->measure_level].decode_elements_per_s))) {
      s->measure_level = static_cast<int>(s->levels.size() - 1);
    }
  }
  KVWIRE_ASSIGN_OR_RETURN(
      s->grid, ChunkGrid::Make(kv.shape(), o.token_begin,
                               ChunkGrid::Normalize(kv.shape(), o.chunk_tokens, alignment)));
  KVWIRE_RETURN_IF_ERROR(s->writer->WriteHeader(&s->header));
  s->acked.assign(s->grid.total(), false);
  s->sent.assign(s->grid.total(), SendState::Sent{0, 0, 0});
  s->delivered.assign(s->levels.size(), 0);
  s->st.chunks_per_level.assign(o.levels.size(), 0);
  s->start = Clock::now();
  s->has_deadline = o.deadline_ms > 0;
  s->deadline = s->start + std::chrono::milliseconds(o.deadline_ms);
  std::shared_ptr<Connection> conn;
  {
    std::lock_guard lock(mu_);
    KVWIRE_RETURN_ERROR_IF(closed_, kCancelled, "sender closed");
    KVWIRE_RETURN_ERROR_IF(requests_.count(o.request_id), kInvalidArgument,
                           "request " + std::to_string(o.request_id) + " already open");
    requests_[o.request_id] = s;
    conn = conn_;
  }
  SendOn(conn, BeginMessage(*s, false));
  Log("request " + std::to_string(s->id) + ": " + std::to_string(s->grid.total()) + " chunks of " +
      std::to_string(s->grid.chunk_tokens) + " tokens, " + std::to_string(o.levels.size()) +
      " levels");
  return std::shared_ptr<SendRequest>(s);
}

Status SenderCore::Push(const std::shared_ptr<SendState>& s, uint32_t layer) {
  std::lock_guard lock(mu_);
  if (!s->status.in_progress())
    return s->status.ok() ? Status(StatusCode::kInvalidArgument, "request already complete")
                          : s->status;
  KVWIRE_RETURN_ERROR_IF(layer != s->layers_pushed, kInvalidArgument,
                         "layer " + std::to_string(layer) + " pushed, expected layer " +
                             std::to_string(s->layers_pushed) + " (increasing order, each once)");
  ++s->layers_pushed;
  jobs_.emplace_back(s, layer);
  cv_.notify_all();
  return Status::Ok();
}

Status SenderCore::PushAll(const std::shared_ptr<SendState>& s) {
  std::lock_guard lock(mu_);
  if (!s->status.in_progress()) return s->status;
  while (s->layers_pushed < s->grid.shape.layers) jobs_.emplace_back(s, s->layers_pushed++);
  cv_.notify_all();
  return Status::Ok();
}

Status SenderCore::WaitFor(SendState* s, int timeout_ms) {
  std::unique_lock lock(mu_);
  auto done = [&] { return !s->status.in_progress() && s->kv_readers == 0; };
  if (timeout_ms < 0) {
    done_cv_.wait(lock, done);
  } else {
    done_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), done);
  }
  return s->status;
}

void SenderCore::FailLocked(SendState* s, Status why) {
  if (!s->status.in_progress()) return;
  Log("request " + std::to_string(s->id) + " failed: " + why.ToString());
  FinishLocked(s, std::move(why));
}

void SenderCore::FinishLocked(SendState* s, Status result) {
  s->status = std::move(result);
  s->st.seconds = Seconds(Clock::now() - s->start);
  for (uint32_t seq : s->unacked) inflight_bytes_ -= s->sent[seq].bytes;
  s->unacked.clear();
  requests_.erase(s->id);
  cv_.notify_all();
  done_cv_.notify_all();
}

void SenderCore::FailAllLocked(const Status& why) {
  std::vector<std::shared_ptr<SendState>> all;
  for (auto& [id, s] : requests_) all.push_back(s);
  for (auto& s : all) FailLocked(s.get(), why);
}

void SenderCore::EncodeLoop() {
  for (;;) {
    std::pair<std::shared_ptr<SendState>, uint32_t> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return closed_ || !jobs_.empty(); });
      if (closed_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
      if (!job.first->status.in_progress()) continue;
    }
    EncodeLayer(job.first, job.second);
  }
}

Result<Message> SenderCore::EncodeChunk(const SendState& s, uint32_t seq, uint8_t level,
                                        Connection* buffers) const {
  const ChunkGrid& g = s.grid;
  const uint32_t layer = g.LayerOf(seq), idx = g.IndexOf(seq);
  const KvKind kind = g.KindOf(seq);
  // Sized for the chunk at fp16, which the fp16 level fills exactly; a level of 8 to 16 bits
  // fills at least half of it (StreamWriter::EncodeChunkInto replaces the contents). Smaller
  // levels allocate their frame as before: a pooled fp16-sized buffer per chunk in flight would
  // hold up to 16x the window in memory.
  std::vector<uint8_t> frame;
  // A connection that writes borrowed bytes itself, or sends them later from where they lie
  // (LendsUntilSent), sends the fp16 level's payload straight from the caller's KV (the rows
  // where they lie): no copy into a frame, no frame buffer at all.
  const bool lend = s.opts.lend_kv && buffers != nullptr &&
                    (buffers->WritesBorrowed() || buffers->LendsUntilSent()) &&
                    s.writer->PayloadIsView(s.kv, level);
  if (buffers != nullptr && !lend && level < s.levels.size() &&
      s.levels[level].bits_per_element >= 8) {
    frame = buffers->TakeBuffer(kChunkHeaderBytes +
                                2 * uint64_t{g.Tokens(idx)} * g.shape.kv_heads * g.shape.head_dim);
  }
  std::span<const uint8_t> borrowed;
  KVWIRE_RETURN_IF_ERROR(s.writer->EncodeChunkBorrowing(s.kv, layer, kind, g.TokenBegin(idx),
                                                        g.Tokens(idx), level, &frame,
                                                        lend ? &borrowed : nullptr));
  control::ChunkDescriptor d;
  d.set_request_id(s.id);
  d.set_seq(seq);
  d.set_layer(layer);
  d.set_kind(static_cast<uint32_t>(kind));
  d.set_token_begin(g.TokenBegin(idx));
  d.set_tokens(g.Tokens(idx));
  d.set_level(level);
  d.set_payload_bytes(static_cast<uint32_t>(frame.size() + borrowed.size()));
  return transport::MakeDataMessage(d, std::move(frame), borrowed);
}

void SenderCore::EncodeLayer(const std::shared_ptr<SendState>& s, uint32_t layer) {
  const ChunkGrid& g = s->grid;
  const uint64_t row = uint64_t{g.shape.kv_heads} * g.shape.head_dim;
  // The layer's chunks in order, K then V. With a pool, up to its threads + 1 of them are chosen
  // a level and handed to it at once (one waits for the first thread to free up); they are
  // sent one by one in order, each after the back-pressure wait, as they finish. Without one,
  // each is encoded here.
  struct Pending {
    uint32_t seq, tokens;
    KvKind kind;
    transport::LevelChoiceInput in;
    transport::LevelChoice choice;
    std::future<Result<Message>> msg;
  };
  std::vector<std::pair<KvKind, uint32_t>> order;
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    for (uint32_t idx = 0; idx < g.per_tensor; ++idx) order.emplace_back(kind, idx);
  }
  const size_t ahead = pool_.threads() > 0 ? size_t(pool_.threads()) + 1 : 1;
  std::deque<Pending> queue;
  size_t next = 0;
  // Waits for the chunks still being encoded and returns their kv_readers counts.
  auto drain = [&] {
    for (Pending& p : queue) p.msg.wait();
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < queue.size(); ++i) ReleaseKvLocked(s.get());
    queue.clear();
  };
  // Chooses the next chunk's level and starts its encode; false once the request ended.
  auto submit = [&]() -> bool {
    const auto [kind, idx] = order[next];
    Pending p;
    p.seq = g.Seq(layer, kind, idx);
    p.tokens = g.Tokens(idx);
    p.kind = kind;
    p.in.levels = s->levels;
    p.in.max_kl = s->opts.max_kl;
    p.in.min_bits = s->opts.min_bits;
    std::shared_ptr<Connection> buffers;  // the connection whose pool the frame comes from
    {
      std::lock_guard lock(mu_);
      if (!s->status.in_progress() || closed_) return false;
      p.in.goodput_bytes_per_s = goodput_.for_chooser();
      for (size_t i = 0; i < p.in.levels.size() && i < s->delivered.size(); ++i) {
        p.in.levels[i].delivered_elements_per_s = s->delivered[i];
      }
      p.in.inflight_bytes = inflight_bytes_;
      p.in.remaining_elements = g.shape.elements() - s->elements_sent;
      for (const Pending& q : queue) {  // chosen but not yet counted as sent
        p.in.remaining_elements -= std::min<uint64_t>(p.in.remaining_elements, q.tokens * row);
      }
      ++s->kv_readers;
      buffers = conn_;
    }
    if (s->has_deadline)
      p.in.remaining_ms = std::max(0.0, Seconds(s->deadline - Clock::now()) * 1000);
    p.choice = transport::ChooseLevel(p.in);
    const uint32_t seq = p.seq;
    const auto level = static_cast<uint8_t>(p.choice.level);
    auto task = std::make_shared<std::packaged_task<Result<Message>()>>(
        [this, s, seq, level, buffers] { return EncodeChunk(*s, seq, level, buffers.get()); });
    p.msg = task->get_future();
    if (ahead == 1) {
      (*task)();
    } else {
      pool_.Run([task] { (*task)(); });
    }
    queue.push_back(std::move(p));
    ++next;
    return true;
  };
  while (next < order.size() || !queue.empty()) {
    while (queue.size() < ahead && next < order.size()) {
      if (!submit()) return drain();
    }
    Pending p = std::move(queue.front());
    queue.pop_front();
    Result<Message> msg = p.msg.get();
    const uint32_t seq = p.seq, tokens = p.tokens;
    const KvKind kind = p.kind;
    const transport::LevelChoiceInput& in = p.in;
    const transport::LevelChoice& choice = p.choice;
    {
      std::shared_ptr<Connection> conn;
      control::Control level_change;
      // A message that borrows the KV's bytes keeps its kv_readers count until it is sent.
      const bool borrows = msg.ok() && !msg->borrowed.empty();
      {
        std::unique_lock lock(mu_);
        if (!borrows) ReleaseKvLocked(s.get());
        if (!msg.ok()) {
          const Status why = msg.status().WithContext("encode");
          FailLocked(s.get(), why);
          conn = conn_;
          lock.unlock();
          TellReceiver(conn, s->id, why);
          return drain();
        }
        // Back-pressure: wait for acks while the window is full (one message always fits).
        const uint64_t bytes = msg->bytes();
        auto room = [&] {
          // Adaptive requests (a deadline or an accuracy budget) probe the link first.
          const bool adaptive = s->has_deadline || s->opts.max_kl > 0;
          const uint64_t window = adaptive && !goodput_.ready()
                                      ? std::min(opts_.max_inflight_bytes, ProbeWindowLocked())
                                      : opts_.max_inflight_bytes;
          return closed_ || !s->status.in_progress() || inflight_bytes_ == 0 ||
                 inflight_bytes_ + bytes <= window;
        };
        // Acks, a failure or Close() make room; a stall is the receive thread's to judge
        // (it reconnects over a silent link, fails a receiver that answers but never acks).
        while (!room()) cv_.wait_for(lock, std::chrono::milliseconds(200));
        if (closed_ || !s->status.in_progress()) {
          if (borrows) ReleaseKvLocked(s.get());
          lock.unlock();
          return drain();
        }
        if (inflight_bytes_ == 0) {
          StartSampleLocked(*s, static_cast<int>(choice.level), Clock::now());
          last_ack_ = last_heard_ = Clock::now();
        }
        inflight_bytes_ += bytes;
        s->sent[seq] = {bytes, tokens * static_cast<uint32_t>(row),
                        static_cast<uint8_t>(choice.level)};
        s->unacked.insert(seq);
        ++s->chunks_sent;
        s->elements_sent += uint64_t{tokens} * row;
        ++s->st.chunks;
        s->st.wire_bytes += bytes;
        ++s->st.chunks_per_level[choice.level];
        if (s->current_level != int(choice.level)) {
          auto* lc = level_change.mutable_level_change();
          lc->set_request_id(s->id);
          lc->set_from_level(s->current_level < 0 ? choice.level : uint32_t(s->current_level));
          lc->set_to_level(choice.level);
          lc->set_goodput_bytes_per_s(in.goodput_bytes_per_s);
          lc->set_remaining_ms(static_cast<uint64_t>(std::max(0.0, in.remaining_ms)));
          lc->set_reason(choice.reason.substr(0, 256));
          Log("request " + std::to_string(s->id) + " layer " + std::to_string(layer) + " " +
              std::string(KvKindName(kind)) + ": level " + std::to_string(s->current_level) +
              " -> " + std::to_string(choice.level) + " (" + s->opts.levels[choice.level].codec +
              "): " + choice.reason);
          s->current_level = static_cast<int>(choice.level);
        }
        conn = conn_;
      }
      if (level_change.has_level_change()) SendOn(conn, level_change);
      // A failed send is not fatal here: the receive thread reconnects and resends what the
      // receiver does not hold.
      if (conn && borrows && conn->LendsUntilSent()) {
        // The connection sends the KV's rows after Send returns; the count ends when it is
        // done with them (it calls this on its own thread, or in Close: never with mu_ held).
        msg->sent = [this, s] {
          std::lock_guard lock(mu_);
          ReleaseKvLocked(s.get());
        };
        (void)conn->Send(std::move(*msg));
      } else {
        if (conn) (void)conn->Send(std::move(*msg));
        if (borrows) {
          std::lock_guard lock(mu_);
          ReleaseKvLocked(s.get());
        }
      }
    }
  }
  if (layer + 1 == s->grid.shape.layers) {
    control::Control end;
    end.mutable_request_end()->set_request_id(s->id);
    end.mutable_request_end()->set_chunks(s->grid.total());
    std::shared_ptr<Connection> conn;
    {
      std::lock_guard lock(mu_);
      s->end_sent = true;
      conn = conn_;
    }
    SendOn(conn, end);
  }
}

void SenderCore::ReceiveLoop() {
  for (;;) {
    std::shared_ptr<Connection> conn;
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      conn = conn_;
    }
    auto m = conn->Receive(200);
    if (!m.ok()) {
      if (m.status().code() == StatusCode::kTimeout) {
        // With chunks in flight: a receiver that says nothing at all for the stall timeout
        // (pings unanswered) sits behind a link that went silent (cable, switch, route: no
        // reset ever comes), so the connection counts as broken and a new one is tried. One
        // that answers pings but acknowledges nothing that long is stuck: its requests fail.
        const auto stall = std::chrono::milliseconds(opts_.stall_timeout_ms);
        bool silent = false, ping = false;
        {
          std::lock_guard lock(mu_);
          const auto now = Clock::now();
          if (inflight_bytes_ > 0) {
            if (now - last_heard_ > stall) {
              silent = true;
            } else if (now - last_ack_ > stall) {
              FailAllLocked(Status(StatusCode::kTimeout,
                                   "stalled: the receiver answers but acknowledged nothing for " +
                                       std::to_string(opts_.stall_timeout_ms) + " ms"));
            } else if (now - last_heard_ > stall / 4 && now - last_ping_ > stall / 4) {
              last_ping_ = now;
              ping = true;
            }
          }
        }
        if (ping) {
          control::Control c;
          c.mutable_ping()->set_nonce(++pings_);
          SendOn(conn, c);
        }
        if (silent && !Reconnect(Status(StatusCode::kTimeout,
                                        "nothing heard from the receiver for " +
                                            std::to_string(opts_.stall_timeout_ms) + " ms")))
          return;
        continue;
      }
      {
        std::lock_guard lock(mu_);
        if (closed_) return;
      }
      if (!Reconnect(m.status())) return;
      continue;
    }
    {
      std::lock_guard lock(mu_);
      last_heard_ = Clock::now();
    }
    Status bad;
    if (m->kind != MessageKind::kControl) {
      bad = Status(StatusCode::kCorrupt, "receiver sent a data message");
    } else {
      auto c = transport::ParseControl(m->meta);
      if (c.ok()) {
        Handle(*c);
        continue;
      }
      bad = c.status();
    }
    {
      std::lock_guard lock(mu_);
      FailAllLocked(bad.WithContext("protocol violation by the receiver"));
    }
    conn->Close();  // not under mu_: a connection's Close may end lent sends (Message::sent)
    return;
  }
}

void SenderCore::ServeProfile(const std::shared_ptr<Connection>& conn,
                              const std::string& id) const {
  control::Control m;
  auto* d = m.mutable_profile_data();
  d->set_profile_id(id);
  if (id != profile_id_) {
    const std::string why = profile_id_.empty()
                                ? "the sender holds no profile"
                                : "the sender holds profile '" + profile_id_ + "', not this one";
    Log("receiver asked for profile '" + id + "': " + why);
    d->set_status_code(static_cast<uint32_t>(StatusCode::kNotFound));
    d->set_message(why);
    d->set_last(true);
    SendOn(conn, m);
    return;
  }
  Log("sending profile " + id + " (" + std::to_string(profile_bytes_.size()) +
      " bytes) to the receiver");
  d->set_total_bytes(profile_bytes_.size());
  size_t offset = 0;
  do {
    const size_t n = std::min(transport::kMaxProfileDataBytes, profile_bytes_.size() - offset);
    d->set_offset(offset);
    d->set_data(profile_bytes_.data() + offset, n);
    offset += n;
    d->set_last(offset == profile_bytes_.size());
    SendOn(conn, m);
  } while (offset < profile_bytes_.size());
}

void SenderCore::Handle(const control::Control& c) {
  std::unique_lock lock(mu_);
  auto find = [&](uint64_t id) -> SendState* {
    auto it = requests_.find(id);
    return it == requests_.end() ? nullptr : it->second.get();
  };
  switch (c.body_case()) {
    case control::Control::kRequestAccept: {
      SendState* s = find(c.request_accept().request_id());
      if (!s) return;
      if (c.request_accept().fresh() && s->st.reconnects > 0 && s->acked_count > 0) {
        // The receiver holds nothing of a request it acknowledged chunks of: it restarted.
        const std::string what = "the receiver restarted and lost " +
                                 std::to_string(s->acked_count) +
                                 " acknowledged chunks of request " + std::to_string(s->id);
        if (!opts_.resend_after_receiver_restart) {
          return FailLocked(s, Status(StatusCode::kIoError,
                                      what + " (resending after a receiver restart is off)"));
        }
        Log(what + ": sending the request again from the start");
        for (uint32_t seq = 0; seq < s->acked.size(); ++seq) {
          if (!s->acked[seq]) continue;
          s->acked[seq] = false;
          s->unacked.insert(seq);
          inflight_bytes_ += s->sent[seq].bytes;
        }
        s->acked_count = 0;
      }
      // After a resume: drop what the receiver holds, resend the rest of what was sent.
      for (uint32_t seq : c.request_accept().have_chunks()) {
        if (s->unacked.erase(seq)) inflight_bytes_ -= s->sent[seq].bytes;
        if (seq < s->acked.size() && !s->acked[seq]) {
          s->acked[seq] = true;
          ++s->acked_count;
        }
      }
      std::vector<std::pair<uint32_t, uint8_t>> resend;  // seq, level
      if (c.request_accept().have_chunks_size() > 0 || s->st.reconnects > 0) {
        for (uint32_t seq : s->unacked) resend.emplace_back(seq, s->sent[seq].level);
      }
      if (resend.empty() || !s->status.in_progress()) return;
      s->st.resent_chunks += resend.size();
      const bool end = s->end_sent;
      const uint64_t id = s->id;
      const uint32_t total = s->grid.total();
      auto conn = conn_;
      std::shared_ptr<SendState> keep = requests_.at(id);
      ++s->kv_readers;
      lock.unlock();
      Status failed;
      for (const auto& [seq, level] : resend) {
        Result<Message> msg = EncodeChunk(*keep, seq, level, conn.get());
        if (!msg.ok()) {
          failed = msg.status().WithContext("encode for resending");
          break;
        }
        (void)conn->Send(std::move(*msg));
      }
      lock.lock();
      ReleaseKvLocked(keep.get());
      if (!failed.ok()) {
        FailLocked(keep.get(), failed);
        lock.unlock();
        return TellReceiver(conn, id, failed);
      }
      lock.unlock();
      if (end) {
        control::Control e;
        e.mutable_request_end()->set_request_id(id);
        e.mutable_request_end()->set_chunks(total);
        SendOn(conn, e);
      }
      return;
    }
    case control::Control::kCapabilities:
      peer_caps_ = c.capabilities();  // the receiver's, again after a reconnect
      return;
    case control::Control::kProfileRequest: {
      auto conn = conn_;
      lock.unlock();
      ServeProfile(conn, c.profile_request().profile_id());
      return;
    }
    case control::Control::kAck: {
      SendState* s = find(c.ack().request_id());
      const auto now = Clock::now();
      last_ack_ = now;
      if (!s) return;
      uint64_t freed = 0, elements = 0;
      bool other = false;  // a chunk of another sample period than the current one
      for (uint32_t seq : c.ack().seqs()) {
        if (s->unacked.erase(seq)) {
          freed += s->sent[seq].bytes;
          elements += s->sent[seq].elements;
          other = other || SampleKey(*s, s->sent[seq].level) != sample_key_;
        }
        if (seq < s->acked.size() && !s->acked[seq]) {
          s->acked[seq] = true;
          ++s->acked_count;
        }
      }
      inflight_bytes_ -= freed;
      if (other) {  // a period measures one thing (the link, or one level's codec): start anew
        const uint32_t first = *c.ack().seqs().begin();
        StartSampleLocked(*s, first < s->sent.size() ? s->sent[first].level : -1, now);
        cv_.notify_all();
        return;
      }
      sample_bytes_ += freed;
      sample_elements_ += elements;
      const double dt = Seconds(now - sample_start_);
      if (sample_key_.second >= 0) {  // a level limited by its codec: its delivery rate
        if (dt >= kDeliverySampleSeconds) {
          double& d = s->delivered[sample_key_.second];
          const double rate = double(sample_elements_) / dt;
          d = d > 0 ? (1 - kDeliveredWeight) * d + kDeliveredWeight * rate : rate;
          StartSampleLocked(*s, sample_key_.second, now);
        }
        cv_.notify_all();
        return;
      }
      // Samples span >= 2 ms, except the first: it ends the probe window above (once half of it
      // or all in flight is acknowledged), and a link fast enough to drain that window in under
      // 2 ms would otherwise never be measured.
      const bool first = goodput_.samples() == 0 && dt > 0 &&
                         (inflight_bytes_ == 0 || sample_bytes_ >= kProbeWindowBytes / 2);
      if ((first || (goodput_.samples() > 0 && dt >= 0.002)) && sample_bytes_ > 0) {
        const bool was_ready = goodput_.ready();
        goodput_.AddSample(double(sample_bytes_), dt);
        if (!was_ready) {
          Log("link probe sample " + std::to_string(goodput_.samples()) + ": " +
              std::to_string(sample_bytes_) + " bytes in " +
              std::to_string(static_cast<int64_t>(dt * 1e6)) + " us");
        }
        if (!was_ready && goodput_.ready()) {
          Log("link probe done after " + std::to_string(goodput_.samples()) + " samples: " +
              std::to_string(static_cast<int64_t>(goodput_.estimate() / 1e6)) + " MB/s");
        }
        StartSampleLocked(*s, -1, now);
      }
      cv_.notify_all();
      return;
    }
    case control::Control::kRequestDone: {
      SendState* s = find(c.request_done().request_id());
      if (!s) return;
      const uint32_t code = c.request_done().status_code();
      if (code == 0) {
        if (s->acked_count != s->grid.total()) {
          FailLocked(s, Status(StatusCode::kCorrupt,
                               "receiver reported done before acknowledging every chunk"));
        } else {
          Log("request " + std::to_string(s->id) + " done");
          FinishLocked(s, Status::Ok());
        }
      } else {
        control::Error e;
        e.set_status_code(code);
        e.set_message(c.request_done().message());
        FailLocked(s, transport::ErrorToStatus(e));
      }
      return;
    }
    case control::Control::kError: {
      const Status why = transport::ErrorToStatus(c.error());
      if (c.error().request_id() == 0) {
        FailAllLocked(why);
      } else if (SendState* s = find(c.error().request_id())) {
        FailLocked(s, why);
      }
      return;
    }
    default:
      return;  // informational messages (pong, capabilities) need no action
  }
}

Status SenderCore::ConnectOnce(bool* authenticated) {
  KVWIRE_ASSIGN_OR_RETURN(std::unique_ptr<Connection> c, transport_->Connect(opts_.transport));
  conn_ = std::move(c);
  *authenticated = true;
  SendOn(conn_, MyCapabilities());
  auto first = conn_->Receive(opts_.transport.handshake_timeout_ms);
  if (!first.ok()) return first.status().WithContext("waiting for the receiver's capabilities");
  KVWIRE_RETURN_ERROR_IF(first->kind != MessageKind::kControl, kCorrupt,
                         "receiver sent a data message first");
  KVWIRE_ASSIGN_OR_RETURN(control::Control caps, transport::ParseControl(first->meta));
  if (caps.has_error()) return transport::ErrorToStatus(caps.error()).WithContext("receiver");
  // A ucx receiver answers a tcp connection with its UCX address: the peer runs another backend.
  KVWIRE_RETURN_ERROR_IF(caps.has_ucx_address(), kUnsupported,
                         "the receiver uses the ucx backend, not " + opts_.backend +
                             ": connect with backend 'ucx' (kvwire send --backend ucx)");
  KVWIRE_RETURN_ERROR_IF(!caps.has_capabilities(), kCorrupt,
                         "expected the receiver's capabilities, got " +
                             transport::ControlName(caps));
  peer_caps_ = caps.capabilities();
  return Status::Ok();
}

bool SenderCore::Reconnect(const Status& why) {
  Log("connection lost (" + why.ToString() + "); reconnecting");
  {
    std::shared_ptr<Connection> old;
    {
      std::lock_guard lock(mu_);
      old = conn_;
    }
    if (old) old->Close();  // wakes an encoder blocked sending on it
  }
  int backoff = std::max(1, opts_.reconnect_backoff_ms);
  const auto give_up = Clock::now() + std::chrono::milliseconds(opts_.reconnect_window_ms);
  Status last = why;
  for (int attempt = 1;; ++attempt) {
    {
      std::unique_lock lock(mu_);
      const auto now = Clock::now();
      // A request whose deadline passed fails now; the others keep the window.
      std::vector<std::shared_ptr<SendState>> late;
      for (auto& [id, s] : requests_)
        if (s->has_deadline && now >= s->deadline) late.push_back(s);
      for (auto& s : late)
        FailLocked(s.get(), last.WithContext("its deadline passed while reconnecting"));
      if (now >= give_up) break;
      // Not at once, even the first time: what broke the connection (a reset sweeping a host's
      // connections, a peer restarting) is often still going on a few ms later, and UCX 1.13
      // aborts the process when a reset hits an endpoint in its wireup.
      const int wait = WaitBefore(backoff, give_up - now);
      backoff = NextBackoff(backoff, opts_);
      // Close() wakes this wait.
      if (cv_.wait_for(lock, std::chrono::milliseconds(wait), [&] { return closed_; }))
        return false;
    }
    auto c = transport_->Connect(opts_.transport);
    if (!c.ok()) {
      last = c.status();
      Log("reconnect attempt " + std::to_string(attempt) + " failed: " + last.ToString());
      continue;
    }
    std::shared_ptr<Connection> conn = std::move(*c);
    {
      std::unique_lock lock(mu_);
      if (closed_) {
        lock.unlock();
        conn->Close();
        return false;
      }
      // The capabilities and every request's begin are queued on the new connection before it
      // is published: the encoder thread (and a resend) take conn_ under mu_, so no chunk can
      // reach a receiver ahead of its request's begin (a restarted receiver answers such a
      // chunk with "unknown request"), and a request opened meanwhile is in the list.
      SendOn(conn, MyCapabilities());
      for (auto& [id, s] : requests_) {
        ++s->st.reconnects;
        SendOn(conn, BeginMessage(*s, true));
      }
      conn_ = conn;
      last_ack_ = last_heard_ = Clock::now();
    }
    Log("reconnected after " + std::to_string(attempt) + " attempt(s)");
    return true;
  }
  std::lock_guard lock(mu_);
  FailAllLocked(last.WithContext("connection lost; " +
                                 (opts_.reconnect_window_ms > 0
                                      ? std::string("no reconnection within the window of ") +
                                            std::to_string(opts_.reconnect_window_ms) + " ms"
                                      : std::string("reconnection is off"))));
  closed_ = true;
  cv_.notify_all();
  return false;
}

void SenderCore::Close() {
  std::shared_ptr<Connection> conn;
  {
    std::lock_guard lock(mu_);
    FailAllLocked(Status(StatusCode::kCancelled, "sender closed"));
    closed_ = true;
    conn = conn_;
    cv_.notify_all();
  }
  // Closing first wakes an encoder blocked in Send (transport back-pressure).
  if (conn) conn->Close();
  if (encoder_.joinable()) encoder_.join();
  pool_.Stop();
  if (receiver_.joinable()) receiver_.join();
}

class SenderHandle final : public Sender {
 public:
  explicit SenderHandle(std::shared_ptr<SenderCore> core) : core_(std::move(core)) {}
  ~SenderHandle() override { core_->Close(); }
  Result<std::shared_ptr<SendRequest>> Open(const KvView& kv,
                                            const SendRequestOptions& o) override {
    return core_->Open(kv, o);
  }
  void Close() override { core_->Close(); }

 private:
  std::shared_ptr<SenderCore> core_;
};

}  // namespace

Result<std::unique_ptr<Sender>> Sender::Connect(const SenderOptions& options) {
  auto core = std::make_shared<SenderCore>(options);
  KVWIRE_RETURN_IF_ERROR(core->Start());
  return std::unique_ptr<Sender>(std::make_unique<SenderHandle>(std::move(core)));
}

}  // namespace kvwire
