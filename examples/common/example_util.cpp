#include "example_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <thread>

#include "kvwire/transport.h"

namespace kvwire::examples {
namespace {

std::string& ProgramNameStorage() {
  static std::string name = "example";
  return name;
}
std::string& RoleNameStorage() {
  static std::string role;
  return role;
}

Status Errno(const std::string& what) {
  return Status(StatusCode::kIoError, what + ": " + std::strerror(errno));
}

}  // namespace

void SetProgramName(std::string name) { ProgramNameStorage() = std::move(name); }
const std::string& ProgramName() { return ProgramNameStorage(); }
void SetRoleName(std::string role) { RoleNameStorage() = std::move(role); }

int Fail(std::string_view reason) {
  std::string line(reason);
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  const std::string& role = RoleNameStorage();
  std::cerr << ProgramName() << ": " << (role.empty() ? "" : role + ": ") << line << std::endl;
  return 1;
}

int FailStatus(const Status& status, std::string_view context) {
  return Fail(context.empty() ? status.ToString()
                              : std::string(context) + ": " + status.ToString());
}

int64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

std::string Format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  char buf[512];
  const int n = std::vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  if (n < 0) return {};
  if (size_t(n) < sizeof(buf)) return std::string(buf, size_t(n));
  std::string out(size_t(n) + 1, '\0');
  va_start(args, fmt);
  std::vsnprintf(out.data(), out.size(), fmt, args);
  va_end(args);
  out.resize(size_t(n));
  return out;
}

std::string Thousands(uint64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

Result<std::string> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status(StatusCode::kNotFound, "no file " + path);
    return Errno("cannot open " + path);
  }
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = Errno("cannot read " + path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::close(fd);
  return out;
}

Status WriteFileAtomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create " + tmp);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = Errno("cannot write " + tmp);
      ::close(fd);
      return s;
    }
    done += size_t(n);
  }
  if (::close(fd) != 0) return Errno("cannot write " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Errno("cannot rename " + tmp);
  return Status::Ok();
}

Result<std::string> MakeTempDir(std::string_view prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string templ =
      std::string(base && *base ? base : "/tmp") + "/" + std::string(prefix) + "-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) return Errno("cannot create a directory " + templ);
  return templ;
}

void RemoveTempDir(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") ::unlink((dir + "/" + name).c_str());
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

Status WriteRandomKeyFile(const std::string& path) {
  unsigned char random[32];
  const int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open /dev/urandom");
  const ssize_t n = ::read(fd, random, sizeof(random));
  ::close(fd);
  if (n != ssize_t(sizeof(random))) return Errno("cannot read /dev/urandom");
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : random) {
    hex += kHex[c >> 4];
    hex += kHex[c & 15];
  }
  hex += '\n';
  return WriteFileAtomic(path, hex);
}

Result<std::vector<uint8_t>> LoadKey(const std::string& path) {
  auto key = LoadKeyFile(path);
  if (!key.ok()) return key.status().WithContext("--key-file " + path);
  return key;
}

Status CheckLoopback(std::string_view address, std::string_view flag) {
  const size_t colon = address.rfind(':');
  std::string_view host = colon == std::string_view::npos ? address : address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (colon == std::string_view::npos || colon + 1 == address.size())
    return Status(StatusCode::kInvalidArgument,
                  std::string(flag) + " " + std::string(address) + ": expected HOST:PORT");
  if (host == "127.0.0.1" || host == "localhost" || host == "::1") return Status::Ok();
  return Status(StatusCode::kInvalidArgument,
                std::string(flag) + " " + std::string(address) +
                    ": this example runs on loopback only (127.0.0.1): it subtracts timestamps "
                    "of both processes on one clock");
}

void StartWatchdog(int timeout_ms) {
  if (timeout_ms <= 0) return;
  std::thread([timeout_ms] {
    std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
    Fail("timed out after " + std::to_string(timeout_ms) + " ms (--timeout-ms); giving up");
    std::_Exit(124);
  }).detach();
}

int32_t ArgMax(const float* row, uint32_t n) {
  uint32_t best = 0;
  for (uint32_t i = 1; i < n; ++i) {
    if (row[i] > row[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

}  // namespace kvwire::examples
