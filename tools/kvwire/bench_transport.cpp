// kvwire bench transport: the measurements (bench_transport.h). Both ends run in this process on
// 127.0.0.1; ucx_perftest runs as a server + client pair of processes beside it.
#include "bench_transport.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <iostream>
#include <optional>
#include <thread>

#include "bench_transport_report.h"
#include "cli_util.h"
#include "command.h"
#include "kvwire/kv_view.h"
#include "kvwire/session.h"
#include "kvwire/transport.h"
#include "transport/backends.h"

extern char** environ;

namespace kvwire::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Session data: rows of 8 KV heads x 128 = 1024 elements (2 KiB of fp16); 4 layers x 8192 tokens
// = 128 MiB of fp16 per request. A chunk of S bytes is S / 2 KiB tokens.
constexpr uint32_t kHeads = 8, kHeadDim = 128;
constexpr uint64_t kRowBytes = uint64_t{kHeads} * kHeadDim * 2;
constexpr uint32_t kSessionLayers = 4, kSessionTokens = 8192;
constexpr uint64_t kMaxChunkElements = 16ull << 20;  // transport/chunk_grid.h

TransportOptions Loopback(const TransportBenchArgs& a) {
  TransportOptions o;
  o.address = "127.0.0.1:0";
  o.key = std::vector<uint8_t>(32, 0x42);
  o.node_name = "bench";
  o.busy_poll_us = a.busy_poll_us;
  return o;
}

// The raw runs' window: see TransportBenchArgs::queue_mib.
TransportOptions RawLoopback(const TransportBenchArgs& a, uint64_t size) {
  TransportOptions o = Loopback(a);
  o.max_queued_bytes = std::max<uint64_t>(a.queue_mib << 20, 2 * size);
  o.max_pooled_bytes = 4 * o.max_queued_bytes;
  return o;
}

// The backend alone: one connection on loopback, `size`-byte data messages one way. The sender
// takes its payload buffers from the connection (TakeBuffer: the buffers of sent messages come
// back to it) and the receiver hands every message back (Recycle), as the session receiver does:
// after the warm-up neither side allocates per message, like ucx_perftest with its one buffer.
// Payload contents are whatever the buffers held (the backend does not look at them).
// `after_run(r)` runs after timed run r (the reference's run of the same round), while the
// connection stays open and idle.
Status MeasureRaw(const std::string& backend, const TransportBenchArgs& a, BenchPoint* p,
                  const std::function<Status(int)>& after_run) {
  KVWIRE_ASSIGN_OR_RETURN(auto transport, CreateTransport(backend));
  KVWIRE_ASSIGN_OR_RETURN(auto listener, transport->Listen(RawLoopback(a, p->size)));
  TransportOptions co = RawLoopback(a, p->size);
  co.address = listener->address();
  auto accepted = std::async(std::launch::async, [&] { return listener->Accept(10000); });
  KVWIRE_ASSIGN_OR_RETURN(std::unique_ptr<Connection> client, transport->Connect(co));
  KVWIRE_ASSIGN_OR_RETURN(std::unique_ptr<Connection> server, accepted.get());

  const uint64_t size = p->size;
  const uint64_t budget = a.mib_per_point << 20;
  const int warmup = static_cast<int>(std::clamp<uint64_t>((128ull << 20) / size, 4, 256));
  auto next = [&] {
    Message m;
    m.kind = MessageKind::kData;
    m.meta.assign(16, 0);
    m.payload = client->TakeBuffer(size - 16);
    return m;
  };
  Status failure;
  auto run = [&](uint64_t n) -> double {
    Status send_status;
    const auto t0 = Clock::now();
    std::thread sender([&] {
      for (uint64_t i = 0; i < n; ++i) {
        send_status = client->Send(next());
        if (!send_status.ok()) return;
      }
    });
    for (uint64_t i = 0; i < n; ++i) {
      auto m = server->Receive(60000);
      if (!m.ok()) {
        failure = m.status().WithContext(backend + " raw receive");
        client->Close();
        break;
      }
      server->Recycle(std::move(*m));
    }
    const double s = Seconds(Clock::now() - t0);
    sender.join();
    if (failure.ok() && !send_status.ok()) failure = send_status.WithContext(backend + " raw send");
    return s;
  };
  (void)run(warmup);  // warm-up: connection, buffers, page faults
  const uint64_t count = std::max<uint64_t>(8, budget / size);
  std::vector<double> secs;
  for (int r = 0; r < a.repeat && failure.ok(); ++r) {
    secs.push_back(run(count));
    if (failure.ok() && after_run) KVWIRE_RETURN_IF_ERROR(after_run(r));
  }
  KVWIRE_RETURN_IF_ERROR(failure);
  for (double t : secs) p->raw_runs.push_back(double(size) * double(count) / t / 1e9);
  p->raw_gbps = double(size) * double(count) / Median(secs) / 1e9;
  p->raw_messages = count;

  // One message in flight at a time: Send() called to Receive() returned (same clock).
  const int samples = static_cast<int>(
      std::clamp<uint64_t>(budget / 4 / size, 10, static_cast<uint64_t>(a.max_latency_samples)));
  std::vector<double> lat;
  for (int i = 0; i < samples; ++i) {
    Message m = next();
    const auto t0 = Clock::now();
    KVWIRE_RETURN_IF_ERROR(client->Send(std::move(m)));
    auto got = server->Receive(60000);
    if (!got.ok()) return got.status().WithContext(backend + " raw latency");
    lat.push_back(Seconds(Clock::now() - t0) * 1e6);
    server->Recycle(std::move(*got));
  }
  p->raw_p50_us = Percentile(lat, 0.5);
  p->raw_p99_us = Percentile(lat, 0.99);
  p->raw_samples = samples;
  client->Close();
  server->Close();
  return Status::Ok();
}

