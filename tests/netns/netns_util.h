// Helpers shared by the network-namespace tests (tests/netns/): shell commands, child processes
// with their output in files, and a veth pair between two namespaces that the test creates and
// deletes itself. Linux only; the tests that use them skip unless they run as root.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace kvwire::netns_test {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `cmd` through the shell; its exit code and its stdout + stderr.
inline std::pair<int, std::string> Sh(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

// Why the network-namespace tests cannot run here, or "" when they can: they need root and
// `ip netns`, and with `need_tc` also `tc` (to shape a link).
inline std::string NetnsUnavailable(bool need_tc) {
  if (::geteuid() != 0)
    return std::string("needs root to create network namespaces") +
           (need_tc ? " and qdiscs" : " (ip netns add)") + "; running as uid " +
           std::to_string(::geteuid());
  if (Sh("ip netns list").first != 0) return "`ip netns` is not available (iproute2 missing?)";
  if (need_tc && Sh("tc qdisc show dev lo").first != 0)
    return "`tc` is not available (iproute2 missing?)";
  return "";
}

// A child process whose stdout and stderr go to files (the same file when out == err).
struct Child {
  pid_t pid = -1;  // -1: it could not be started
  fs::path out, err;
};

// Starts args[0] (searched in PATH) with stdin from /dev/null and `extra_env` ("NAME=value")
// before the inherited environment.
inline Child Spawn(const std::vector<std::string>& args, const fs::path& out, const fs::path& err,
                   const std::vector<std::string>& extra_env = {}) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (err == out) {
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
  } else {
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  }
  std::vector<std::string> env = extra_env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  std::vector<char*> argv, envp;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  Child c{-1, out, err};
  if (posix_spawnp(&c.pid, argv[0], &fa, nullptr, argv.data(), envp.data()) != 0) c.pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return c;
}

// The exit code (128 + signal when killed), or nullopt when the child still runs after
// `timeout_ms`: it is then killed and reaped.
inline std::optional<int> WaitChild(pid_t pid, int timeout_ms) {
  const auto give_up = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int st = 0;
    const pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (r < 0) return -1;
    if (Clock::now() > give_up) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      return std::nullopt;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Namespaces <prefix>-<pid>-a / -b joined by a veth pair <prefix><pid>a / b with addresses
// 10.X.Y.1 / .2 (X.Y from the pid). They exist only inside the two namespaces; the host's
// interfaces are never touched. Remove() (and the destructor) deletes both namespaces, which
// destroys the veth pair.
class VethPair {
 public:
  explicit VethPair(std::string prefix) : prefix_(std::move(prefix)) {
    const int pid = ::getpid();
    ns_a = prefix_ + "-" + std::to_string(pid) + "-a";
    ns_b = prefix_ + "-" + std::to_string(pid) + "-b";
    dev_a = prefix_ + std::to_string(pid) + "a";  // <= 15 characters (IFNAMSIZ)
    dev_b = prefix_ + std::to_string(pid) + "b";
    const std::string net =
        "10." + std::to_string((pid >> 8) & 0xff) + "." + std::to_string(pid & 0xff) + ".";
    ip_a = net + "1";
    ip_b = net + "2";
  }
  VethPair(const VethPair&) = delete;
  VethPair& operator=(const VethPair&) = delete;
  ~VethPair() { Remove(); }

  // Namespaces <prefix>-<pid>-x left by runs whose process is gone (killed tests): the
  // processes still inside are killed, then the namespaces deleted.
  void RemoveStale() const {
    std::istringstream in(Sh("ip netns list").second);
    const std::string head = prefix_ + "-";
    for (std::string line; std::getline(in, line);) {
      const std::string name = line.substr(0, line.find(' '));
      if (name.rfind(head, 0) != 0) continue;
      unsigned long pid = 0;
      char side = 0;
      if (std::sscanf(name.c_str() + head.size(), "%lu-%c", &pid, &side) != 2 ||
          fs::exists("/proc/" + std::to_string(pid)))
        continue;
      std::printf("removing stale namespace %s (its test process %lu is gone)\n", name.c_str(),
                  pid);
      std::istringstream pids(Sh("ip netns pids " + name).second);
      for (long p = 0; pids >> p;)
        if (p > 1) ::kill(static_cast<pid_t>(p), SIGKILL);
      (void)Sh("ip netns del " + name);
    }
  }

  // "" on success, else the command that failed and what it said.
  std::string Create() {
    if (auto [rc, out] = Sh("ip netns add " + ns_a); rc != 0) return "ip netns add: " + out;
    created_ = true;
    for (const std::string& c :
         {"ip netns add " + ns_b,
          "ip link add " + dev_a + " netns " + ns_a + " type veth peer name " + dev_b + " netns " +
              ns_b,
          "ip -n " + ns_a + " addr add " + ip_a + "/24 dev " + dev_a,
          "ip -n " + ns_b + " addr add " + ip_b + "/24 dev " + dev_b,
          "ip -n " + ns_a + " link set lo up", "ip -n " + ns_b + " link set lo up",
          "ip -n " + ns_a + " link set " + dev_a + " up",
          "ip -n " + ns_b + " link set " + dev_b + " up"})
      if (auto [rc, out] = Sh(c); rc != 0) return c + ": " + out;
    return "";
  }

  // A tbf qdisc with `tbf_args` (e.g. "rate 1gbit burst 256kb latency 50ms") on both ends;
  // "" on success, else the command that failed and what it said.
  std::string Shape(const std::string& tbf_args) const {
    for (const auto& [ns, dev] : {std::pair{ns_a, dev_a}, std::pair{ns_b, dev_b}}) {
      const std::string c =
          "ip netns exec " + ns + " tc qdisc add dev " + dev + " root tbf " + tbf_args;
      if (auto [rc, out] = Sh(c); rc != 0) return c + ": " + out;
    }
    return "";
  }

  // Both ends up with carrier (LOWER_UP) within `timeout_ms`: after `link set up` the carrier
  // follows a little later, and UCX refuses a device that is not running yet.
  bool CarrierUp(int timeout_ms = 5000) const {
    const auto give_up = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (Clock::now() < give_up) {
      const std::string a = Sh("ip -n " + ns_a + " -br link show dev " + dev_a).second;
      const std::string b = Sh("ip -n " + ns_b + " -br link show dev " + dev_b).second;
      if (a.find("LOWER_UP") != std::string::npos && b.find("LOWER_UP") != std::string::npos &&
          a.find(" UP ") != std::string::npos && b.find(" UP ") != std::string::npos)
        return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  void Remove() {
    if (!created_) return;
    (void)Sh("ip netns del " + ns_a);
    (void)Sh("ip netns del " + ns_b);
    created_ = false;
  }

  std::string ns_a, ns_b, dev_a, dev_b, ip_a, ip_b;

 private:
  std::string prefix_;
  bool created_ = false;
};

}  // namespace kvwire::netns_test
