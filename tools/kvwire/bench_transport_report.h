// Results of `kvwire bench transport` and how they are written (transport.json, transport.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench_transport.h"

namespace kvwire::cli {

/// One message size of one configuration. Negative = not measured.
struct BenchPoint {
  uint64_t size = 0;
  // Transport alone: GB/s (1e9 bytes of messages per second, median run) and the latency of one
  // message in flight (Send called -> Receive returned), microseconds.
  double raw_gbps = -1, raw_p50_us = -1, raw_p99_us = -1;
  uint64_t raw_messages = 0;
  int raw_samples = 0;
  // Sender/Receiver: GB/s of fp16 KV (128 MiB requests, Open -> sender completion) and the
  // latency of a one-layer request (its K and V one chunk each), microseconds.
  double session_gbps = -1, session_p50_us = -1, session_p99_us = -1;
  int session_samples = 0;
  std::string session_note;
  // ucx_perftest -t ucp_am_bw, overall bandwidth (median run): as is, and with -e plus the
  // backend's UCX settings (peer error handling, copied sends, 1 MiB tcp segments: the ucx
  // backend's exact protocol).
  double perftest_gbps = -1, perftest_e_gbps = -1;
  std::vector<double> raw_runs, session_runs, perftest_runs, perftest_e_runs;  // GB/s of each run
};

struct BenchConfig {
  std::string backend;
  std::string ucx_tls;  // empty for tcp
  std::string ucx_env;  // extra UCX variables, "" for none
  // ucx_info -e: the endpoint's lanes and protocol ranges, as perftest runs as is and with error
  // handling (-e, which the ucx backend uses). Empty without perftest.
  std::vector<std::string> ucx_lanes, ucx_lanes_e;
  std::vector<BenchPoint> points;
  std::string Name() const {
    if (ucx_tls.empty()) return backend;
    return backend + "[UCX_TLS=" + ucx_tls + (ucx_env.empty() ? "" : " " + ucx_env) + "]";
  }
};

struct BenchReport {
  std::vector<BenchConfig> configs;
  std::string start_loadavg, end_loadavg;
};

/// The value at rank ceil(p x n) of `v` (nearest rank; 0 for none). Median: p = 0.5, the lower
/// middle value of an even count.
double Percentile(std::vector<double> v, double p);
inline double Median(std::vector<double> v) { return Percentile(std::move(v), 0.5); }
/// "64 KiB", "1 MiB".
std::string SizeName(uint64_t bytes);
/// ucx_info beside `perftest` (the same UCX installation), or "ucx_info" from PATH.
std::string UcxInfoPath(const std::string& perftest);
/// The first three fields of /proc/loadavg.
std::string LoadAverage();
/// One line of progress for stderr.
std::string ProgressLine(const BenchConfig& config, const BenchPoint& p);
/// Prints the table and writes transport.json / transport.md into args.out_dir; exit code.
int WriteTransportReport(const TransportBenchArgs& args, const BenchReport& report);

}  // namespace kvwire::cli
