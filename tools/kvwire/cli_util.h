// Helpers shared by the `kvwire` commands: error lines, codec-name resolution, machine facts.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "kvwire/status.h"
#include "kvwire/transport.h"

namespace CLI {
class App;
}

namespace kvwire::cli {

/// "kvwire <cmd>: <status>" on stderr (newlines flattened so the reason stays one line); 1.
int FailStatus(const std::string& command, const Status& status);

/// Turns `--codec NAME [--bits B]` into a codec spec. Without --bits, NAME is a full spec
/// ("q4_0", "kivi2:g=64"). With --bits, NAME is a family whose bit-width B fills in:
/// int-token -> int<B>-token, int-channel -> int<B>-channel, kivi -> kivi<B>, turbo -> turbo<B>,
/// q -> q<B>_0 (B = 4 or 8), int -> int8 (B = 8). Anything else is an error that says why.
Result<std::string> ResolveCodecSpec(const std::string& codec, std::optional<double> bits);

/// The command line of this process as typed (shell-quoted where needed), from /proc.
std::string CommandLine();
/// "model name" of /proc/cpuinfo, or "unknown".
std::string CpuModel();
/// Online CPUs (as nproc prints).
unsigned OnlineCpus();
/// Current UTC time as "2025-01-31T12:34:56Z".
std::string UtcNow();

/// Seconds on a monotonic clock.
double NowSeconds();

/// Groups digits: 1234567 -> "1,234,567".
std::string Thousands(uint64_t n);
/// printf-style formatting into a std::string.
std::string Format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

/// A progress callback (fraction done, stage) for long commands: one line on stderr with the
/// elapsed time and an ETA, redrawn in place on a terminal; elsewhere one line per 5 %.
std::function<void(double, const std::string&)> ProgressBar(const std::string& what);

/// A benchmark's results: creates `out_dir`, writes `<stem>.json` and `<stem>.md` there, prints
/// the markdown and the two paths. Returns 0, or the exit code of a one-line failure.
int WriteBenchResults(const std::string& command, const std::string& out_dir,
                      const std::string& stem, const std::string& json_text,
                      const std::string& md_text);

/// Help text of --busy-poll-us (serve and send; TransportOptions::busy_poll_us).
inline constexpr char kBusyPollHelp[] =
    "ucx: poll the network this long during transfers before sleeping "
    "(spends a core; saves a wake-up per event, which is faster on loopback)";

/// The TLS flags of serve and send (tcp backend).
struct TlsArgs {
  bool tls = false;
  std::string cert, key, ca, server_name;
};
/// Adds --tls, --tls-cert, --tls-key, --tls-ca, and on the connecting side --tls-server-name.
void AddTlsOptions(CLI::App* sub, TlsArgs* args, bool listening);
/// TransportOptions::tls from those flags; an error that says why when a --tls-* flag comes
/// without --tls, or --tls with a backend other than tcp.
Result<TlsOptions> MakeTlsOptions(const TlsArgs& args, const std::string& backend);

}  // namespace kvwire::cli