// Finite fp16 values in [1, 2) with a cheap hash for the mantissa (fp16 passes them through).
void Fill(KvCache* c) {
  for (uint32_t l = 0; l < c->shape().layers; ++l)
    for (KvKind k : {KvKind::kKey, KvKind::kValue}) {
      auto t = c->tensor(l, k);
      auto* h = reinterpret_cast<uint16_t*>(t.data());
      for (size_t i = 0; i < t.size() / 2; ++i)
        h[i] = static_cast<uint16_t>(0x3c00 |
                                     ((i * 2654435761u + l * 977 + uint32_t(k)) >> 7 & 0x3ff));
    }
}

// The session: Sender/Receiver on one backend, fp16 chunks of `size` bytes (CRC, acks).
Status MeasureSession(const std::string& backend, const KvCache& src, KvCache* dst,
                      const TransportBenchArgs& a, BenchPoint* p) {
  const uint64_t size = p->size;
  const uint64_t tokens = size / kRowBytes;
  if (size % kRowBytes != 0 || tokens * kHeads * kHeadDim > kMaxChunkElements ||
      tokens > kSessionTokens) {
    p->session_note = "n/a: a session chunk holds at most 16 Mi elements (32 MiB of fp16)";
    return Status::Ok();
  }
  ReceiverOptions ro;
  ro.backend = backend;
  ro.transport = Loopback(a);
  KVWIRE_ASSIGN_OR_RETURN(auto receiver, Receiver::Listen(ro));
  SenderOptions so;
  so.backend = backend;
  so.transport = Loopback(a);
  so.transport.address = receiver->address();
  KVWIRE_ASSIGN_OR_RETURN(auto sender, Sender::Connect(so));
  uint64_t next_id = 1;
  // One request of `from` into `to`; seconds from Open to the sender's completion (the receiver
  // decoded and acknowledged every chunk).
  auto transfer = [&](const KvView& from, const KvView& to) -> Result<double> {
    std::promise<Status> received;
    auto result = received.get_future();
    std::thread rt([&] {
      auto in = receiver->NextRequest(30000);
      if (!in.ok()) return received.set_value(in.status());
      Status s = receiver->SetDestination(in->request_id, to);
      if (s.ok()) s = receiver->Wait(in->request_id, 60000);
      (void)receiver->Release(in->request_id);
      received.set_value(s);
    });
    SendRequestOptions q;
    q.request_id = next_id++;
    q.levels = {{"fp16", 16, 0}};
    q.chunk_tokens = static_cast<uint32_t>(tokens);
    const auto t0 = Clock::now();
    Status st;
    auto req = sender->Open(from, q);
    if (req.ok()) st = (*req)->PushAll();
    if (req.ok() && st.ok()) st = (*req)->Wait(60000);
    const double secs = Seconds(Clock::now() - t0);
    if (!req.ok()) st = req.status();
    if (!st.ok()) sender->Close();  // wakes the receiver thread (its request fails)
    rt.join();
    KVWIRE_RETURN_IF_ERROR(st.WithContext(backend + " session send"));
    KVWIRE_RETURN_IF_ERROR(result.get().WithContext(backend + " session receive"));
    return secs;
  };
  KVWIRE_RETURN_IF_ERROR(transfer(src.view(), dst->view()).status());  // warm-up
  std::vector<double> secs;
  for (int r = 0; r < a.repeat; ++r) {
    KVWIRE_ASSIGN_OR_RETURN(double s, transfer(src.view(), dst->view()));
    secs.push_back(s);
  }
  for (double t : secs) p->session_runs.push_back(double(src.shape().elements()) * 2 / t / 1e9);
  p->session_gbps = double(src.shape().elements()) * 2 / Median(secs) / 1e9;

  // Latency: a request of one layer whose K and V are one chunk each, one request at a time.
  const KvShape one{1, static_cast<uint32_t>(tokens), kHeads, kHeadDim};
  KVWIRE_ASSIGN_OR_RETURN(KvCache small_src, KvCache::Create(one, DType::kF16));
  KVWIRE_ASSIGN_OR_RETURN(KvCache small_dst, KvCache::Create(one, DType::kF16));
  Fill(&small_src);
  const int samples = static_cast<int>(std::clamp<uint64_t>(
      (a.mib_per_point << 20) / 8 / size, 5, static_cast<uint64_t>(a.max_latency_samples / 2)));
  std::vector<double> lat;
  for (int i = 0; i < samples; ++i) {
    KVWIRE_ASSIGN_OR_RETURN(double s, transfer(small_src.view(), small_dst.view()));
    lat.push_back(s * 1e6);
  }
  p->session_p50_us = Percentile(lat, 0.5);
  p->session_p99_us = Percentile(lat, 0.99);
  p->session_samples = samples;
  sender->Close();
  receiver->Close();
  return Status::Ok();
}

