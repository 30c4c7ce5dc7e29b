// ucx backend: UCP active messages on one endpoint per connection; large messages by
// rendezvous (the receiver pulls the payload straight into a buffer of the connection's pool,
// buffer_pool.h, or into the memory its landing function names, Connection::SetLanding; the
// meta, and a data message's chunk header, ride in the AM header, so the data is one contiguous
// buffer).
// Bootstrap: an authenticated TCP connection (tcp_connection.h) on which both ends exchange
// their UCP worker address; it stays open as the liveness channel.
//
// Threading: the UCP worker is single-threaded; every UCP call happens on the connection's
// progress thread. Send() queues (bounded) and wakes it through an eventfd when it sleeps; the
// thread sleeps on the worker's event fd and the eventfd when there is nothing to do, at once by
// default, or after polling for TransportOptions::busy_poll_us while a transfer is in flight.
//
// Order: every message carries a sequence number and the receiver delivers in sequence order, so
// a rendezvous message that completes after a later eager one does not overtake it. A "goodbye"
// message with the last sequence number makes a graceful close lossless; the peer answers it with
// its own goodbye, after which the closing side can force-close its endpoint without waiting.
#include <poll.h>
#include <sys/eventfd.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <thread>

#include "transport/auth.h"
#include "transport/backends.h"
#include "transport/buffer_pool.h"
#include "transport/control.h"
#include "transport/framing.h"
#include "transport/tcp_connection.h"
#include "transport/tls.h"

namespace kvwire::transport {
namespace {

constexpr unsigned kAmId = 17;
// Data above this moves by rendezvous, which is also how the receiver back-pressures: it pulls
// (and the sender's send completes) only while its receive queue is under the bound.
constexpr size_t kForceRndvBytes = 64u << 10;
constexpr uint8_t kGoodbye = 3;
// AmHeader::flags: the meta follows the AmHeader in the AM header, and the AM data is the payload
// alone, one contiguous buffer on both ends (UCX moves a contiguous buffer faster than an IOV).
// Without it, the data is meta then payload (a meta too large for the AM header).
constexpr uint8_t kMetaInHeader = 1;
// With kMetaInHeader on a data message: the payload's first kLandingHeadBytes (the chunk header)
// follow the meta in the AM header and the AM data is the rest of the payload, so the receiver
// can choose where the rest lands (SetLanding) before it pulls it.
constexpr uint8_t kHeadInHeader = 2;

struct AmHeader {
  uint64_t seq;
  uint32_t meta_bytes;
  uint8_t kind;  // MessageKind or kGoodbye
  uint8_t flags;
  uint8_t pad[2];
};
static_assert(sizeof(AmHeader) == 16);

Status UcsStatus(const std::string& what, ucs_status_t s) {
  return Status(StatusCode::kIoError, what + ": " + ucs_status_string(s));
}

// RAII holders for the UCP objects of one connection (destroyed in reverse order).
struct UcpContext {
  ucp_context_h h = nullptr;
  ~UcpContext() {
    if (h) ucp_cleanup(h);
  }
};
struct UcpWorker {
  ucp_worker_h h = nullptr;
  ~UcpWorker() {
    if (h) ucp_worker_destroy(h);
  }
};
struct FdHolder {
  int fd = -1;
  ~FdHolder() {
    if (fd >= 0) ::close(fd);
  }
};

class UcxConnection final : public Connection {
 public:
  static Result<std::unique_ptr<UcxConnection>> Create(std::unique_ptr<TcpConnection> tcp,
                                                       const TransportOptions& options);
  ~UcxConnection() override { Close(); }

  Status Send(Message msg) override {
    KVWIRE_RETURN_IF_ERROR(ValidateMessageBounds(msg));
    // Sent by the progress thread, after Send returned: borrowed bytes are copied, unless the
    // caller lends them until `sent` (LendsUntilSent).
    if (!msg.sent || msg.borrowed.empty()) {
      if (msg.sent) std::exchange(msg.sent, nullptr)();  // nothing lent
      CopyBorrowed(&msg);
      KVWIRE_RETURN_IF_ERROR(send_queue_.Push(std::move(msg)));
    } else {
      // `sent` runs once: here if the message never reaches the queue, else where it leaves it.
      auto cb = std::make_shared<std::function<void()>>(std::exchange(msg.sent, nullptr));
      msg.sent = [cb] { std::exchange(*cb, nullptr)(); };
      Status st = send_queue_.Push(std::move(msg));
      if (!st.ok()) {
        if (*cb) std::exchange(*cb, nullptr)();
        return st;
      }
    }
    WakeIfSleeping();
    return Status::Ok();
  }
  bool LendsUntilSent() const override { return true; }
  Result<Message> Receive(int timeout_ms) override {
    auto m = recv_queue_.Pop(timeout_ms);
    if (has_deferred_) Wake();  // room again for a deferred rendezvous pull
    return m;
  }
  void Close() override;
  const std::string& peer_name() const override { return tcp_->peer_name(); }
  void Recycle(Message&& msg) override { pool_->Put(std::move(msg.payload)); }
  std::vector<uint8_t> TakeBuffer(size_t bytes) override {
    send_pooling_ = true;
    return pool_->Take(bytes);
  }
  bool SetLanding(LandingFn fn) override {
    auto f = fn ? std::make_shared<const LandingFn>(std::move(fn)) : nullptr;
    std::lock_guard lock(landing_mu_);
    landing_ = std::move(f);
    return true;
  }

