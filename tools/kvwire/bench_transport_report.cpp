#include "bench_transport_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_util.h"
#include "command.h"

namespace kvwire::cli {
namespace {

using Json = nlohmann::ordered_json;

constexpr double kTargetRatio = 0.9;
constexpr uint64_t kTargetFromBytes = 1ull << 20;

std::string UcxVersion(const std::string& perftest) {
  FILE* f = ::popen((UcxInfoPath(perftest) + " -v 2>/dev/null").c_str(), "r");
  if (!f) return "unknown";
  char line[256] = {0};
  std::string v = std::fgets(line, sizeof line, f) ? line : "unknown";
  ::pclose(f);
  if (v.rfind("# ", 0) == 0) v = v.substr(2);
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.pop_back();
  return v;
}

Json Num(double v) { return v < 0 ? Json(nullptr) : Json(v); }
std::string Cell(double v, const char* fmt) { return v < 0 ? "n/a" : Format(fmt, v); }
double Ratio(double a, double b) { return a < 0 || b <= 0 ? -1 : a / b; }

// The median over rounds of a[r] / b[r] (runs measured back to back, round by round), or -1 when
// the runs do not pair up.
double PairedRatio(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.empty() || a.size() != b.size()) return -1;
  std::vector<double> r;
  for (size_t i = 0; i < a.size(); ++i) {
    if (b[i] <= 0) return -1;
    r.push_back(a[i] / b[i]);
  }
  return Median(std::move(r));
}

}  // namespace