// The UCX environment of a reference run over `tls` (VAR=VALUE each). `peer_errors`: plus the
// settings the ucx backend makes for itself where the environment does not set them (copied,
// not zero-copy, sends and 1 MiB tcp fragments: src/transport/ucx.cpp); with them and -e,
// ucx_perftest runs the same UCX protocol as the backend.
std::vector<std::string> ReferenceUcxEnv(const std::string& tls, bool peer_errors) {
  std::vector<std::string> out = {"UCX_TLS=" + tls};
  if (!peer_errors) return out;
  const std::pair<const char*, const char*> settings[] = {
      {"UCX_ZCOPY_THRESH", transport::kUcxZcopyThresh},
      {"UCX_TCP_TX_SEG_SIZE", transport::kUcxTcpSegSize},
      {"UCX_TCP_RX_SEG_SIZE", transport::kUcxTcpSegSize}};
  for (const auto& [var, value] : settings)
    if (!std::getenv(var)) out.push_back(std::string(var) + "=" + value);
  return out;
}

// What UCX chose for an endpoint to another host over `tls`, from `ucx_info -e -u mw[e] -P inter`:
// its lanes and protocol ranges, one line each. `peer_errors`: with error handling ('e') and the
// backend's settings, as the ucx backend and perftest -e run; else as perftest as is runs.
std::vector<std::string> UcxEndpointConfig(const TransportBenchArgs& a, const std::string& tls,
                                           bool peer_errors) {
  std::string env;
  for (const std::string& e : ReferenceUcxEnv(tls, peer_errors)) env += e + " ";
  const std::string cmd = "env " + env + UcxInfoPath(a.perftest) + " -e -u " +
                          (peer_errors ? "mwe" : "mw") + " -P inter 2>&1";
  std::vector<std::string> lines;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return {"(cannot run " + cmd + ")"};
  char buf[1024];
  while (std::fgets(buf, sizeof buf, f)) {
    std::string line = buf;
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    if (line.find("lane[") == std::string::npos && line.find("am_send") == std::string::npos &&
        line.find("rma_bw") == std::string::npos)
      continue;
    std::string squeezed;  // without the leading "#", runs of spaces as one
    for (char ch : line.substr(std::min(line.size(), line.find_first_not_of("# "))))
      if (ch != ' ' || (!squeezed.empty() && squeezed.back() != ' ')) squeezed += ch;
    lines.push_back(squeezed);
  }
  ::pclose(f);
  if (lines.empty()) lines.push_back("(no endpoint configuration from: " + cmd + ")");
  return lines;
}