 private:
  struct PendingSend {
    UcxConnection* self;
    Message msg;
    std::vector<uint8_t> header;  // AmHeader, then the meta (and head) with kMetaInHeader
    ucp_dt_iov_t iov[3];
  };
  struct PendingRecv {
    UcxConnection* self;
    uint64_t seq;
    Message msg;
    ucp_dt_iov_t iov[2];
    std::function<void()> landed_done;  // Landing::done of a pull into msg.landed
  };
  // A rendezvous message announced by the peer, not pulled yet (sizes already validated).
  struct Announced {
    uint64_t seq;
    MessageKind kind;
    std::vector<uint8_t> meta;  // the meta when it came in the AM header
    uint32_t data_meta_bytes;   // else its size, at the start of the data
    size_t payload_bytes;       // the whole payload's, head included
    bool has_head;              // the payload's first kLandingHeadBytes came in the AM header
    std::array<uint8_t, kLandingHeadBytes> head;
    void* data;  // UCP's descriptor: the payload after the head (after the meta, without it)
  };

  UcxConnection(std::unique_ptr<TcpConnection> tcp, const TransportOptions& options)
      : tcp_(std::move(tcp)),
        send_queue_(options.max_queued_bytes),
        recv_queue_(~0ull),
        max_inflight_(options.max_queued_bytes),
        pool_(tcp_->pool()),
        busy_poll_us_(options.busy_poll_us) {}

  Status Init();
  // Wakes the progress thread when it sleeps (or is about to); see ProgressLoop. Cleared
  // `sleeping_` means it will look at the queues again before sleeping.
  void WakeIfSleeping() {
    if (sleeping_) Wake();
  }
  void Wake() {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_.fd, &one, sizeof one);
  }
  void Fail(Status why);
  void ProgressLoop();
  bool BusyPoll();  // polls up to busy_poll_us_; true when something happened
  // PostSends may post another queued message (one always fits when nothing is in flight).
  bool RoomInFlight() const { return inflight_bytes_ == 0 || inflight_bytes_ < max_inflight_; }
  void PostSends();
  void PostOne(Message msg, uint8_t kind);
  void Deliver(uint64_t seq, Message msg);
  void PullRendezvous(Announced a);
  // The landing function's answer for a data message (Connection::SetLanding): `bytes` empty
  // where it declined (its done then already ran), else `done` callable.
  Landing Land(std::span<const uint8_t> meta, std::span<const uint8_t> head, size_t payload_bytes);
  // Ends a send (completion callback, in-place completion): its `sent`, if lent.
  void SendDone(PendingSend* p);
  // Runs the Landing::done of every pull into a destination still in flight (Close, once UCP
  // can no longer write there).
  void EndLandings();
  void PostDeferredReceives();
  ucs_status_t OnAm(const void* header, size_t header_length, void* data, size_t length,
                    const ucp_am_recv_param_t* param);

  std::unique_ptr<TcpConnection> tcp_;
  MessageQueue send_queue_, recv_queue_;
  const uint64_t max_inflight_;
  // Received payloads; sent ones too once TakeBuffer was used: the bootstrap connection's pool,
  // which an accepted connection shares with the others of its listener.
  std::shared_ptr<BufferPool> pool_;
  const uint32_t busy_poll_us_;
  std::atomic<bool> send_pooling_{false};
  UcpContext context_;
  UcpWorker worker_;
  ucp_ep_h ep_ = nullptr;
  FdHolder wake_;
  int worker_fd_ = -1;
  size_t max_am_header_ = 0;

  // Progress-thread state.
  uint64_t next_send_seq_ = 0;
  uint64_t inflight_bytes_ = 0;
  size_t inflight_sends_ = 0;
  uint64_t next_deliver_seq_ = 0;
  std::map<uint64_t, Message> reorder_;
  size_t pending_recvs_ = 0;
  std::deque<Announced> deferred_;  // not pulled yet (receive queue full); no buffers held
  std::set<PendingRecv*> landing_recvs_;  // pulls into a landing function's memory
  std::set<PendingSend*> lent_sends_;     // sends of lent bytes (Message::sent) in flight
  std::atomic<bool> has_deferred_{false};
  std::atomic<bool> peer_said_goodbye_{false};
  std::atomic<bool> sleeping_{false};  // the progress thread is in (or entering) poll()

