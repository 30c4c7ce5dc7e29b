#include "cli_util.h"

#include <unistd.h>

#include <CLI/CLI.hpp>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <functional>
#include <memory>
#include <span>
#include <iterator>
#include <string_view>
#include <vector>

#include "command.h"
#include "kvwire/kv_file.h"

namespace kvwire::cli {

int FailStatus(const std::string& command, const Status& status) {
  std::string reason = status.ToString();
  for (char& c : reason) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return Fail(command, reason);
}

Result<std::string> ResolveCodecSpec(const std::string& codec, std::optional<double> bits) {
  if (codec.empty()) return Status(StatusCode::kInvalidArgument, "--codec is empty");
  if (!bits) return codec;
  const double b = *bits;
  if (!std::isfinite(b) || b <= 0 || b != std::floor(b)) {
    return Status(StatusCode::kInvalidArgument, "--bits " + Format("%g", b) +
                                                    " is not a positive whole number of bits "
                                                    "(the baseline codecs have integer widths)");
  }
  const std::string n = std::to_string(static_cast<int>(b));
  // The codec option part (":g=64") is kept: "kivi:g=64" + --bits 2 -> "kivi2:g=64".
  const size_t colon = codec.find(':');
  const std::string family = codec.substr(0, colon);
  const std::string options = colon == std::string::npos ? "" : codec.substr(colon);
  if (family == "int-token") return "int" + n + "-token" + options;
  if (family == "int-channel") return "int" + n + "-channel" + options;
  if (family == "kivi") return "kivi" + n + options;
  if (family == "turbo") return "turbo" + n + options;
  if (family == "q") {
    if (n == "4" || n == "8") return "q" + n + "_0" + options;
    return Status(StatusCode::kInvalidArgument,
                  "--codec q has widths 4 and 8 (q4_0, q8_0), not " + n);
  }
  if (family == "int") {
    if (n == "8") return "int8" + options;
    return Status(
        StatusCode::kInvalidArgument,
        "--codec int --bits " + n + ": int is 8-bit only; use --codec int-token --bits " + n);
  }
  return Status(StatusCode::kInvalidArgument,
                "--bits does not apply to --codec " + codec +
                    " (give a full codec name such as q4_0, int3-token, kivi2, turbo3, rank-32, or "
                    "a family with --bits: int-token, int-channel, kivi, turbo, q)");
}

std::string CommandLine() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string out;
  size_t start = 0;
  while (start < raw.size()) {
    size_t end = raw.find('\0', start);
    if (end == std::string::npos) end = raw.size();
    std::string arg = raw.substr(start, end - start);
    start = end + 1;
    bool plain = !arg.empty();
    for (char c : arg) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) ||
            std::string_view("-_./=:,@+%").find(c) != std::string_view::npos)) {
        plain = false;
      }
    }
    if (!out.empty()) out += ' ';
    if (plain) {
      out += arg;
    } else {
      out += '\'';
      for (char c : arg) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
  }
  return out;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t b = line.find_first_not_of(" \t", colon + 1);
        return b == std::string::npos ? "unknown" : line.substr(b);
      }
    }
  }
  return "unknown";
}

unsigned OnlineCpus() {
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double NowSeconds() {
  using Clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

std::string Thousands(uint64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string Format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string out(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, args);
  va_end(args);
  return out;
}

namespace {

std::string ClockText(double s) {
  if (s < 0) s = 0;
  if (s < 90) return Format("%.0fs", s);
  if (s < 5400) return Format("%dm%02ds", int(s) / 60, int(s) % 60);
  return Format("%dh%02dm", int(s) / 3600, (int(s) / 60) % 60);
}

}  // namespace

// One progress line with elapsed time and an ETA, redrawn in place on a terminal (one line per
// update, at most every 5 %, elsewhere).
std::function<void(double, const std::string&)> ProgressBar(const std::string& what) {
  const double t0 = NowSeconds();
  const bool tty = isatty(2);
  auto last = std::make_shared<int>(-5);
  return [t0, tty, what, last](double f, const std::string& stage) {
    const double el = NowSeconds() - t0;
    const double eta = f > 0.001 ? el * (1 - f) / f : 0;
    const int pct = static_cast<int>(f * 100);
    if (!tty && f < 1.0 && pct / 5 == *last / 5) return;
    *last = pct;
    const int w = 28, fill = static_cast<int>(f * w + 0.5);
    std::fprintf(stderr, "%s%-9s [%.*s%*s] %3d%%  %-28.28s elapsed %s  ETA %s%s",
                 tty ? "\r" : "", what.c_str(), fill, "############################", w - fill,
                 "", pct, stage.c_str(), ClockText(el).c_str(), ClockText(eta).c_str(),
                 tty && f < 1.0 ? "   " : "\n");
    std::fflush(stderr);
  };
}

int WriteBenchResults(const std::string& command, const std::string& out_dir,
                      const std::string& stem, const std::string& json_text,
                      const std::string& md_text) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return Fail(command, "cannot create --out-dir " + out_dir + ": " + ec.message());
  const std::string json_path = (fs::path(out_dir) / (stem + ".json")).string();
  const std::string md_path = (fs::path(out_dir) / (stem + ".md")).string();
  for (const auto& [path, text] : {std::pair{json_path, &json_text}, std::pair{md_path, &md_text}}) {
    std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(text->data()), text->size());
    if (Status s = WriteFileBytes(path, bytes); !s.ok()) return FailStatus(command, s);
  }
  std::cout << md_text << "\nwrote " << json_path << " and " << md_path << "\n";
  return 0;
}

void AddTlsOptions(CLI::App* sub, TlsArgs* a, bool listening) {
  sub->add_flag("--tls", a->tls,
                "tcp: run the connection inside TLS 1.3 (both ends; the key handshake is then "
                "bound to the TLS session)");
  sub->add_option("--tls-cert", a->cert,
                  listening ? "PEM certificate chain of this server (with --tls)"
                            : "PEM client certificate, for a server that requires one");
  sub->add_option("--tls-key", a->key, "PEM private key of --tls-cert");
  sub->add_option("--tls-ca", a->ca,
                  listening ? "PEM CA certificates: require client certificates signed by them"
                            : "PEM CA certificates to verify the server's certificate and name "
                              "(without it, the --key-file alone authenticates the server)");
  if (!listening) {
    sub->add_option("--tls-server-name", a->server_name,
                    "name the server's certificate must carry (default: the host of --connect)");
  }
}

Result<TlsOptions> MakeTlsOptions(const TlsArgs& a, const std::string& backend) {
  TlsOptions t;
  const bool configured =
      !a.cert.empty() || !a.key.empty() || !a.ca.empty() || !a.server_name.empty();
  KVWIRE_RETURN_ERROR_IF(configured && !a.tls, kInvalidArgument,
                         "--tls-cert, --tls-key, --tls-ca and --tls-server-name need --tls");
  if (!a.tls) return t;
  KVWIRE_RETURN_ERROR_IF(backend != "tcp", kInvalidArgument,
                         "--tls needs --backend tcp (the " + backend + " backend has no TLS)");
  t.enabled = true;
  t.cert_file = a.cert;
  t.key_file = a.key;
  t.ca_file = a.ca;
  t.server_name = a.server_name;
  return t;
}

}  // namespace kvwire::cli