// ucx_perftest -t ucp_am_bw as a server + client pair on 127.0.0.1; overall bandwidth in GB/s.
// `peer_errors`: -e on both ends (endpoints with peer error handling, like the ucx backend's) and
// the backend's UCX settings (ReferenceUcxEnv).
Result<double> RunPerftest(const TransportBenchArgs& a, const std::string& tls, uint64_t size,
                           bool peer_errors, int port) {
  const uint64_t iters = std::clamp<uint64_t>((a.mib_per_point << 20) / size, 16, 200000);
  const uint64_t warmup = std::max<uint64_t>(2, iters / 10);
  std::vector<std::string> envs = ReferenceUcxEnv(tls, peer_errors);
  std::string env;  // the same, as the client's shell prefix
  for (const std::string& e : envs) env += e + " ";
  const std::string port_s = std::to_string(port);
  std::vector<std::string> args = {a.perftest, "-p", port_s};
  if (peer_errors) args.push_back("-e");
  for (char** e = environ; *e; ++e) envs.emplace_back(*e);
  std::vector<char*> argv, envp;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  for (auto& s : envs) envp.push_back(s.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t server = -1;
  const int rc = posix_spawn(&server, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  KVWIRE_RETURN_ERROR_IF(rc != 0, kIoError, "cannot run " + a.perftest + ": " + std::strerror(rc));
  const std::string cmd = env + a.perftest + " 127.0.0.1 -p " + port_s + " -t ucp_am_bw -s " +
                          std::to_string(size) + " -n " + std::to_string(iters) + " -w " +
                          std::to_string(warmup) + (peer_errors ? " -e" : "") +
                          std::string(" 2>&1");
  std::string out;
  double mbps = -1;
  for (int attempt = 0; attempt < 50 && mbps < 0; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(attempt == 0 ? 300 : 100));
    out.clear();
    FILE* f = ::popen(cmd.c_str(), "r");
    if (!f) break;
    char line[1024];
    while (std::fgets(line, sizeof line, f)) out += line;
    ::pclose(f);
    const size_t at = out.find("Final:");
    if (at == std::string::npos) continue;  // the server was not listening yet: retry
    unsigned long n = 0;
    double p50, avg, overall, bw_avg, bw_overall;
    if (std::sscanf(out.c_str() + at, "Final: %lu %lf %lf %lf %lf %lf", &n, &p50, &avg, &overall,
                    &bw_avg, &bw_overall) == 6)
      mbps = bw_overall;
  }
  int status = 0;
  for (int i = 0; i < 100 && ::waitpid(server, &status, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (::waitpid(server, &status, WNOHANG) == 0) {
    ::kill(server, SIGKILL);
    ::waitpid(server, &status, 0);
  }
  KVWIRE_RETURN_ERROR_IF(mbps < 0, kIoError, "ucx_perftest gave no result:\n" + out);
  return mbps * 1048576.0 / 1e9;  // its "MB/s" are MiB/s
}

}  // namespace

void AddTransportBenchOptions(CLI::App* cmd, TransportBenchArgs* a, TransportBenchText* t) {
  cmd->footer(
      "Both ends run in this process on 127.0.0.1. raw: one Connection, messages one way (GB/s "
      "of\nmessages, median of --repeat runs; latency of one message in flight). session: "
      "Sender/Receiver\nwith the fp16 level (CRC, acks) on 128 MiB requests (GB/s of fp16 KV; "
      "latency of a one-layer\nrequest). Each UCX_TLS in --ucx-tls is one configuration of the "
      "ucx backend, run beside\nucx_perftest -t ucp_am_bw (server + client on 127.0.0.1) with "
      "the same UCX_TLS and sizes,\nas is and with -e: error handling and the backend's UCX "
      "settings, the backend's exact\nprotocol (ucx_info -e, written into the report, shows "
      "what UCX picked for each).\nShared-memory UCX_TLS (sm, posix, cma) cannot be used: the "
      "ucx backend asks for peer failure\ndetection, which UCX's shared-memory transports lack "
      "(Destination is unreachable).\nProgress on stderr; the table on stdout and in "
      "<out-dir>/transport.md, numbers in transport.json.\n"
      "Example (quick): kvwire bench transport --sizes 64K,1M --backends tcp --mib 32 "
      "--perftest none");
  cmd->add_option("--sizes", t->sizes, "Message sizes (K/M suffixes = KiB/MiB)")
      ->capture_default_str();
  cmd->add_option("--backends", t->backends, "Backends: ucx, tcp")->capture_default_str();
  cmd->add_option("--ucx-tls", t->ucx_tls,
                  "UCX_TLS values, one configuration each (ucx backend and ucx_perftest)")
      ->capture_default_str();
  cmd->add_option("--mib", a->mib_per_point, "MiB moved per raw throughput run")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--repeat", a->repeat, "Throughput runs per point (median)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_option("--latency-samples", a->max_latency_samples, "Most latency samples per point")
      ->capture_default_str()
      ->check(CLI::Range(10, 100000));
  cmd->add_option("--ucx-env", t->ucx_env,
                  "Per UCX_TLS, configurations: 'default' or space-separated VAR=VALUE set for "
                  "the ucx backend and ucx_perftest (UCX_ZCOPY_THRESH=auto: zero-copy eager sends, "
                  "which kvwire turns off by default; see src/transport/ucx.cpp)")
      ->capture_default_str();
  cmd->add_option("--queue-mib", a->queue_mib,
                  "Raw runs: MiB a connection may queue (at least two messages); each end pools "
                  "4x that for buffer reuse")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--busy-poll-us", a->busy_poll_us,
                  "ucx: microseconds the progress thread polls during transfers before it "
                  "sleeps (TransportOptions::busy_poll_us; the library default is 0, sleep at once)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000000));
  cmd->add_flag("--no-session", t->no_session, "Measure the backends alone only");
  cmd->add_option("--perftest", a->perftest, "ucx_perftest to compare with, or none")
      ->capture_default_str();
  cmd->add_option("--perftest-port", a->perftest_port, "First TCP port of ucx_perftest runs")
      ->capture_default_str()
      ->check(CLI::Range(1024, 65000));
  cmd->add_option("--out-dir", a->out_dir, "Where transport.json/.md go")->capture_default_str();
}

bool FinishTransportBenchArgs(const TransportBenchText& t, TransportBenchArgs* a,
                              std::string* error) {
  if (!ParseSizes(t.sizes, &a->sizes, error)) return false;
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos <= s.size()) {
      const size_t comma = std::min(s.find(',', pos), s.size());
      if (comma > pos) out.push_back(s.substr(pos, comma - pos));
      pos = comma + 1;
    }
    return out;
  };
  a->backends = split(t.backends);
  a->ucx_tls = split(t.ucx_tls);
  a->ucx_env = split(t.ucx_env);
  for (std::string& e : a->ucx_env) {
    if (e == "default") e.clear();
    for (size_t pos = 0; !e.empty() && pos < e.size();) {
      const size_t space = std::min(e.find(' ', pos), e.size());
      if (e.substr(pos, space - pos).find('=') == std::string::npos) {
        *error = "--ucx-env: '" + e + "' is not 'default' or VAR=VALUE ...";
        return false;
      }
      pos = space + 1;
    }
  }
  if (a->ucx_env.empty()) a->ucx_env.push_back("");
  a->session = !t.no_session;
  if (a->backends.empty()) *error = "--backends is empty";
  if (a->ucx_tls.empty()) *error = "--ucx-tls is empty";
  return a->backends.size() && a->ucx_tls.size();
}

