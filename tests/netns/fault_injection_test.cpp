// Fault injection across two network namespaces (reliability, docs/PROTOCOL.md): `kvwire serve`
// runs in namespace A, `kvwire send` in namespace B, joined by a veth pair that only exists inside
// them. 50 transfers (tcp and ucx backends, fp16 and a lossy codec) each get one fault at a random
// point drawn from a fixed seed: the link is cut (`ip link set down`, 50-800 ms, up) or the TCP
// connections are reset (`ss -K`). Every transfer must either complete with output bit-identical
// to an uninterrupted run or fail with a one-line error; none may hang (killed after 60 s); and
// the two long-lived receivers' RSS must come back to what it was before the 50 transfers. A
// second test resets the connections under 100 ucx transfers (a UCX abort, see its comment).
//
// UCX runs with UCX_TLS=tcp on the veth: its shared-memory transports would bypass the link (the
// namespaces share the host), and the ucx backend's endpoints need peer failure detection, which
// they lack anyway. Needs root and `ip netns`; skips (loudly, with the reason) otherwise. The
// host's own interfaces are never touched. KVWIRE_FAULT_SEED overrides the seed;
// KVWIRE_NETNS_KEEP_LOGS keeps the logs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "netns_util.h"

namespace kvwire {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using netns_test::Child;
using netns_test::NetnsUnavailable;
using netns_test::ReadFile;
using netns_test::Sh;
using netns_test::Spawn;
using netns_test::WaitChild;

constexpr int kTransfers = 50;
constexpr int kSendTimeoutMs = 60000;           // a transfer running longer than this is a hang
constexpr int kServeStallMs = 3000;             // receiver gives up on an idle request after this
constexpr uint64_t kRssToleranceKiB = 4 << 10;  // allowed RSS growth over the 50 transfers

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// A numeric field of /proc/PID/status ("VmRSS", "Threads"), 0 if unknown.
uint64_t StatusField(pid_t pid, const std::string& field) {
  std::istringstream in(ReadFile("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1));
  return 0;
}
// Resident set of a process in KiB (VmRSS), 0 if unknown.
uint64_t RssKiB(pid_t pid) { return StatusField(pid, "VmRSS"); }

// Resident KiB per mapping of `pid` (keyed by address range and name, from /proc/pid/smaps),
// to say where memory went when RSS does not come back.
std::map<std::string, uint64_t> RssByMapping(pid_t pid) {
  std::map<std::string, uint64_t> by;
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  std::string line, current;
  while (std::getline(in, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
        line.find(':') > line.find('-')) {
      // "start-end perms offset dev inode [name]": the range alone, plus the name if any.
      std::istringstream f(line);
      std::string range, perms, off, dev, inode, name;
      f >> range >> perms >> off >> dev >> inode;
      std::getline(f, name);
      const size_t b = name.find_first_not_of(' ');
      current = range + " " + (b == std::string::npos ? "[anon]" : name.substr(b));
    } else if (line.rfind("Rss:", 0) == 0) {
      by[current] += std::stoull(line.substr(4));
    }
  }
  return by;
}

// The mappings whose resident size grew by 256 KiB or more between two RssByMapping calls.
std::string GrownMappings(const std::map<std::string, uint64_t>& before,
                          const std::map<std::string, uint64_t>& after) {
  std::string out;
  for (const auto& [name, kib] : after) {
    const auto it = before.find(name);
    const uint64_t was = it == before.end() ? 0 : it->second;
    if (kib >= was + 256)
      out += "  " + name + ": " + std::to_string(was) + " -> " + std::to_string(kib) + " KiB\n";
  }
  return out.empty() ? "  (no single mapping grew by 256 KiB)\n" : out;
}

// The last `n` lines of `text`.
std::string Tail(const std::string& text, int n) {
  size_t at = text.size();
  while (n-- > 0 && at > 0) {
    const size_t nl = text.rfind('\n', at - 1);
    if (nl == std::string::npos) return text;
    at = nl;
  }
  return text.substr(at);
}

std::string Describe(bool cut, bool receiver_side, int delay_ms, int cut_ms) {
  std::string s = std::string(cut ? "cut " : "reset ") +
                  (receiver_side ? "recv-side" : "send-side") + " at " + std::to_string(delay_ms) +
                  " ms";
  if (cut) s += " for " + std::to_string(cut_ms) + " ms";
  return s;
}

// What `kvwire serve -v` said about one request.
enum class ServeOutcome { kNone, kAnnounced, kDone, kFailed };

ServeOutcome OutcomeOf(const std::string& log, uint64_t id) {
  const std::string done = "request " + std::to_string(id) + " from '";
  const std::string tagged = "kvwire serve: " + done;
  ServeOutcome o = ServeOutcome::kNone;
  std::istringstream in(log);
  // Found anywhere in a line, not only at its start: serve writes each line whole, but a log
  // that shows a line spliced into another must still be read for what it says (a done line
  // hidden that way once read as a hung request).
  for (std::string line; std::getline(in, line);) {
    if (line.find(tagged) != std::string::npos && line.find("' failed: ") != std::string::npos)
      return ServeOutcome::kFailed;
    if (line.find(done) != std::string::npos && line.find(" -> ") != std::string::npos)
      return ServeOutcome::kDone;
    if (line.find(tagged) != std::string::npos) o = ServeOutcome::kAnnounced;
  }
  return o;
}

struct Receiver {
  std::string backend;
  uint16_t port = 0;
  Child child;
  fs::path out_dir, log;
};

class FaultInjection : public testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = NetnsUnavailable(/*need_tc=*/false); !why.empty())
      GTEST_SKIP() << "SKIPPED: " << why;
    ns_.RemoveStale();
    if (std::string why = ns_.Create(); !why.empty())
      GTEST_SKIP() << "SKIPPED: cannot create network namespaces: " << why;
    ASSERT_TRUE(ns_.CarrierUp()) << "the new veth pair did not come up";
    // One directory per test: the next test's SetUp must not remove a failed test's logs.
    dir_ = fs::temp_directory_path() /
           ("kvwire_netns_" + std::to_string(::getpid()) + "_" +
            testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    for (auto& r : receivers_)
      if (r.child.pid > 0) {
        ::kill(r.child.pid, SIGKILL);
        ::waitpid(r.child.pid, nullptr, 0);
      }
    ns_.Remove();
    if (!HasFailure() && !dir_.empty() && !std::getenv("KVWIRE_NETNS_KEEP_LOGS"))
      fs::remove_all(dir_);
    if (fs::exists(dir_)) std::printf("logs kept in %s\n", dir_.c_str());
  }

  std::vector<std::string> UcxEnv(const std::string& dev) const {
    // tcp only: shared-memory transports would bypass the veth (both namespaces share the host).
    return {"UCX_TLS=tcp", "UCX_NET_DEVICES=" + dev};
  }


  std::vector<std::string> ServeEnv() const {
    std::vector<std::string> env = UcxEnv(ns_.dev_a);
    // RSS should follow live memory. glibc's defaults blur it: per-thread arenas (every
    // connection brings new threads) keep freed chunk buffers, and the dynamic mmap threshold
    // moves a freed 8 MiB KV onto the heap, where it stays. Measured on 24-40 transfers: RSS
    // wandered by +-10-20 MB with the defaults, stayed flat with one arena and a fixed threshold
    // (buffers >= 128 KiB are mmapped and unmapped when freed), so a leak shows and noise does not.
    env.push_back("MALLOC_ARENA_MAX=1");
    env.push_back("MALLOC_MMAP_THRESHOLD_=131072");
    return env;
  }

  Receiver StartServe(const std::string& backend, uint16_t port) {
    Receiver r;
    r.backend = backend;
    r.port = port;
    r.out_dir = dir_ / ("out-" + backend + "-" + std::to_string(port));
    r.log = dir_ / ("serve-" + backend + "-" + std::to_string(port) + ".log");
    r.child = Spawn({"ip", "netns", "exec", ns_.ns_a, KVWIRE_CLI, "serve", "--listen",
                     ns_.ip_a + ":" + std::to_string(port), "--backend", backend, "--key-file",
                     (dir_ / "key").string(), "--out-dir", r.out_dir.string(), "--stall-timeout-ms",
                     std::to_string(kServeStallMs), "-v"},
                    r.log, r.log, ServeEnv());
    return r;
  }

  struct SendResult {
    std::optional<int> rc;  // nullopt: hung (killed after kSendTimeoutMs)
    std::string out, err;
    double ms = 0;
  };
  SendResult Send(const Receiver& r, const std::string& codec, uint64_t id,
                  const std::function<void()>& fault) {
    const fs::path out = dir_ / ("send-" + std::to_string(id) + ".out");
    const fs::path err = dir_ / ("send-" + std::to_string(id) + ".err");
    const auto t0 = Clock::now();
    Child c = Spawn({"ip",
                     "netns",
                     "exec",
                     ns_.ns_b,
                     KVWIRE_CLI,
                     "send",
                     "--connect",
                     ns_.ip_a + ":" + std::to_string(r.port),
                     "--backend",
                     r.backend,
                     "--key-file",
                     (dir_ / "key").string(),
                     "--in",
                     (dir_ / "kv.safetensors").string(),
                     "--codec",
                     codec,
                     "--chunk-tokens",
                     "128",
                     "--request-id",
                     std::to_string(id)},
                    out, err, UcxEnv(ns_.dev_b));
    std::thread injector;
    if (fault) injector = std::thread(fault);
    SendResult s;
    s.rc = c.pid > 0 ? WaitChild(c.pid, kSendTimeoutMs) : std::optional<int>(-1);
    s.ms = Ms(Clock::now() - t0);
    if (injector.joinable()) injector.join();  // the link is up again after this
    s.out = ReadFile(out);
    s.err = ReadFile(err);
    return s;
  }

  // Waits until serve reports request `id` done or failed (or, when `may_be_unknown`, until it is
  // clear the request never reached it). Returns the outcome; kAnnounced means it hung.
  ServeOutcome Settle(const Receiver& r, uint64_t id, bool may_be_unknown) {
    const fs::path& log = r.log;
    const auto start = Clock::now();
    for (;;) {
      const ServeOutcome o = OutcomeOf(ReadFile(log), id);
      if (o == ServeOutcome::kDone || o == ServeOutcome::kFailed) return o;
      const double waited = Ms(Clock::now() - start);
      // Unknown after 1.5 s (TCP retransmissions after a cut included): it never arrived.
      if (o == ServeOutcome::kNone && may_be_unknown && waited > 1500) return o;
      if (waited > kServeStallMs + 10000) return o;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // The key, the input KV (8 layers x 1024 tokens x 4 heads x 64 = 8 MiB of fp16, 128 chunks of
  // 128 tokens) and a 200 Mbit/s limit on the sender's side of the link, so that a transfer lasts
  // long enough (~0.4 s) for faults to land inside it (optional: the fault windows adapt).
  bool PrepareInputs() {
    {
      std::ofstream k(dir_ / "key");
      k << "6b7677697265206e65746e73206661756c7420746573742070736b2030313233\n";
    }
    fs::permissions(dir_ / "key", fs::perms::owner_read | fs::perms::owner_write);
    auto [synth_rc, synth_out] =
        Sh(std::string(KVWIRE_CLI) + " synth --out " + (dir_ / "kv.safetensors").string() +
           " --layers 8 --kv-heads 4 --head-dim 64 --tokens 1024 --seed 11");
    EXPECT_EQ(synth_rc, 0) << synth_out;
    auto [tbf_rc, tbf_out] = Sh("ip netns exec " + ns_.ns_b + " tc qdisc add dev " + ns_.dev_b +
                                " root tbf rate 200mbit burst 64kb latency 200ms");
    if (tbf_rc != 0) std::printf("note: no tbf rate limit (%s)\n", tbf_out.c_str());
    return synth_rc == 0;
  }

  // False, with the receiver's exit status and the end of its log, once it has exited: a
  // fault on the link must never take the receiver down, and every later transfer would only
  // report "connection refused".
  bool ReceiverAlive(Receiver& r) {
    int st = 0;
    if (r.child.pid <= 0 || ::waitpid(r.child.pid, &st, WNOHANG) != r.child.pid) return true;
    r.child.pid = -1;
    ADD_FAILURE() << "the " << r.backend << " receiver exited: "
                  << (WIFSIGNALED(st) ? "signal " + std::to_string(WTERMSIG(st))
                                      : "status " + std::to_string(WEXITSTATUS(st)))
                  << "\nserve log, last lines:\n"
                  << Tail(ReadFile(r.log), 60);
    return false;
  }

  bool WaitListening(const Receiver& r) {
    const fs::path& log = r.log;
    const auto deadline = Clock::now() + std::chrono::seconds(15);
    while (r.child.pid > 0 && Clock::now() < deadline) {
      if (ReadFile(log).find("listening on") != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << r.backend << " receiver did not start: " << ReadFile(log);
    return false;
  }

  netns_test::VethPair ns_{"kvw"};
  fs::path dir_;
  std::vector<Receiver> receivers_;
};

TEST_F(FaultInjection, FiftyTransfersWithLinkCutsAndResets) {
  ASSERT_TRUE(PrepareInputs());
  receivers_.push_back(StartServe("tcp", 7070));
  receivers_.push_back(StartServe("ucx", 7071));
  for (const auto& r : receivers_) ASSERT_TRUE(WaitListening(r));

  // Uninterrupted references: one per codec (tcp), and the same bytes over ucx.
  const std::vector<std::string> codecs = {"fp16", "q4_0"};
  std::map<std::string, std::string> reference;
  std::map<std::string, double> clean_ms;  // per codec, over tcp
  uint64_t id = 1;
  for (auto& r : receivers_) {
    for (const auto& codec : codecs) {
      SendResult s = Send(r, codec, id, nullptr);
      ASSERT_EQ(s.rc, std::optional<int>(0)) << r.backend << " " << codec << ": " << s.err;
      ASSERT_EQ(Settle(r, id, false), ServeOutcome::kDone);
      const std::string got = ReadFile(r.out_dir / ("request-" + std::to_string(id) + ".safetensors"));
      if (!reference.count(codec)) reference[codec] = got;
      ASSERT_EQ(got, reference[codec])
          << codec << " over " << r.backend << " differs from the tcp reference";
      if (r.backend == "tcp") clean_ms[codec] = s.ms;
      std::printf("reference %-4s %-5s %7.0f ms\n", r.backend.c_str(), codec.c_str(), s.ms);
      ++id;
    }
  }
  // fp16 of an fp16 dump is lossless: the received dump is the input file.
  ASSERT_EQ(reference["fp16"], ReadFile(dir_ / "kv.safetensors"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::map<std::string, uint64_t> rss_before;
  // Threads too: every live connection has its own (a ucx one, a progress thread and a
  // watcher), so a count above this after the transfers says a connection is still open.
  std::map<std::string, uint64_t> threads_before;
  std::map<std::string, std::map<std::string, uint64_t>> maps_before;
  for (auto& r : receivers_) {
    rss_before[r.backend] = RssKiB(r.child.pid);
    maps_before[r.backend] = RssByMapping(r.child.pid);
    threads_before[r.backend] = StatusField(r.child.pid, "Threads");
  }

  const char* seed_env = std::getenv("KVWIRE_FAULT_SEED");
  const uint32_t seed = seed_env ? static_cast<uint32_t>(std::stoul(seed_env)) : 20240611u;
  std::mt19937 rng(seed);
  // Faults land anywhere from process start (load, connect, handshake) to the end of a clean
  // transfer of the same codec (the link is the bottleneck, so that is about the same over ucx).
  std::printf("seed %u, fault window 0..%.0f ms (fp16), 0..%.0f ms (q4_0), %d transfers\n", seed,
              clean_ms["fp16"], clean_ms["q4_0"], kTransfers);
  int completed = 0, failed_clean = 0, with_reconnect = 0, landed = 0, rode_out = 0;
  uint64_t resent = 0, reconnects = 0;
  std::map<std::string, uint64_t> rss_peak;
  for (int i = 0; i < kTransfers; ++i, ++id) {
    Receiver& r = receivers_[i % 5 < 3 ? 0 : 1];  // 30 tcp, 20 ucx
    const std::string codec = i % 3 == 2 ? "q4_0" : "fp16";
    const bool cut = rng() % 2 == 0;
    const bool on_receiver_side = rng() % 2 == 0;
    const int delay_ms =
        std::uniform_int_distribution<int>(0, static_cast<int>(clean_ms[codec]))(rng);
    const int cut_ms = std::uniform_int_distribution<int>(50, 800)(rng);
    const std::string ns = on_receiver_side ? ns_.ns_a : ns_.ns_b;
    const std::string dev = on_receiver_side ? ns_.dev_a : ns_.dev_b;
    const std::string peer_ip = on_receiver_side ? ns_.ip_b : ns_.ip_a;
    auto fault = [&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      if (cut) {
        (void)Sh("ip -n " + ns + " link set " + dev + " down");
        std::this_thread::sleep_for(std::chrono::milliseconds(cut_ms));
        (void)Sh("ip -n " + ns + " link set " + dev + " up");
      } else {
        // Established connections only: the listening socket must survive.
        (void)Sh("ip netns exec " + ns + " ss -K state established dst " + peer_ip);
      }
    };
    SendResult s = Send(r, codec, id, fault);
    ASSERT_TRUE(ns_.CarrierUp()) << "the veth did not come back up";
    const std::string what = Describe(cut, on_receiver_side, delay_ms, cut_ms);
    ASSERT_TRUE(ReceiverAlive(r)) << "transfer " << i << " (" << what << ")";
    const bool hit = delay_ms < s.ms;  // the fault began while the sender was running
    landed += hit;
    ASSERT_TRUE(s.rc.has_value()) << "transfer " << i << " (" << what << ") HUNG: killed after "
                                  << kSendTimeoutMs << " ms\n"
                                  << s.err;
    unsigned rc_count = 0, rs_count = 0;
    if (auto at = s.out.find(" reconnect(s), "); at != std::string::npos) {
      std::sscanf(s.out.c_str() + s.out.rfind("; ", at) + 2, "%u reconnect(s), %u chunks resent",
                  &rc_count, &rs_count);
    }
    std::string outcome;
    const ServeOutcome served = Settle(r, id, *s.rc != 0);
    ASSERT_NE(served, ServeOutcome::kAnnounced)
        << "transfer " << i << " (" << what << "): the receiver never finished request " << id
        << "\nsender exit " << *s.rc << " after " << s.ms << " ms; its stdout:\n"
        << s.out << "its stderr:\n"
        << s.err << "serve log (" << r.backend << "), last lines:\n"
        << Tail(ReadFile(r.log), 40);
    const fs::path got_path = r.out_dir / ("request-" + std::to_string(id) + ".safetensors");
    if (served == ServeOutcome::kDone) {
      // Whatever the sender's verdict, what the receiver wrote must be exact.
      ASSERT_TRUE(ReadFile(got_path) == reference[codec])
          << "transfer " << i << " (" << what << "): SILENT CORRUPTION, output differs";
      fs::remove(got_path);
    }
    if (*s.rc == 0) {
      ASSERT_EQ(served, ServeOutcome::kDone) << "sender succeeded, receiver did not";
      ++completed;
      outcome = "completed";
    } else {
      // A clean failure: exit 1 and exactly one line "kvwire send: <reason>" of ours.
      ASSERT_EQ(*s.rc, 1) << "transfer " << i << " (" << what << "): " << s.err;
      std::string line;
      int ours = 0;
      std::istringstream in(s.err);
      for (std::string l; std::getline(in, l);)
        if (l.rfind("kvwire send: ", 0) == 0) {
          ++ours;
          line = l;
        }
      ASSERT_EQ(ours, 1) << "transfer " << i << ": expected one error line, got:\n" << s.err;
      ++failed_clean;
      outcome = "failed: " + line.substr(13);
    }
    reconnects += rc_count;
    resent += rs_count;
    if (rc_count) ++with_reconnect;
    // A cut the connection survived without a reconnect (TCP retransmits across it) bit when
    // the transfer took at least half the cut longer than an uninterrupted one.
    if (cut && hit && rc_count == 0 && *s.rc == 0 && s.ms >= clean_ms[codec] + cut_ms / 2.0)
      ++rode_out;
    for (auto& rr : receivers_)
      rss_peak[rr.backend] = std::max(rss_peak[rr.backend], RssKiB(rr.child.pid));
    std::printf("%2d %-3s %-4s %-36s %-6s %6.0f ms  reconnects %u resent %3u  %s\n", i,
                r.backend.c_str(), codec.c_str(), what.c_str(), hit ? "" : "(late)", s.ms, rc_count,
                rs_count, outcome.c_str());
    std::fflush(stdout);
  }

  std::printf(
      "\n%d transfers (%d faults landed while the sender ran): %d completed "
      "bit-identical, %d failed cleanly, 0 hung, 0 corrupt; %d resumed after %llu "
      "reconnects, %llu chunks resent; %d rode out a cut\n",
      kTransfers, landed, completed, failed_clean, with_reconnect,
      static_cast<unsigned long long>(reconnects), static_cast<unsigned long long>(resent),
      rode_out);
  EXPECT_EQ(completed + failed_clean, kTransfers);
  // The faults must actually bite, or this test proves nothing: a fault that lands before the
  // sender has connected (a slow start on a busy machine) disturbs nothing.
  EXPECT_GE(landed, kTransfers / 2);
  EXPECT_GE(with_reconnect + failed_clean + rode_out, kTransfers / 5);

  // Receiver memory must come back to baseline once stall timeouts and connection teardown have
  // run. Both are bounded: an idle request fails after kServeStallMs, and closing a ucx
  // connection whose peer went silent waits at most 8 s (src/transport/ucx.cpp, Close: 5 s for
  // the flush, 1 s for the peer's goodbye, 2 s for the endpoint), during which the connection
  // still holds its UCX context and buffer pool (about 8 MB here). So RSS is polled until it is
  // back within the tolerance or those bounds (plus 2 s) have passed; the tolerance itself is
  // not widened. A single look 3.5 s after the last transfer failed once in CI (ucx: +7.8 MB,
  // about what one live connection holds), which is why it waits for the bound.
  const auto settle_start = Clock::now();
  const auto settle_limit = std::chrono::milliseconds(kServeStallMs + 8000 + 2000);
  std::map<std::string, uint64_t> rss_after;
  std::map<std::string, double> settled_ms;
  for (;;) {
    bool all_back = true;
    const double elapsed_ms = Ms(Clock::now() - settle_start);
    for (auto& r : receivers_) {
      if (settled_ms.count(r.backend)) continue;
      rss_after[r.backend] = RssKiB(r.child.pid);
      if (rss_after[r.backend] > 0 &&
          rss_after[r.backend] <= rss_before[r.backend] + kRssToleranceKiB) {
        settled_ms[r.backend] = elapsed_ms;
      } else {
        all_back = false;
      }
    }
    if (all_back || Clock::now() - settle_start >= settle_limit) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  for (auto& r : receivers_) {
    const uint64_t after = rss_after[r.backend];
    std::printf(
        "serve %-3s RSS: %llu KiB before, peak %llu KiB, %llu KiB after (tolerance +%llu), %s\n",
        r.backend.c_str(), static_cast<unsigned long long>(rss_before[r.backend]),
        static_cast<unsigned long long>(rss_peak[r.backend]),
        static_cast<unsigned long long>(after), static_cast<unsigned long long>(kRssToleranceKiB),
        settled_ms.count(r.backend)
            ? ("back within " + std::to_string(static_cast<int>(settled_ms[r.backend])) +
               " ms of the last transfer")
                  .c_str()
            : ("NOT back after " + std::to_string(settle_limit.count()) + " ms").c_str());
    std::printf("serve %-3s threads: %llu before, %llu after\n", r.backend.c_str(),
                static_cast<unsigned long long>(threads_before[r.backend]),
                static_cast<unsigned long long>(StatusField(r.child.pid, "Threads")));
    EXPECT_GT(after, 0u);
    EXPECT_LE(after, rss_before[r.backend] + kRssToleranceKiB)
        << r.backend << " receiver; mappings that grew:\n"
        << GrownMappings(maps_before[r.backend], RssByMapping(r.child.pid));
  }
}

// Regression for the abort fixed in src/transport/ucx.cpp (Init: no zero-copy eager sends): UCX
// 1.13's tcp transport could complete a zero-copy send twice when a reset broke the connection
// under it and abort the sender (~2 % of such transfers). 100 ucx transfers, each with its TCP
// connections reset at a random point: every one exits 0 with exact output or 1 with one line;
// none dies of a signal.
TEST_F(FaultInjection, UcxTransfersSurviveConnectionResets) {
  ASSERT_TRUE(PrepareInputs());
  receivers_.push_back(StartServe("ucx", 7072));
  Receiver& r = receivers_.back();
  ASSERT_TRUE(WaitListening(r));
  uint64_t id = 1;
  SendResult clean = Send(r, "q4_0", id, nullptr);
  ASSERT_EQ(clean.rc, std::optional<int>(0)) << clean.err;
  ASSERT_EQ(Settle(r, id, false), ServeOutcome::kDone);
  const std::string reference =
      ReadFile(r.out_dir / ("request-" + std::to_string(id) + ".safetensors"));
  std::mt19937 rng(7);
  constexpr int kResets = 100;
  int completed = 0, failed = 0;
  for (int i = 0; i < kResets; ++i) {
    ++id;
    const int delay_ms = std::uniform_int_distribution<int>(20, static_cast<int>(clean.ms))(rng);
    SendResult s = Send(r, "q4_0", id, [&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      (void)Sh("ip netns exec " + ns_.ns_b + " ss -K state established dst " + ns_.ip_a);
    });
    ASSERT_TRUE(s.rc.has_value()) << "transfer " << i << " HUNG\n" << s.err;
    ASSERT_LE(*s.rc, 1) << "transfer " << i << " (reset at " << delay_ms << " ms) died: exit "
                        << *s.rc << "\n"
                        << s.err;
    const ServeOutcome served = Settle(r, id, *s.rc != 0);
    ASSERT_NE(served, ServeOutcome::kAnnounced) << "the receiver never finished request " << id;
    const fs::path got = r.out_dir / ("request-" + std::to_string(id) + ".safetensors");
    if (served == ServeOutcome::kDone) {
      ASSERT_TRUE(ReadFile(got) == reference) << "transfer " << i << ": output differs";
      fs::remove(got);
    }
    *s.rc == 0 ? ++completed : ++failed;
  }
  std::printf(
      "%d ucx transfers with a reset: %d completed bit-identical, %d failed cleanly, "
      "0 died\n",
      kResets, completed, failed);
}

}  // namespace
}  // namespace kvwire
