// kvwire/session.h — sending and receiving KV caches over a Transport (docs/PROTOCOL.md),
// the API an engine connector calls (cf. vLLM's save_kv_layer / start_load_kv /
// wait_for_layer_load).
//
// Sender (prefill node): Sender::Connect, then per sequence Open(kv, options) -> SendRequest;
// PushLayer(l) as the prefill finishes layer l (a worker thread encodes it while earlier layers
// are on the wire); Poll()/Wait() for the completion (the receiver confirmed every chunk).
//
// Receiver (decode node): Receiver::Listen, NextRequest() announces an incoming request (shape,
// dtype, levels), SetDestination(id, view) hands over the caller's contiguous or paged buffers,
// WaitLayer(id, l) returns once layer l is decoded there; Wait(id) once all of it is.
//
// Wire: docs/PROTOCOL.md. Each chunk is a stream chunk frame (docs/FORMAT.md) with its CRC32C;
// the receiver validates, decodes, then acknowledges it. The sender keeps unacknowledged frames
// (bounded by max_inflight_bytes: back-pressure) and, after a broken connection, reconnects
// (bounded retries) and resends what the receiver does not hold. Duplicates are acknowledged
// and dropped. Per chunk the sender picks a level (codec) from the request's levels from the
// measured goodput, the deadline and the accuracy budget, and logs each change with its reason.
//
// Status convention: "in progress" is StatusCode::kInProgress (not an error); Wait/WaitLayer
// return it when their timeout expires first.
//
// Thread-safety: Sender, Receiver and SendRequest methods may be called from any thread.
// Ownership: the KvViews given to Open/SetDestination must stay valid until the request is
// complete (or failed); a `profile` must outlive the session. A sender's Wait and Poll report
// a request finished only once no encoding of it is under way, so its KV cache may be freed then.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvwire/kv_view.h"
#include "kvwire/status.h"
#include "kvwire/stream.h"
#include "kvwire/transport.h"