  std::atomic<bool> closing_{false};  // stop taking new sends, flush, say goodbye
  std::atomic<bool> stop_{false};     // progress thread exits
  std::atomic<bool> failed_{false};
  std::mutex close_mu_;
  std::mutex landing_mu_;
  std::shared_ptr<const LandingFn> landing_;  // under landing_mu_; null: none
  std::mutex done_mu_;
  std::condition_variable done_cv_;
  bool flushed_ = false;
  std::thread progress_, watcher_;
};

Result<std::unique_ptr<UcxConnection>> UcxConnection::Create(std::unique_ptr<TcpConnection> tcp,
                                                             const TransportOptions& options) {
  std::unique_ptr<UcxConnection> c(new UcxConnection(std::move(tcp), options));
  KVWIRE_RETURN_IF_ERROR(c->Init());
  // Exchange worker addresses over the authenticated TCP connection.
  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  ucs_status_t st = ucp_worker_get_address(c->worker_.h, &addr, &addr_len);
  if (st != UCS_OK) return UcsStatus("ucp_worker_get_address", st);
  control::Control mine;
  mine.mutable_ucx_address()->set_worker_address(addr, addr_len);
  ucp_worker_release_address(c->worker_.h, addr);
  KVWIRE_ASSIGN_OR_RETURN(Message m, MakeControlMessage(mine));
  KVWIRE_RETURN_IF_ERROR(c->tcp_->Send(std::move(m)));
  KVWIRE_ASSIGN_OR_RETURN(Message reply, c->tcp_->Receive(options.handshake_timeout_ms));
  KVWIRE_RETURN_ERROR_IF(reply.kind != MessageKind::kControl, kCorrupt,
                         "expected the peer's UCX address");
  KVWIRE_ASSIGN_OR_RETURN(control::Control theirs, ParseControl(reply.meta));
  if (theirs.body_case() == control::Control::kError) return ErrorToStatus(theirs.error());
  if (theirs.body_case() == control::Control::kCapabilities) {
    // A session receiver of another backend: it speaks first, with its capabilities.
    const std::string other =
        theirs.capabilities().backends_size() ? theirs.capabilities().backends(0) : "tcp";
    return Status(StatusCode::kUnsupported,
                  "the receiver uses the " + other + " backend, not ucx: connect with backend '" +
                      other + "' (kvwire send --backend " + other + ")");
  }
  KVWIRE_RETURN_ERROR_IF(theirs.body_case() != control::Control::kUcxAddress, kCorrupt,
                         "expected the peer's UCX address, got " + ControlName(theirs));
  const std::string& remote = theirs.ucx_address().worker_address();

  ucp_ep_params_t ep_params{};
  ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                         UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep_params.address = reinterpret_cast<const ucp_address_t*>(remote.data());
  ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep_params.err_handler.cb = [](void* arg, ucp_ep_h, ucs_status_t status) {
    static_cast<UcxConnection*>(arg)->Fail(UcsStatus("UCX endpoint failed", status));
  };
  ep_params.err_handler.arg = c.get();
  st = ucp_ep_create(c->worker_.h, &ep_params, &c->ep_);
  if (st != UCS_OK) return UcsStatus("ucp_ep_create", st);

  UcxConnection* self = c.get();
  c->progress_ = std::thread([self] { self->ProgressLoop(); });
  // The TCP connection carries nothing more; its end (without a goodbye) means the peer died.
  c->watcher_ = std::thread([self] {
    auto r = self->tcp_->Receive(-1);
    if (!self->closing_ && !self->stop_) {
      // Give the progress thread a moment to deliver what the peer flushed before it went.
      for (int i = 0; i < 100 && !self->peer_said_goodbye_; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (!self->peer_said_goodbye_)
        self->Fail(Status(StatusCode::kIoError, "peer closed the connection"));
    }
    (void)r;
  });
  return c;
}

Status UcxConnection::Init() {
  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  if (st != UCS_OK) return UcsStatus("ucp_config_read", st);
  // Eager messages by copy, not zero-copy: UCX 1.13's tcp transport completes a zero-copy send
  // twice when sendmsg() fails on a broken connection (its error path completes the send, then
  // the caller completes it again: assertion `comp->count > 0', process abort; 7 of 390 transfers
  // cut by a TCP reset, none of 620 with this; 6 of 200 and 4 of 150 with 1 MiB fragments, 0 of
  // 200 without: bench/ucx_zcopy_resets.sh, bench/results/ucx_zcopy_resets.md). It also makes UCX
  // send rendezvous data over tcp by copy (bcopy fragments), one more copy of every byte on the
  // sender than ucx_perftest makes: docs/notes/ucx-transport.md.
  // UCX_ZCOPY_THRESH wins.
  if (!std::getenv("UCX_ZCOPY_THRESH")) (void)ucp_config_modify(config, "ZCOPY_THRESH", kUcxZcopyThresh);
  // Rendezvous data over tcp (bcopy, see above) goes in TX_SEG_SIZE fragments, one send() each,
  // 8 KiB by default, and the receiver takes at most its RX_SEG_SIZE (64 KiB by default) per AM.
  // With peer error handling (below), 256 KiB fragments on both ends moved 1 MiB messages 4-6x
  // faster on loopback than the defaults, and 1 MiB fragments 1.1-1.9x faster again
  // than 256 KiB at 1, 4 and 16 MiB, in each of four interleaved rounds (the numbers are in
  // docs/notes/ucx-transport.md). The receiver's RSS during a transfer grew by about 1 MB.
  // UCX_TCP_TX_SEG_SIZE and UCX_TCP_RX_SEG_SIZE win. ("TX_SEG_SIZE" is the name
  // ucp_config_modify applies to the tcp transport's UCX_TCP_TX_SEG_SIZE.) Both ends of a kvwire
  // connection set the same sizes.
  if (!std::getenv("UCX_TCP_TX_SEG_SIZE"))
    (void)ucp_config_modify(config, "TX_SEG_SIZE", kUcxTcpSegSize);
  if (!std::getenv("UCX_TCP_RX_SEG_SIZE"))
    (void)ucp_config_modify(config, "RX_SEG_SIZE", kUcxTcpSegSize);
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  st = ucp_init(&params, config, &context_.h);
  ucp_config_release(config);
  if (st != UCS_OK) return UcsStatus("ucp_init", st);
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  st = ucp_worker_create(context_.h, &wp, &worker_.h);
  if (st != UCS_OK) return UcsStatus("ucp_worker_create", st);
  ucp_worker_attr_t wa{};
  wa.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  st = ucp_worker_query(worker_.h, &wa);
  if (st != UCS_OK) return UcsStatus("ucp_worker_query", st);
  max_am_header_ = wa.max_am_header;
  st = ucp_worker_get_efd(worker_.h, &worker_fd_);
  if (st != UCS_OK) return UcsStatus("ucp_worker_get_efd", st);
  wake_.fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  KVWIRE_RETURN_ERROR_IF(wake_.fd < 0, kIoError, "eventfd failed");
  ucp_am_handler_param_t hp{};
  hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                  UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  hp.id = kAmId;
  hp.flags = UCP_AM_FLAG_WHOLE_MSG;
  hp.cb = [](void* arg, const void* header, size_t header_length, void* data, size_t length,
             const ucp_am_recv_param_t* param) {
    return static_cast<UcxConnection*>(arg)->OnAm(header, header_length, data, length, param);
  };
  hp.arg = this;
  st = ucp_worker_set_am_recv_handler(worker_.h, &hp);
  if (st != UCS_OK) return UcsStatus("ucp_worker_set_am_recv_handler", st);
  return Status::Ok();
}

void UcxConnection::Fail(Status why) {
  failed_ = true;
  recv_queue_.Close(why);
  send_queue_.Close(why);
  {
    std::lock_guard lock(done_mu_);
    flushed_ = true;
    done_cv_.notify_all();
  }
  Wake();
}

ucs_status_t UcxConnection::OnAm(const void* header, size_t header_length, void* data,
                                 size_t length, const ucp_am_recv_param_t* param) {
  const bool rndv = param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV;
  // Returning anything but UCS_INPROGRESS drops a rendezvous descriptor (the sender's send then
  // completes with that status), so nothing is released here.
  auto refuse = [&](Status why) {
    Fail(why.WithContext("from UCX peer"));
    return rndv ? UCS_ERR_REJECTED : UCS_OK;
  };
  if (failed_) return rndv ? UCS_ERR_CANCELED : UCS_OK;
  if (header_length < sizeof(AmHeader))
    return refuse(Status(StatusCode::kCorrupt, "bad AM header size"));
  AmHeader h;
  std::memcpy(&h, header, sizeof h);
  if (h.seq < next_deliver_seq_ || h.seq >= next_deliver_seq_ + (1u << 20) || reorder_.count(h.seq))
    return refuse(Status(StatusCode::kCorrupt, "AM sequence number out of window"));
  const bool meta_in_header = h.flags & kMetaInHeader;
  const bool head_in_header = h.flags & kHeadInHeader;
  if ((h.flags & ~(kMetaInHeader | kHeadInHeader)) != 0 ||
      (head_in_header && (!meta_in_header || h.kind != uint8_t(MessageKind::kData))) ||
      header_length != sizeof(AmHeader) + (meta_in_header ? h.meta_bytes : 0) +
                           (head_in_header ? kLandingHeadBytes : 0))
    return refuse(Status(StatusCode::kCorrupt, "bad AM header size or flags"));
  if (h.kind == kGoodbye) {
    if (length != 0 || h.meta_bytes != 0)
      return refuse(Status(StatusCode::kCorrupt, "bad goodbye"));
    Message bye;
    bye.kind = static_cast<MessageKind>(0);  // marker, never delivered
    Deliver(h.seq, std::move(bye));
    return UCS_OK;
  }
  if (h.kind != uint8_t(MessageKind::kControl) && h.kind != uint8_t(MessageKind::kData))
    return refuse(Status(StatusCode::kCorrupt, "unknown AM kind"));
  const uint32_t data_meta_bytes = meta_in_header ? 0 : h.meta_bytes;
  if (data_meta_bytes > length)
    return refuse(Status(StatusCode::kCorrupt, "AM meta longer than message"));
  const auto kind = static_cast<MessageKind>(h.kind);
  const size_t head_bytes = head_in_header ? kLandingHeadBytes : 0;
  const size_t payload_bytes = length - data_meta_bytes + head_bytes;
  Status bounds = CheckMessageBounds(kind, h.meta_bytes, payload_bytes);
  if (!bounds.ok()) return refuse(bounds);  // before anything is allocated
  const auto* bytes = static_cast<const uint8_t*>(data);
  const auto* head = head_in_header
                         ? static_cast<const uint8_t*>(header) + sizeof(AmHeader) + h.meta_bytes
                         : nullptr;
  Message msg;
  msg.kind = kind;
  if (meta_in_header) {
    const auto* m = static_cast<const uint8_t*>(header) + sizeof(AmHeader);
    msg.meta.assign(m, m + h.meta_bytes);
  }
  if (!rndv) {
    if (!meta_in_header) msg.meta.assign(bytes, bytes + data_meta_bytes);
    if (head_in_header) {  // an eager chunk: copied once, where the landing function says
      Landing land = Land(msg.meta, {head, kLandingHeadBytes}, payload_bytes);
      if (!land.bytes.empty()) {
        std::memcpy(land.bytes.data(), bytes, land.bytes.size());
        land.done();
        msg.payload.assign(head, head + kLandingHeadBytes);
        msg.landed = land.bytes;
        Deliver(h.seq, std::move(msg));
        return UCS_OK;
      }
    }
    msg.payload = pool_->Take(payload_bytes);
    if (head_bytes != 0) std::memcpy(msg.payload.data(), head, head_bytes);
    if (payload_bytes != head_bytes) {
      std::memcpy(msg.payload.data() + head_bytes, bytes + data_meta_bytes,
                  payload_bytes - head_bytes);
    }
    Deliver(h.seq, std::move(msg));
    return UCS_OK;
  }
  // The header is only valid during this call: its meta and head are copied; the data stays
  // with UCP.
  Announced a{h.seq, kind, std::move(msg.meta), data_meta_bytes, payload_bytes, head_in_header,
              {},    data};
  if (head_in_header) std::memcpy(a.head.data(), head, kLandingHeadBytes);
  if (recv_queue_.bytes() >= max_inflight_ || !deferred_.empty()) {
    deferred_.push_back(std::move(a));
    has_deferred_ = true;
    return UCS_INPROGRESS;  // UCP keeps the descriptor until we pull it
  }
  PullRendezvous(std::move(a));
  return UCS_OK;
}

void UcxConnection::PostDeferredReceives() {
  while (!deferred_.empty() && !failed_ && recv_queue_.bytes() < max_inflight_) {
    Announced a = std::move(deferred_.front());
    deferred_.pop_front();
    PullRendezvous(std::move(a));
  }
  has_deferred_ = !deferred_.empty();
}

void UcxConnection::PullRendezvous(Announced a) {
  // Pull the data straight into a payload buffer from the pool (and the meta, when it did not fit
  // in the AM header).
  Message msg;
  msg.kind = a.kind;
  msg.meta = std::move(a.meta);
  if (a.data_meta_bytes != 0) msg.meta.resize(a.data_meta_bytes);
  const size_t head_bytes = a.has_head ? kLandingHeadBytes : 0;
  const size_t rest = a.payload_bytes - head_bytes;
  // With the chunk header at hand, the landing function may name where the rest goes.
  Landing land;
  if (a.has_head) land = Land(msg.meta, a.head, a.payload_bytes);
  uint8_t* into;
  if (!land.bytes.empty()) {
    msg.payload.assign(a.head.begin(), a.head.end());
    msg.landed = land.bytes;
    into = land.bytes.data();
  } else {
    msg.payload = pool_->Take(a.payload_bytes);
    if (head_bytes != 0) std::memcpy(msg.payload.data(), a.head.data(), head_bytes);
    into = msg.payload.data() + head_bytes;
  }
  // Owned by the callback.
  auto* pending = new PendingRecv{this, a.seq, std::move(msg), {}, std::move(land.done)};
  if (pending->landed_done) landing_recvs_.insert(pending);
  size_t n = 0;
  if (a.data_meta_bytes != 0) pending->iov[n++] = {pending->msg.meta.data(), a.data_meta_bytes};
  if (rest != 0) pending->iov[n++] = {into, rest};
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                    UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  rp.datatype = n == 2 ? ucp_dt_make_iov() : ucp_dt_make_contig(1);
  rp.user_data = pending;
  rp.cb.recv_am = [](void* request, ucs_status_t status, size_t, void* user_data) {
    std::unique_ptr<PendingRecv> p(static_cast<PendingRecv*>(user_data));
    UcxConnection* self = p->self;
    --self->pending_recvs_;
    if (p->landed_done) {  // written whole, or the pull failed: UCP writes no more there
      self->landing_recvs_.erase(p.get());
      std::exchange(p->landed_done, nullptr)();
    }
    if (status != UCS_OK) {
      self->Fail(UcsStatus("UCX rendezvous receive", status));
    } else {
      self->Deliver(p->seq, std::move(p->msg));
    }
    ucp_request_free(request);
  };
  void* buffer = n == 2   ? static_cast<void*>(pending->iov)
                 : n == 1 ? pending->iov[0].buffer
                          : nullptr;
  const size_t count = n == 2 ? 2 : n == 1 ? pending->iov[0].length : 0;
  ucs_status_ptr_t sp = ucp_am_recv_data_nbx(worker_.h, a.data, buffer, count, &rp);
  if (UCS_PTR_IS_ERR(sp)) {
    if (pending->landed_done) {
      landing_recvs_.erase(pending);
      pending->landed_done();
    }
    delete pending;
    Fail(UcsStatus("ucp_am_recv_data_nbx", UCS_PTR_STATUS(sp)));
    return;
  }
  ++pending_recvs_;
}

Landing UcxConnection::Land(std::span<const uint8_t> meta, std::span<const uint8_t> head,
                            size_t payload_bytes) {
  std::shared_ptr<const LandingFn> fn;
  {
    std::lock_guard lock(landing_mu_);
    fn = landing_;
  }
  Landing land;
  if (fn) land = AskLanding(*fn, meta, head, payload_bytes);
  if (!land.bytes.empty() && !land.done) land.done = [] {};
  return land;
}

void UcxConnection::SendDone(PendingSend* p) {
  if (!p->msg.sent) return;
  lent_sends_.erase(p);
  std::exchange(p->msg.sent, nullptr)();  // UCX reads the lent bytes no more
}

void UcxConnection::EndLandings() {
  for (PendingRecv* p : landing_recvs_) {
    if (p->landed_done) std::exchange(p->landed_done, nullptr)();
  }
  landing_recvs_.clear();
}

void UcxConnection::Deliver(uint64_t seq, Message msg) {
  reorder_.emplace(seq, std::move(msg));
  for (auto it = reorder_.begin(); it != reorder_.end() && it->first == next_deliver_seq_;
       it = reorder_.erase(it)) {
    ++next_deliver_seq_;
    if (it->second.kind == static_cast<MessageKind>(0)) {
      peer_said_goodbye_ = true;
      recv_queue_.Close(Status(StatusCode::kIoError, "peer closed the connection"));
      continue;
    }
    (void)recv_queue_.Push(std::move(it->second));
  }
}

void UcxConnection::PostOne(Message msg, uint8_t kind) {
  auto* p = new PendingSend{this, std::move(msg), {}, {}};  // owned until completion
  const Message& m = p->msg;
  // The meta rides in the AM header when it fits, so the data is one contiguous buffer.
  const bool meta_in_header = sizeof(AmHeader) + m.meta.size() <= max_am_header_;
  // A data message's chunk header too (kHeadInHeader), so the receiver can land the rest.
  // (With lent bytes, `payload` itself must hold the head.)
  const bool head_in_header =
      meta_in_header && kind == uint8_t(MessageKind::kData) &&
      m.payload.size() + m.borrowed.size() > kLandingHeadBytes &&
      (m.borrowed.empty() || m.payload.size() >= kLandingHeadBytes) &&
      sizeof(AmHeader) + m.meta.size() + kLandingHeadBytes <= max_am_header_;
  const size_t head_bytes = head_in_header ? kLandingHeadBytes : 0;
  const AmHeader h{next_send_seq_++,
                   static_cast<uint32_t>(m.meta.size()),
                   kind,
                   static_cast<uint8_t>((meta_in_header ? kMetaInHeader : 0) |
                                        (head_in_header ? kHeadInHeader : 0)),
                   {}};
  p->header.resize(sizeof h + (meta_in_header ? m.meta.size() : 0) + head_bytes);
  std::memcpy(p->header.data(), &h, sizeof h);
  if (meta_in_header && !m.meta.empty())
    std::memcpy(p->header.data() + sizeof h, m.meta.data(), m.meta.size());
  if (head_in_header) {
    std::memcpy(p->header.data() + sizeof h + m.meta.size(), m.payload.data(), head_bytes);
  }
  size_t n = 0;
  if (!meta_in_header && !m.meta.empty()) p->iov[n++] = {p->msg.meta.data(), m.meta.size()};
  if (m.payload.size() > head_bytes) {
    p->iov[n++] = {p->msg.payload.data() + head_bytes, m.payload.size() - head_bytes};
  }
  // Lent bytes (Message::sent) go from the caller's memory.
  if (!m.borrowed.empty()) {
    p->iov[n++] = {const_cast<uint8_t*>(m.borrowed.data()), m.borrowed.size()};
  }
  if (m.sent) lent_sends_.insert(p);
  const size_t bytes = p->msg.bytes();
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                    UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_FLAGS;
  rp.datatype = n >= 2 ? ucp_dt_make_iov() : ucp_dt_make_contig(1);
  rp.flags = bytes >= kForceRndvBytes ? UCP_AM_SEND_FLAG_RNDV : 0;
  rp.user_data = p;
  rp.cb.send = [](void* request, ucs_status_t status, void* user_data) {
    std::unique_ptr<PendingSend> ps(static_cast<PendingSend*>(user_data));
    UcxConnection* self = ps->self;
    self->inflight_bytes_ -= ps->msg.bytes();
    --self->inflight_sends_;
    if (status != UCS_OK) self->Fail(UcsStatus("UCX send", status));
    self->SendDone(ps.get());
    if (self->send_pooling_) self->pool_->Put(std::move(ps->msg.payload));
    ucp_request_free(request);
  };
  ++inflight_sends_;
  inflight_bytes_ += bytes;
  const void* buffer = n >= 2 ? static_cast<void*>(p->iov) : n == 1 ? p->iov[0].buffer : nullptr;
  const size_t count = n >= 2 ? n : n == 1 ? p->iov[0].length : 0;
  ucs_status_ptr_t sp =
      ucp_am_send_nbx(ep_, kAmId, p->header.data(), p->header.size(), buffer, count, &rp);
  if (sp == nullptr || UCS_PTR_IS_ERR(sp)) {
    // Completed in place (callback not called) or failed.
    --inflight_sends_;
    inflight_bytes_ -= bytes;
    ucs_status_t st = UCS_PTR_STATUS(sp);
    SendDone(p);
    if (st == UCS_OK && send_pooling_) pool_->Put(std::move(p->msg.payload));
    delete p;
    if (st != UCS_OK) Fail(UcsStatus("ucp_am_send_nbx", st));
  }
}

void UcxConnection::PostSends() {
  Message m;
  while (!failed_ && RoomInFlight() && send_queue_.TryPop(&m)) {
    PostOne(std::move(m), static_cast<uint8_t>(m.kind));
  }
}

bool UcxConnection::BusyPoll() {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(busy_poll_us_);
  for (unsigned spins = 1;; ++spins) {
    if (ucp_worker_progress(worker_.h) != 0) return true;
    // Close() and Fail() also write the eventfd, which ends the poll() that may follow.
    if ((send_queue_.bytes() != 0 && RoomInFlight()) || stop_) return true;
    if (has_deferred_ && recv_queue_.bytes() < max_inflight_) return true;  // room to pull
    // Reading the clock costs about what an idle progress call does: every 16th turn only.
    if (spins % 16 == 0 && std::chrono::steady_clock::now() >= until) return false;
  }
}

void UcxConnection::ProgressLoop() {
  bool goodbye_sent = false;
  while (!stop_) {
    while (ucp_worker_progress(worker_.h) != 0) {
    }
    PostSends();
    PostDeferredReceives();
    // Goodbye when closing, and in reply to the peer's: the closing side then knows it has every
    // message of ours and can close its endpoint at once (see Close).
    if (!goodbye_sent && !failed_ &&
        (peer_said_goodbye_ || (closing_ && send_queue_.bytes() == 0))) {
      PostOne(Message{}, kGoodbye);
      goodbye_sent = true;
    }
    if ((goodbye_sent && inflight_sends_ == 0) || failed_ || (closing_ && peer_said_goodbye_)) {
      std::lock_guard lock(done_mu_);
      flushed_ = true;
      done_cv_.notify_all();
    }
    if (stop_) break;
    if (busy_poll_us_ != 0 && (inflight_sends_ != 0 || pending_recvs_ != 0) && BusyPoll()) continue;
    // Announce the sleep before the last look at the queue, so that a Send after it wakes us.
    sleeping_ = true;
    if (send_queue_.bytes() != 0 && RoomInFlight()) {
      sleeping_ = false;
      continue;
    }
    ucs_status_t st = ucp_worker_arm(worker_.h);
    if (st == UCS_ERR_BUSY) {
      sleeping_ = false;
      continue;
    }
    pollfd fds[2] = {{worker_fd_, POLLIN, 0}, {wake_.fd, POLLIN, 0}};
    ::poll(fds, 2, 100);
    sleeping_ = false;
    uint64_t drained;
    [[maybe_unused]] auto n = ::read(wake_.fd, &drained, sizeof drained);
  }
}

void UcxConnection::Close() {
  std::lock_guard lock(close_mu_);
  if (!progress_.joinable()) return;
  closing_ = true;
  // Messages already queued go out first; then a goodbye; bounded in time.
  send_queue_.Close(Status(StatusCode::kCancelled, "connection closed"));
  Wake();
  {
    std::unique_lock l(done_mu_);
    done_cv_.wait_for(l, std::chrono::seconds(5), [&] { return flushed_; });
    // Then the peer's goodbye (its progress thread replies to ours at once). With it, a forced
    // close loses nothing; without it, a flushing close after the peer destroyed its endpoint
    // waits out its whole bound below.
    done_cv_.wait_for(l, std::chrono::seconds(1), [&] { return peer_said_goodbye_ || failed_; });
  }
  stop_ = true;
  Wake();
  progress_.join();
  recv_queue_.Close(Status(StatusCode::kCancelled, "connection closed"));
  for (auto& d : deferred_) ucp_am_data_release(worker_.h, d.data);
  deferred_.clear();
  // Close the endpoint on this thread: the progress thread has exited, so the worker is ours
  // now. Always forced: what had to be delivered was flushed above (and the protocol resends
  // anything unacknowledged), and a flushing close over a link that went silent never
  // completes: its sends stay attached to the endpoint, and UCX 1.13 aborts when the worker is
  // destroyed under them (ucp_ep.c: "ucs_hlist_is_empty(...proto_reqs)"; seen with the link
  // down for 20 s mid-transfer, bench/netns_outage.sh). A forced close cancels them.
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  rp.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t sp = ucp_ep_close_nbx(ep_, &rp);
  if (UCS_PTR_IS_PTR(sp)) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (ucp_request_check_status(sp) == UCS_INPROGRESS &&
           std::chrono::steady_clock::now() < deadline) {
      ucp_worker_progress(worker_.h);
    }
    ucp_request_free(sp);
  }
  ep_ = nullptr;
  // The closed endpoint's pulls complete (cancelled); a pull into a landing function's memory
  // must have ended before Close returns (the receiver may then free that memory).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while ((pending_recvs_ != 0 || !lent_sends_.empty()) &&
         std::chrono::steady_clock::now() < deadline) {
    ucp_worker_progress(worker_.h);
  }
  EndLandings();
  // Lent bytes: of messages never posted, and of sends that did not complete (the endpoint and
  // its socket are closed: UCX reads them no more).
  Message left;
  while (send_queue_.TryPop(&left)) {
    if (left.sent) std::exchange(left.sent, nullptr)();
  }
  while (!lent_sends_.empty()) SendDone(*lent_sends_.begin());
  tcp_->Close();
  if (watcher_.joinable()) watcher_.join();
}

