// kvwire serve: the decode-node end. Listens, authenticates senders, receives KV caches and
// writes each one as a KV dump (safetensors) into --out-dir.
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli_profile.h"
#include "cli_util.h"
#include "command.h"
#include "common/log_line.h"
#include "kvwire/kv_file.h"
#include "kvwire/session.h"

namespace kvwire::cli {
namespace {

struct ServeArgs {
  std::string listen = "127.0.0.1:7070";
  std::string backend = "tcp";
  std::string key_file;
  bool insecure = false;
  TlsArgs tls;
  std::string out_dir = ".";
  std::string profile;
  bool no_fetch_profiles = false;
  bool no_receive_in_place = false;
  int count = 0;  // 0: serve forever
  int stall_timeout_ms = 30000;
  uint32_t busy_poll_us = 0;
  bool discard = false;
  int max_concurrent = 8;
  std::string preallocate;  // LAYERSxTOKENSxKV_HEADSxHEAD_DIM[:DTYPE]
  bool verbose = false;
};

// --preallocate: "32x4096x8x128" or "32x4096x8x128:bf16" (dtype f16 unless given).
Result<std::pair<KvShape, DType>> ParsePreallocate(const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return Status(
        StatusCode::kInvalidArgument,
        "--preallocate '" + text + "': " + why +
            " (expected LAYERSxTOKENSxKV_HEADSxHEAD_DIM[:DTYPE], e.g. 32x4096x8x128:f16)");
  };
  std::string dims = text;
  DType dtype = DType::kF16;
  if (const size_t colon = text.find(':'); colon != std::string::npos) {
    dims = text.substr(0, colon);
    auto d = ParseDType(text.substr(colon + 1));
    if (!d.ok()) return bad(d.status().message());
    dtype = *d;
  }
  uint32_t v[4] = {};
  const char* at = dims.data();
  const char* const end = dims.data() + dims.size();
  for (int i = 0; i < 4; ++i) {
    if (i > 0 && (at == end || *at++ != 'x')) return bad("four sizes needed");
    const auto [next, ec] = std::from_chars(at, end, v[i]);
    if (ec != std::errc()) return bad("four sizes needed");
    at = next;
  }
  if (at != end) return bad("four sizes needed");
  const KvShape shape{v[0], v[1], v[2], v[3]};
  if (Status s = ValidateShape(shape); !s.ok()) return bad(s.message());
  return std::pair{shape, dtype};
}

// A cache for --preallocate, its pages written once, as an engine's KV pool is allocated when it
// starts: the first request of that shape then pays no page faults.
Result<KvCache> Preallocate(const KvShape& shape, DType dtype) {
  KVWIRE_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape, dtype));
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      std::span<uint8_t> t = cache.tensor(l, kind);
      std::memset(t.data(), 0, t.size());
    }
  }
  return cache;
}

// Serves each request on a thread of its own, so that a request whose sender died holds only
// its own slot until the stall timeout, not every request behind it. At most
// --max-concurrent requests are served at once; the caches they write into are kept for later
// requests of the same shape and dtype (a decode node's KV pool is allocated once: a fresh
// 200 MB cache would put its page faults on the KV-ready clock), and there are never more
// caches than slots.
class Server {
 public:
  Server(const ServeArgs& a, Receiver& receiver) : a_(a), receiver_(receiver) {}
  ~Server() { Join(); }