bool ParseSizes(const std::string& text, std::vector<uint64_t>* out, std::string* error) {
  out->clear();
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    std::string item = text.substr(pos, comma - pos);
    pos = comma + 1;
    uint64_t mult = 1;
    if (!item.empty() && std::strchr("KkMmGg", item.back())) {
      const char u = static_cast<char>(std::toupper(item.back()));
      mult = u == 'K' ? 1ull << 10 : u == 'M' ? 1ull << 20 : 1ull << 30;
      item.pop_back();
    }
    char* end = nullptr;
    const unsigned long long v = item.empty() ? 0 : std::strtoull(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v == 0) {
      *error = "--sizes '" + text + "': '" + item + "' is not a size (e.g. 64K, 1M)";
      return false;
    }
    const uint64_t bytes = v * mult;
    if (bytes < 1024 || bytes > kMaxDataMessageBytes) {
      *error = "--sizes: " + std::to_string(bytes) + " bytes is outside 1 KiB..64 MiB";
      return false;
    }
    out->push_back(bytes);
  }
  return true;
}

int RunBenchTransport(const TransportBenchArgs& a) {
  const char* cmd = "bench transport";
  const auto available = AvailableTransports();
  for (const auto& b : a.backends) {
    if (b != "ucx" && b != "tcp") return Fail(cmd, "--backends: '" + b + "' is not ucx or tcp");
    if (std::find(available.begin(), available.end(), b) == available.end())
      return Fail(cmd, "this build has no " + b + " backend");
  }
  const bool ucx = std::find(a.backends.begin(), a.backends.end(), "ucx") != a.backends.end();
  const bool perftest = ucx && a.perftest != "none";
  if (perftest && ::access(a.perftest.c_str(), X_OK) != 0)
    return Fail(cmd, "--perftest " + a.perftest +
                         " is not an executable (give its path, or "
                         "--perftest none to skip the reference)");
  BenchReport report;
  report.start_loadavg = LoadAverage();
  std::unique_ptr<KvCache> src, dst;
  if (a.session) {
    const KvShape shape{kSessionLayers, kSessionTokens, kHeads, kHeadDim};
    auto s = KvCache::Create(shape, DType::kF16);
    auto d = KvCache::Create(shape, DType::kF16);
    if (!s.ok() || !d.ok()) return FailStatus(cmd, s.ok() ? d.status() : s.status());
    src = std::make_unique<KvCache>(std::move(*s));
    dst = std::make_unique<KvCache>(std::move(*d));
    Fill(src.get());
  }
  // UCX reads its variables from the environment when each context is created; ucx_perftest
  // inherits them. What the caller had is put back at the end.
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  auto set_env = [&](const std::string& name, const std::string& value) {
    if (std::none_of(saved.begin(), saved.end(), [&](auto& s) { return s.first == name; })) {
      const char* old = std::getenv(name.c_str());
      saved.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    }
    ::setenv(name.c_str(), value.c_str(), 1);
  };
  auto restore_env = [&] {
    for (auto& [name, value] : saved) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  };
  int port = a.perftest_port;
  for (const auto& backend : a.backends) {
    std::vector<std::pair<std::string, std::string>> variants = {{"", ""}};
    if (backend == "ucx") {
      variants.clear();
      for (const auto& tls : a.ucx_tls)
        for (const auto& env : a.ucx_env) variants.emplace_back(tls, env);
    }
    for (const auto& [tls, env] : variants) {
      BenchConfig config;
      config.backend = backend;
      config.ucx_tls = tls;
      config.ucx_env = env;
      restore_env();
      if (!tls.empty()) set_env("UCX_TLS", tls);
      for (size_t pos = 0; pos < env.size();) {
        const size_t space = std::min(env.find(' ', pos), env.size());
        const std::string kv = env.substr(pos, space - pos);
        if (const size_t eq = kv.find('='); eq != std::string::npos)
          set_env(kv.substr(0, eq), kv.substr(eq + 1));
        pos = space + 1;
      }
      if (perftest && !tls.empty()) {
        config.ucx_lanes = UcxEndpointConfig(a, tls, false);
        config.ucx_lanes_e = UcxEndpointConfig(a, tls, true);
      }
      for (uint64_t size : a.sizes) {
        BenchPoint p;
        p.size = size;
        const std::string what = config.Name() + " " + SizeName(size);
        // The reference runs in rounds with kvwire's: after raw run r, perftest as is and with
        // -e, so that each pair of runs saw the same moment of a shared machine.
        std::function<Status(int)> reference;
        if (perftest && !tls.empty()) {
          reference = [&](int) -> Status {
            for (bool e : {false, true}) {
              auto g = RunPerftest(a, tls, size, e, port++);
              if (!g.ok()) return g.status().WithContext(what);
              (e ? p.perftest_e_runs : p.perftest_runs).push_back(*g);
            }
            return Status::Ok();
          };
        }
        if (Status s = MeasureRaw(backend, a, &p, reference); !s.ok()) return FailStatus(cmd, s);
        if (!p.perftest_runs.empty()) {
          p.perftest_gbps = Median(p.perftest_runs);
          p.perftest_e_gbps = Median(p.perftest_e_runs);
        }
        if (a.session) {
          if (Status s = MeasureSession(backend, *src, dst.get(), a, &p); !s.ok())
            return FailStatus(cmd, s);
        }
        std::cerr << "[bench] " << ProgressLine(config, p) << "\n";
        config.points.push_back(p);
      }
      report.configs.push_back(std::move(config));
    }
  }
  restore_env();
  report.end_loadavg = LoadAverage();
  return WriteTransportReport(a, report);
}

}  // namespace kvwire::cli