class UcxListener final : public Listener {
 public:
  UcxListener(std::unique_ptr<TcpAcceptor> acceptor, TransportOptions options)
      : acceptor_(std::move(acceptor)), options_(std::move(options)) {}
  Result<std::unique_ptr<Connection>> Accept(int timeout_ms) override {
    for (;;) {
      KVWIRE_ASSIGN_OR_RETURN(std::unique_ptr<TcpConnection> tcp, acceptor_->AcceptRaw(timeout_ms));
      std::string peer;
      TcpConnection* raw = tcp.get();
      Status s = ServerHandshake(*tcp, options_, &peer,
                                 [raw](const std::string& p) { raw->MarkAuthenticated(p); });
      if (!s.ok()) {
        LogRefusedPeer("ucx://" + acceptor_->address() + " from " + tcp->remote_address(), s);
        continue;
      }
      auto c = UcxConnection::Create(std::move(tcp), options_);
      if (!c.ok()) return c.status().WithContext("ucx accept");
      return std::unique_ptr<Connection>(std::move(*c));
    }
  }
  std::string address() const override { return acceptor_->address(); }
  void Close() override { acceptor_->Close(); }

 private:
  std::unique_ptr<TcpAcceptor> acceptor_;
  TransportOptions options_;
};

class UcxTransport final : public Transport {
 public:
  std::string_view name() const override { return "ucx"; }
  TransportCaps caps() const override {
    TransportCaps c;
    c.remote = true;
    c.rendezvous = true;
    // Sends copy: UcxConnection::Init keeps UCX's zero-copy sends off (ZCOPY_THRESH), because
    // UCX 1.13 aborts when a zero-copy send meets a broken connection. Only a UCX_ZCOPY_THRESH
    // set in the environment, the operator's choice, turns them back on.
    c.zero_copy_send = false;
    return c;
  }
  Result<std::unique_ptr<Listener>> Listen(const TransportOptions& options) override {
    KVWIRE_RETURN_IF_ERROR(ValidateKeyOptions(options));
    KVWIRE_RETURN_IF_ERROR(RefuseTls(options, "ucx"));
    KVWIRE_ASSIGN_OR_RETURN(auto acceptor, TcpAcceptor::Bind(options));
    return std::unique_ptr<Listener>(std::make_unique<UcxListener>(std::move(acceptor), options));
  }
  Result<std::unique_ptr<Connection>> Connect(const TransportOptions& options) override {
    KVWIRE_RETURN_IF_ERROR(ValidateKeyOptions(options));
    KVWIRE_RETURN_IF_ERROR(RefuseTls(options, "ucx"));
    KVWIRE_ASSIGN_OR_RETURN(auto tcp, TcpConnection::Dial(options));
    std::string peer;
    Status s = ClientHandshake(*tcp, options, &peer);
    if (!s.ok()) return s.WithContext("connect ucx://" + options.address);
    tcp->MarkAuthenticated(std::move(peer));
    auto c = UcxConnection::Create(std::move(tcp), options);
    if (!c.ok()) return c.status().WithContext("connect ucx://" + options.address);
    return std::unique_ptr<Connection>(std::move(*c));
  }
};

}  // namespace

std::unique_ptr<Transport> MakeUcxTransport() { return std::make_unique<UcxTransport>(); }

}  // namespace kvwire::transport