std::string UcxInfoPath(const std::string& perftest) {
  if (const size_t slash = perftest.rfind('/'); slash != std::string::npos)
    return perftest.substr(0, slash + 1) + "ucx_info";
  return "ucx_info";
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p * double(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

std::string SizeName(uint64_t bytes) {
  if (bytes % (1ull << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes % (1ull << 10) == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a.empty() ? "unknown" : a + " " + b + " " + c;
}

std::string ProgressLine(const BenchConfig& config, const BenchPoint& p) {
  return Format(
      "%-22s %7s  raw %6.2f GB/s p50 %8.1f us p99 %8.1f us | session %s GB/s p50 %s us"
      " | ucx_perftest %s GB/s, with -e %s GB/s",
      config.Name().c_str(), SizeName(p.size).c_str(), p.raw_gbps, p.raw_p50_us, p.raw_p99_us,
      Cell(p.session_gbps, "%.2f").c_str(), Cell(p.session_p50_us, "%.0f").c_str(),
      Cell(p.perftest_gbps, "%.2f").c_str(), Cell(p.perftest_e_gbps, "%.2f").c_str());
}

int WriteTransportReport(const TransportBenchArgs& a, const BenchReport& r) {
  const char* cmd = "bench transport";
  Json j;
  j["command"] = CommandLine();
  j["machine"] = {{"cpu", CpuModel()},
                  {"nproc", OnlineCpus()},
                  {"date", UtcNow()},
                  {"loadavg_start", r.start_loadavg},
                  {"loadavg_end", r.end_loadavg}};
  bool perftest = false;
  for (const BenchConfig& c : r.configs)
    for (const BenchPoint& p : c.points) perftest |= p.perftest_gbps >= 0;
  j["ucx_version"] = perftest ? UcxVersion(a.perftest) : "not queried";
  j["reference"] = perftest ? a.perftest +
                                  " -t ucp_am_bw (server and client processes on "
                                  "127.0.0.1, same UCX_TLS as the ucx backend), as is and with -e"
                            : "none (--perftest none, or no ucx backend)";
  j["definitions"] = {
      {"gb", "1e9 bytes"},
      {"size",
       "raw and ucx_perftest: bytes of one message (kvwire: 16 B of meta + payload); "
       "session: one fp16 chunk frame's elements x 2"},
      {"perftest", "median of " + std::to_string(a.repeat) +
                       " runs, each -n max(16, MiB/size) iterations with 10 % warm-up, in rounds "
                       "with kvwire's raw runs of the same size (raw run r, then perftest run r as "
                       "is and with -e); 'perftest -e' runs the UCX protocol of the ucx backend: "
                       "endpoints with peer error handling (UCP_ERR_HANDLING_MODE_PEER, which the "
                       "backend needs to detect a dead peer and to close an endpoint by force) "
                       "and the settings the backend makes where the environment does not "
                       "(UCX_ZCOPY_THRESH=inf, UCX_TCP_TX_SEG_SIZE=UCX_TCP_RX_SEG_SIZE=1M); "
                       "'perftest' as is runs without error handling, and over tcp UCX 1.13 then "
                       "moves rendezvous data by zero-copy RMA (an rma_bw lane), which it does "
                       "not offer to endpoints with error handling: see each configuration's "
                       "ucx_info lines"},
      {"ratios", "raw / perftest: the median over rounds of raw run r / perftest run r, so that "
                 "each ratio compares runs made back to back (transport.json also has the ratio "
                 "of the medians); session / perftest -e: ratio of the medians"},
      {"raw", "one kvwire Connection on loopback, messages one way, median of " +
                  std::to_string(a.repeat) + " runs of " + std::to_string(a.mib_per_point) +
                  " MiB (at least 8 messages); the sender's payloads come from "
                  "Connection::TakeBuffer and the receiver hands each message back with "
                  "Connection::Recycle, so after a warm-up neither side allocates per message; "
                  "a window of max(" + std::to_string(a.queue_mib) +
                  " MiB, 2 messages) may be queued (max_queued_bytes) and each end pools 4x "
                  "that; latency: one message in flight, Send() called to Receive() returned"},
      {"busy_poll", "ucx raw and session runs use TransportOptions::busy_poll_us = " +
                        std::to_string(a.busy_poll_us) +
                        " (the progress thread polls this long during transfers before it "
                        "sleeps; the library's default is 0); ucx_perftest polls all the time"},
      {"session",
       "Sender/Receiver, fp16 level (CRC, acknowledgements): 4 layers x 8192 tokens x "
       "8 kv heads x 128 = 128 MiB per request, Open() to the sender's completion, "
       "median of " +
           std::to_string(a.repeat) +
           " runs; latency: a one-layer request whose K and V are one chunk each, Open() "
           "to completion"},
      {"target", Format("at >= 1 MiB, kvwire ucx raw >= %.0f %% of ucx_perftest (as is)",
                        kTargetRatio * 100)}};
  Json configs = Json::array();
  std::ostringstream md;
  md << "# kvwire transport, loopback\n\n"
     << "Command: `" << j["command"].get<std::string>() << "`\n\n"
     << "Machine: " << j["machine"]["cpu"].get<std::string>() << ", nproc " << OnlineCpus() << ", "
     << j["machine"]["date"].get<std::string>() << "; load average " << r.start_loadavg
     << " at start, " << r.end_loadavg << " at end (other work on the machine shows here).\n\n"
     << "UCX: " << j["ucx_version"].get<std::string>()
     << ". Reference: " << j["reference"].get<std::string>()
     << ". The ucx backend creates its endpoints with peer failure detection "
        "(UCP_ERR_HANDLING_MODE_PEER), which UCX's shared-memory transports do not offer, so on "
        "one host only its network transports compare (UCX_TLS=tcp over loopback).\n\n"
     << "- **raw**: " << j["definitions"]["raw"].get<std::string>() << ".\n"
     << "- **busy polling**: " << j["definitions"]["busy_poll"].get<std::string>() << ".\n"
     << "- **session**: " << j["definitions"]["session"].get<std::string>() << ".\n"
     << "- **ucx_perftest**: " << j["definitions"]["perftest"].get<std::string>()
     << "; every run's GB/s is in transport.json (`*_runs_gbps`).\n"
     << "- **ratios**: " << j["definitions"]["ratios"].get<std::string>() << ".\n"
     << "- size: " << j["definitions"]["size"].get<std::string>() << "; GB = 1e9 bytes.\n"
     << "- Target: " << j["definitions"]["target"].get<std::string>() << ".\n";
  for (const BenchConfig& c : r.configs) {
    Json points = Json::array();
    md << "\n## " << c.Name() << "\n\n";
    auto lanes = [&](const std::vector<std::string>& v) {
      std::string out;
      for (const std::string& l : v) out += (out.empty() ? "`" : "; `") + l + "`";
      return out;
    };
    if (!c.ucx_lanes.empty())
      md << "UCX's endpoint to another host (`ucx_info -e -u mw -P inter`, as perftest runs as "
            "is): "
         << lanes(c.ucx_lanes)
         << ".\n\nWith error handling and the backend's settings (`-u mwe`; the ucx backend, "
            "perftest -e): "
         << lanes(c.ucx_lanes_e) << ".\n\n";
    md << "| size | perftest GB/s | perftest -e GB/s | raw GB/s | raw / perftest | "
          "raw / perftest -e | raw p50 us | raw p99 us | session GB/s | session / perftest -e | "
          "1-layer request p50 us | p99 us |\n"
       << "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    std::string verdict;
    for (const BenchPoint& p : c.points) {
      const double rr = PairedRatio(p.raw_runs, p.perftest_runs);
      const double re = PairedRatio(p.raw_runs, p.perftest_e_runs);
      const double sr = Ratio(p.session_gbps, p.perftest_gbps);
      const double se = Ratio(p.session_gbps, p.perftest_e_gbps);
      points.push_back({{"size", p.size},
                        {"perftest_gbps", Num(p.perftest_gbps)},
                        {"perftest_e_gbps", Num(p.perftest_e_gbps)},
                        {"raw_gbps", Num(p.raw_gbps)},
                        {"raw_vs_perftest", Num(rr)},
                        {"raw_vs_perftest_e", Num(re)},
                        {"raw_vs_perftest_of_medians", Num(Ratio(p.raw_gbps, p.perftest_gbps))},
                        {"raw_vs_perftest_e_of_medians",
                         Num(Ratio(p.raw_gbps, p.perftest_e_gbps))},
                        {"raw_p50_us", Num(p.raw_p50_us)},
                        {"raw_p99_us", Num(p.raw_p99_us)},
                        {"raw_messages", p.raw_messages},
                        {"raw_latency_samples", p.raw_samples},
                        {"session_gbps", Num(p.session_gbps)},
                        {"session_vs_perftest", Num(sr)},
                        {"session_vs_perftest_e", Num(se)},
                        {"session_p50_us", Num(p.session_p50_us)},
                        {"session_p99_us", Num(p.session_p99_us)},
                        {"session_latency_samples", p.session_samples},
                        {"session_note", p.session_note},
                        {"raw_runs_gbps", p.raw_runs},
                        {"session_runs_gbps", p.session_runs},
                        {"perftest_runs_gbps", p.perftest_runs},
                        {"perftest_e_runs_gbps", p.perftest_e_runs}});
      md << "| " << SizeName(p.size) << " | " << Cell(p.perftest_gbps, "%.2f") << " | "
         << Cell(p.perftest_e_gbps, "%.2f") << " | " << Cell(p.raw_gbps, "%.2f") << " | "
         << Cell(rr, "%.2f") << " | " << Cell(re, "%.2f") << " | " << Cell(p.raw_p50_us, "%.0f")
         << " | " << Cell(p.raw_p99_us, "%.0f") << " | " << Cell(p.session_gbps, "%.2f") << " | "
         << Cell(se, "%.2f") << " | " << Cell(p.session_p50_us, "%.0f") << " | "
         << Cell(p.session_p99_us, "%.0f") << " |\n";
      if (c.backend == "ucx" && p.size >= kTargetFromBytes && rr >= 0)
        verdict += (verdict.empty() ? "" : ", ") + SizeName(p.size) +
                   (rr >= kTargetRatio ? " met" : " NOT met") + Format(" (%.2f", rr) +
                   Format("; %.2f of perftest -e)", re);
    }
    for (const BenchPoint& p : c.points)
      if (!p.session_note.empty()) {
        md << "\nsession at " << SizeName(p.size) << ": " << p.session_note << "\n";
        break;
      }
    if (!verdict.empty())
      md << "\nTarget (raw >= 0.9 x perftest as is, at >= 1 MiB): " << verdict << ".\n";
    md << "\nLatency samples per size: raw ";
    for (const BenchPoint& p : c.points) md << p.raw_samples << " ";
    md << "/ session: ";
    for (const BenchPoint& p : c.points) md << p.session_samples << " ";
    md << "(p99 of a few samples is close to their maximum).\n";
    configs.push_back({{"backend", c.backend},
                       {"ucx_tls", c.ucx_tls.empty() ? Json(nullptr) : Json(c.ucx_tls)},
                       {"ucx_env", c.ucx_env},
                       {"ucx_endpoint_as_is", c.ucx_lanes},
                       {"ucx_endpoint_with_error_handling", c.ucx_lanes_e},
                       {"points", std::move(points)}});
  }
  j["configs"] = std::move(configs);

  return WriteBenchResults(cmd, a.out_dir, "transport", j.dump(2) + "\n", md.str());
}

}  // namespace kvwire::cli