namespace kvwire {

/// One rate-distortion level a request may use: a codec spec and what it costs/loses.
struct LevelSpec {
  std::string codec;             // e.g. "fp16", "q4_0", "fraqtl@2.5"
  double bits_per_element = 16;  // all-in, from the profile's table or measured
  /// Accuracy loss of the level: mean KL divergence per token position, KL(reference ||
  /// decoded next-token distribution), in nats (natural log), as the profile's table gives it
  /// (Profile's kl). < 0 = unknown.
  double kl = -1;
  /// Codec throughput in KV elements per second, <= 0 = unknown: the chooser then counts the
  /// wire alone for this level. Encode is the sender's, decode the receiver's (`kvwire send`
  /// measures both on the sender's CPU, on one layer of the KV, before it sends).
  double encode_elements_per_s = 0;
  double decode_elements_per_s = 0;
};

struct SenderOptions {
  std::string backend = "tcp";
  TransportOptions transport;                 // address = the receiver's HOST:PORT (or inproc name)
  uint64_t max_inflight_bytes = 64ull << 20;  // unacknowledged chunk bytes, all requests
  int stall_timeout_ms = 10000;  // no ack for this long with chunks in flight: reconnect
  /// A broken connection is retried until this long after it broke; then every unfinished
  /// request fails with the last attempt's reason. The first connection gets the same window
  /// when it fails on the way (i/o error, timeout), not when the receiver refuses it (a wrong
  /// key, another protocol version). A connection that carries no acknowledgement for
  /// stall_timeout_ms while chunks are in flight counts as broken. A request's deadline, when
  /// set, still wins: it fails once its deadline passes while reconnecting. 0: no retries.
  int reconnect_window_ms = 30000;
  int reconnect_backoff_ms = 100;       // the first wait, doubled after each failed attempt,
  int max_reconnect_backoff_ms = 2000;  // up to this
  /// After a reconnect, a receiver that holds nothing of a request it had acknowledged chunks
  /// of (it restarted: a new process on the same address) gets the whole request again (true),
  /// or the request fails, saying so (false).
  bool resend_after_receiver_restart = true;
  /// Chunks encoded at once, each on a thread of its own (1: on the thread that sends); they
  /// are still sent in order. 0: as many as the machine has cores, at most 4. The bytes of
  /// every chunk are the same whatever the count.
  int encode_threads = 0;
  const Profile* profile = nullptr;
  bool verbose = false;  // log level choices and reconnects to stderr
};

/// Most bytes of SendRequestOptions::user_data.
inline constexpr uint32_t kMaxRequestUserDataBytes = 64u << 10;

struct SendRequestOptions {
  uint64_t request_id = 0;        // != 0, unique per sender
  std::vector<LevelSpec> levels;  // 1..kMaxLevels; the chooser picks per chunk
  /// Accuracy budget in nats (LevelSpec::kl's unit): only levels with a known kl <= max_kl are
  /// used. <= 0 = none.
  double max_kl = 0;
  double min_bits = 0;  // never below this many bits/element; <= 0 = none
  /// Milliseconds after Open() by which the whole request should be delivered; <= 0 = none. A
  /// target the level chooser trades accuracy for, not a timeout: the request fails for it only
  /// when it passes while the sender reconnects. At most 86'400'000 (a day): the receiver
  /// refuses a request with more.
  int deadline_ms = 0;
  uint32_t chunk_tokens = 0;      // tokens per chunk; 0 = whole layer (split if too large)
  uint32_t token_begin = 0;       // position of kv's token 0 within the sequence
  KvMetadata metadata;
  std::string profile_id;
  /// Opaque bytes for the receiving application (at most kMaxRequestUserDataBytes), delivered
  /// with the announcement as IncomingRequest::user_data: what an engine needs beside the KV,
  /// e.g. the request's next input token. kvwire neither interprets nor logs them.
  std::string user_data;
  /// At the fp16 level, over a transport that writes lent bytes itself (tcp), send each chunk
  /// straight from the KV's memory when its rows lie back to back: the rows are read twice (the
  /// CRC, then the socket) instead of copied into a frame once. false copies them, which is
  /// quicker when touching the KV's pages costs more than copying them: a dump mapped from the
  /// page cache on a VM (kvwire send sets false for its dumps; docs/notes/data-path.md).
  bool lend_kv = true;
};

struct SendStats {
  uint64_t chunks = 0;
  uint64_t wire_bytes = 0;  // chunk frames + descriptors (every byte of chunk traffic)
  uint64_t resent_chunks = 0;
  uint32_t reconnects = 0;
  std::vector<uint64_t> chunks_per_level;
  double seconds = 0;              // Open() to completion, in seconds
  double goodput_bytes_per_s = 0;  // acknowledged bytes per second, at completion
};

/// One request being sent. Obtained from Sender::Open.
class SendRequest {
 public:
  virtual ~SendRequest() = default;
  /// Layer `layer` of the view is ready: encode and send it (asynchronous). Layers must be pushed
  /// in increasing order, each once.
  virtual Status PushLayer(uint32_t layer) = 0;
  /// Pushes every layer not pushed yet.
  virtual Status PushAll() = 0;
  /// kInProgress, Ok once the receiver confirmed every chunk, or the error.
  virtual Status Poll() const = 0;
  /// Like Poll, waiting up to `timeout_ms` (< 0: until done).
  virtual Status Wait(int timeout_ms) = 0;
  virtual SendStats stats() const = 0;
};

class Sender {
 public:
  virtual ~Sender() = default;
  /// Connects and authenticates to a receiver.
  static Result<std::unique_ptr<Sender>> Connect(const SenderOptions& options);
  /// Opens a request: sends its description and returns its handle. `kv` must cover the whole
  /// request (shape, dtype) and stay valid until it completes.
  virtual Result<std::shared_ptr<SendRequest>> Open(const KvView& kv,
                                                    const SendRequestOptions& options) = 0;
  /// Fails every unfinished request with kCancelled and closes the connection.
  virtual void Close() = 0;
};

struct ReceiverOptions {
  std::string backend = "tcp";
  TransportOptions transport;                  // address to listen on ("127.0.0.1:0": ephemeral)
  uint64_t max_buffered_bytes = 256ull << 20;  // chunks held before SetDestination, all requests
  int stall_timeout_ms = 30000;  // an unfinished request idle this long fails (kTimeout)
  const Profile* profile = nullptr;
  /// A request whose stream needs another profile than `profile` (or any, when it is null) gets
  /// it from the sender, which encodes with it (ProfileRequest/ProfileData, docs/PROTOCOL.md):
  /// the file is checked against its content hash, parsed and validated, and the last few are
  /// kept for later requests. The request reaches NextRequest once its profile is here. False:
  /// such a request is refused ("the stream needs profile ...").
  bool fetch_profiles = true;
  /// fp16 chunks for an fp16 destination whose chunk rows lie back to back (a contiguous cache,
  /// or a chunk within one block of a paged one) are read by the connection straight into those
  /// rows (tcp reads them there, ucx pulls them there), then checked there (CRC32C, finite
  /// values) before they count: one copy of every byte fewer. inproc receives as before.
  /// False: every chunk is received into a buffer and copied.
  bool receive_in_place = true;
  bool verbose = false;
};

/// What the receiver learns of an incoming request.
struct IncomingRequest {
  uint64_t request_id = 0;
  StreamInfo info;  // shape, dtype, token_begin, metadata, levels (codec specs)
  std::vector<LevelSpec> levels;
  double max_kl = 0;   // the sender's accuracy budget, nats (SendRequestOptions::max_kl)
  int deadline_ms = 0;  // the sender's deadline, ms after its Open(); 0 = none
  std::string peer;       // the sender's node name
  std::string user_data;  // SendRequestOptions::user_data, as sent (untrusted: validate it)
};

struct ReceiveStats {
  uint64_t chunks = 0;
  uint64_t duplicate_chunks = 0;
  uint64_t landed_chunks = 0;  // received straight into the destination (receive_in_place)
  uint64_t wire_bytes = 0;
  std::vector<uint64_t> chunks_per_level;
  double seconds = 0;  // first message to complete, in seconds
};

class Receiver {
 public:
  virtual ~Receiver() = default;
  /// Listens and serves any number of authenticated senders.
  static Result<std::unique_ptr<Receiver>> Listen(const ReceiverOptions& options);
  /// The bound address ("127.0.0.1:40123").
  virtual std::string address() const = 0;
  /// The next new request (not resumed ones). kTimeout after `timeout_ms` (< 0: forever).
  virtual Result<IncomingRequest> NextRequest(int timeout_ms) = 0;
  /// Where request `id` decodes to: the announced layers/kv_heads/head_dim, and either exactly
  /// the announced tokens or token_begin + tokens (the whole sequence). Any dtype.
  virtual Status SetDestination(uint64_t id, const KvView& dst) = 0;
  /// Ok once layer `layer` (K and V) is decoded into the destination; kInProgress on timeout.
  virtual Status WaitLayer(uint64_t id, uint32_t layer, int timeout_ms) = 0;
  /// Ok once every chunk is decoded and the sender's completion is queued on the connection
  /// (closing the Receiver right after loses nothing); kInProgress on timeout; the error if the
  /// request failed.
  virtual Status Wait(uint64_t id, int timeout_ms) = 0;
  virtual Result<ReceiveStats> stats(uint64_t id) const = 0;
  /// Forgets a finished or failed request (its destination is no longer touched).
  virtual Status Release(uint64_t id) = 0;
  /// Stops listening, closes every connection, fails unfinished requests (kCancelled).
  virtual void Close() = 0;
};

}  // namespace kvwire