  // Blocks until fewer than --max-concurrent requests are being served; joins finished ones.
  void WaitForSlot() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return active_ < a_.max_concurrent; });
    ReapLocked();
  }

  // True once a request has failed and the server should stop accepting (--count runs).
  bool stopping() const {
    std::lock_guard lock(mu_);
    return failed_ && a_.count != 0;
  }
  bool failed() const {
    std::lock_guard lock(mu_);
    return failed_;
  }

  void Start(IncomingRequest in) {
    std::lock_guard lock(mu_);
    ++active_;
    // Threads are keyed by a serial of their own, not by request id: a sender may reuse an id
    // once its request is done, before that request's thread was joined.
    const uint64_t serial = next_serial_++;
    threads_.emplace(serial,
                     std::thread([this, serial, in = std::move(in)] { Serve(serial, in); }));
  }

  // A cache ready before the first request (Preallocate): served to requests of its shape and
  // dtype like any idle cache.
  void AddIdle(std::unique_ptr<KvCache> cache) {
    std::lock_guard lock(mu_);
    idle_.push_back(std::move(cache));
  }

  void Join() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return active_ == 0; });
    ReapLocked();
  }

 private:
  void ReapLocked() {
    for (uint64_t serial : finished_) {
      auto it = threads_.find(serial);
      if (it == threads_.end()) continue;
      it->second.join();
      threads_.erase(it);
    }
    finished_.clear();
  }

  // A cache of the request's shape and dtype: an idle one, else a new one (dropping the
  // oldest idle cache first when every slot already has one).
  Result<std::unique_ptr<KvCache>> Acquire(const IncomingRequest& in) {
    {
      std::lock_guard lock(mu_);
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if ((*it)->shape() == in.info.shape && (*it)->dtype() == in.info.dtype) {
          auto c = std::move(*it);
          idle_.erase(it);
          return c;
        }
      }
      if (!idle_.empty() && idle_.size() + active_ > size_t(a_.max_concurrent)) {
        idle_.pop_front();
      }
    }
    auto fresh = KvCache::Create(in.info.shape, in.info.dtype);
    if (!fresh.ok()) return fresh.status();
    return std::make_unique<KvCache>(std::move(*fresh));
  }

  void Serve(uint64_t serial, const IncomingRequest& in) {
    const uint64_t id = in.request_id;
    const double t0 = NowSeconds();
    std::unique_ptr<KvCache> cache;
    Status s = Status::Ok();
    if (auto c = Acquire(in); c.ok()) {
      cache = std::move(*c);
      cache->metadata() = in.info.metadata;
      s = receiver_.SetDestination(id, cache->view());
      if (s.ok()) s = receiver_.Wait(id, -1);
    } else {
      s = c.status();
    }
    const double seconds = NowSeconds() - t0;
    if (s.ok()) s = Report(in, *cache, seconds);
    if (!s.ok()) {
      WriteLogLine(stderr, "kvwire serve: request " + std::to_string(id) + " from '" + in.peer +
                               "' failed: " + s.ToString());
    }
    (void)receiver_.Release(id);
    std::lock_guard lock(mu_);
    if (!s.ok()) failed_ = true;
    if (cache) idle_.push_back(std::move(cache));
    finished_.push_back(serial);
    --active_;
    cv_.notify_all();
  }

  // Writes the KV dump (unless --discard) and prints the request's line.
  Status Report(const IncomingRequest& in, const KvCache& cache, double seconds) {
    const uint64_t id = in.request_id;
    const std::string path = a_.discard ? std::string("(discarded)")
                                        : a_.out_dir + "/request-" + std::to_string(id) +
                                              ".safetensors";
    if (!a_.discard) KVWIRE_RETURN_IF_ERROR(SaveKvDump(path, cache));
    auto st = receiver_.stats(id);
    std::string levels;
    if (st.ok()) {
      for (size_t i = 0; i < st->chunks_per_level.size(); ++i) {
        if (st->chunks_per_level[i] == 0) continue;
        if (!levels.empty()) levels += ", ";
        levels += in.levels[i].codec + " x" + std::to_string(st->chunks_per_level[i]);
      }
    }
    const KvShape& sh = in.info.shape;
    const uint64_t raw = sh.elements() * DTypeSize(in.info.dtype);
    // One write for both lines: the receiver's threads log to stderr meanwhile, and a log that
    // holds both streams must not get their lines spliced into this one.
    WriteLogLine(
        stdout,
        "request " + std::to_string(id) + " from '" + in.peer + "': " + std::to_string(sh.layers) +
            " layers x " + std::to_string(sh.tokens) + " tokens -> " + path + "\n  " +
            (st.ok() ? Thousands(st->wire_bytes) : std::string("?")) + " bytes on the wire (" +
            (st.ok() && st->wire_bytes ? Format("%.2fx", double(raw) / double(st->wire_bytes))
                                       : std::string("?")) +
            " vs " + std::string(DTypeName(in.info.dtype)) + "), " +
            Format("%.1f ms", seconds * 1000) + " to KV-ready; levels: " + levels +
            (st.ok() && st->landed_chunks
                 ? "; " + std::to_string(st->landed_chunks) + " read in place"
                 : std::string()));
    return Status::Ok();
  }

  const ServeArgs& a_;
  Receiver& receiver_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int active_ = 0;
  bool failed_ = false;
  uint64_t next_serial_ = 0;
  std::map<uint64_t, std::thread> threads_;  // by serial
  std::vector<uint64_t> finished_;           // serials whose thread is done, to join
  std::deque<std::unique_ptr<KvCache>> idle_;
};

