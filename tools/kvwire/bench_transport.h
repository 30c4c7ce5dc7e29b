// kvwire bench transport: loopback goodput and latency per message size of the transport
// backends, alone (Transport) and under the session (Sender/Receiver: fp16 chunks, CRC, acks),
// next to `ucx_perftest -t ucp_am_bw` run in the same invocation on the same sizes and UCX
// transports. Writes <out_dir>/transport.{json,md}.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "command.h"

namespace kvwire::cli {

struct TransportBenchArgs {
  /// Message sizes in bytes: raw = descriptor + payload of one data message (ucx_perftest -s);
  /// session = one fp16 chunk.
  std::vector<uint64_t> sizes;
  std::vector<std::string> backends;  // "ucx", "tcp"
  /// UCX_TLS values: each is one configuration for the ucx backend and for ucx_perftest.
  std::vector<std::string> ucx_tls;
  /// Per UCX_TLS, one configuration per entry: "" (as is) or "VAR=VALUE[ VAR=VALUE...]" set in
  /// the environment of the ucx backend and of ucx_perftest.
  std::vector<std::string> ucx_env;
  uint64_t mib_per_point = 256;  // bytes moved per throughput run (raw)
  int repeat = 3;                // throughput runs per point (median reported)
  int max_latency_samples = 200;
  bool session = true;
  std::string perftest = "/usr/bin/ucx_perftest";  // "none": skip the reference
  int perftest_port = 13370;
  std::string out_dir = "bench/results";
  /// Raw runs: the connection's send-queue bound (TransportOptions::max_queued_bytes), raised
  /// to two messages for large sizes; the buffer pool holds four times it, every buffer a
  /// window of messages keeps in circulation (queued and in flight on the sender, queued on the
  /// receiver), so that after the warm-up nothing is allocated, like ucx_perftest's one buffer.
  uint64_t queue_mib = 32;
  /// TransportOptions::busy_poll_us for the ucx runs (raw and session). The library's default
  /// is 0 (sleep at once); ucx_perftest polls all the time.
  uint32_t busy_poll_us = 500;
};

/// The list options as typed, turned into TransportBenchArgs by FinishTransportBenchArgs.
struct TransportBenchText {
  std::string sizes = "64K,256K,1M,4M,16M,64M";
  std::string backends = "ucx,tcp";
  std::string ucx_tls = "tcp";
  std::string ucx_env = "default,UCX_ZCOPY_THRESH=auto";
  bool no_session = false;
};

/// Adds the options of `kvwire bench transport` to `cmd`.
void AddTransportBenchOptions(CLI::App* cmd, TransportBenchArgs* args, TransportBenchText* text);
/// Parses the list options into `args`; false with `error` set when one is malformed.
bool FinishTransportBenchArgs(const TransportBenchText& text, TransportBenchArgs* args,
                              std::string* error);

/// Parses "64K,1M,64M" (K = KiB, M = MiB, G = GiB; plain = bytes).
bool ParseSizes(const std::string& text, std::vector<uint64_t>* out, std::string* error);

/// Runs the benchmark, prints the table, writes the results; the process exit code.
int RunBenchTransport(const TransportBenchArgs& args);

}  // namespace kvwire::cli