int RunServe(const ServeArgs& a) {
  const char* cmd = "serve";
  ReceiverOptions o;
  o.backend = a.backend;
  o.transport.address = a.listen;
  o.transport.node_name = "kvwire-serve";
  o.stall_timeout_ms = a.stall_timeout_ms;
  o.transport.busy_poll_us = a.busy_poll_us;
  o.verbose = a.verbose;
  auto profile = LoadProfileArg(a.profile);
  if (!profile.ok()) return FailStatus(cmd, profile.status().WithContext("--profile " + a.profile));
  o.profile = profile->get();
  o.fetch_profiles = !a.no_fetch_profiles;
  o.receive_in_place = !a.no_receive_in_place;
  auto tls = MakeTlsOptions(a.tls, a.backend);
  if (!tls.ok()) return FailStatus(cmd, tls.status());
  o.transport.tls = std::move(*tls);
  if (!a.key_file.empty()) {
    auto key = LoadKeyFile(a.key_file);
    if (!key.ok()) return FailStatus(cmd, key.status());
    o.transport.key = std::move(*key);
  } else if (!a.insecure) {
    return Fail(cmd, "--key-file is required (or --insecure to accept unauthenticated peers)");
  } else {
    o.transport.allow_unauthenticated = true;
  }
  if (!a.discard) {
    std::error_code ec;
    std::filesystem::create_directories(a.out_dir, ec);
    if (ec) return Fail(cmd, "cannot create --out-dir " + a.out_dir + ": " + ec.message());
  }

  std::unique_ptr<KvCache> preallocated;
  if (!a.preallocate.empty()) {
    auto p = ParsePreallocate(a.preallocate);
    if (!p.ok()) return FailStatus(cmd, p.status());
    auto cache = Preallocate(p->first, p->second);
    if (!cache.ok())
      return FailStatus(cmd, cache.status().WithContext("--preallocate " + a.preallocate));
    preallocated = std::make_unique<KvCache>(std::move(*cache));
    const KvShape& shape = p->first;
    std::cout << "kvwire serve: preallocated a " << DTypeName(p->second) << " KV cache of "
              << Thousands(shape.elements() * DTypeSize(p->second)) << " bytes for requests of "
              << shape.layers << " layers x " << shape.tokens << " tokens x " << shape.kv_heads
              << " kv heads x " << shape.head_dim << std::endl;
  }

  auto receiver = Receiver::Listen(o);
  if (!receiver.ok()) return FailStatus(cmd, receiver.status());
  Server server(a, **receiver);
  if (preallocated) server.AddIdle(std::move(preallocated));
  std::cout << "kvwire serve: listening on " << (*receiver)->address() << " (" << a.backend
            << (a.tls.tls ? ", TLS" : "") << ")" << std::endl;
  int accepted = 0;
  while (a.count == 0 || accepted < a.count) {
    server.WaitForSlot();
    if (server.stopping()) break;
    // A bounded wait, so that a --count run stops accepting soon after a request fails.
    auto in = (*receiver)->NextRequest(a.count == 0 ? -1 : 200);
    if (!in.ok() && in.status().code() == StatusCode::kTimeout) continue;
    if (!in.ok()) {
      server.Join();
      return FailStatus(cmd, in.status());
    }
    server.Start(std::move(*in));
    ++accepted;
  }
  server.Join();
  (*receiver)->Close();
  return server.failed() && a.count != 0 ? 1 : 0;
}

const CommandRegistrar kRegister(
    "serve", "decode node: receive KV caches over ucx or tcp and write them as KV dumps",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<ServeArgs>();
      sub->add_option("--listen", a->listen, "HOST:PORT to listen on (port 0: any free port)");
      sub->add_option("--backend", a->backend, "ucx | tcp")->check(CLI::IsMember({"ucx", "tcp"}));
      sub->add_option("--key-file", a->key_file,
                      "pre-shared key: 64+ hex digits or >= 16 raw bytes");
      sub->add_flag("--insecure", a->insecure, "accept unauthenticated peers (no --key-file)");
      sub->add_option("--out-dir", a->out_dir, "where received KV dumps are written");
      sub->add_flag("--discard", a->discard,
                    "do not write the received KV (benchmarks: report bytes and time only)");
      sub->add_option("--profile", a->profile,
                      "calibration profile (.kvp) for requests with profile-based levels "
                      "(fraqtl); without it, or for a stream made with another one, the profile "
                      "is fetched from the sender and checked against its content hash");
      sub->add_flag("--no-fetch-profiles", a->no_fetch_profiles,
                    "refuse requests whose profile is not --profile instead of fetching it");
      sub->add_flag("--no-receive-in-place", a->no_receive_in_place,
                    "receive every chunk into a buffer and copy it into the KV cache (by "
                    "default tcp reads fp16 chunks straight into the cache)");
      sub->add_option("--count", a->count, "exit after this many requests (0: serve forever)");
      sub->add_option("--max-concurrent", a->max_concurrent,
                      "requests served at once, each into a KV cache of its own")
          ->check(CLI::Range(1, 256));
      sub->add_option("--preallocate", a->preallocate,
                      "LAYERSxTOKENSxKV_HEADSxHEAD_DIM[:DTYPE]: allocate and page in a KV cache "
                      "of that shape (dtype f16 unless given) before it listens, as an engine's "
                      "KV pool exists before its first request; requests of that shape and "
                      "dtype are received into it instead of a fresh cache");
      sub->add_option("--stall-timeout-ms", a->stall_timeout_ms, "fail a request idle this long");
      sub->add_option("--busy-poll-us", a->busy_poll_us, kBusyPollHelp);
      AddTlsOptions(sub, &a->tls, /*listening=*/true);
      sub->add_flag("--verbose,-v", a->verbose, "log connections, levels and completions");
      return [a] { return RunServe(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
