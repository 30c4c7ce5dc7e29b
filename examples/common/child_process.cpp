#include "child_process.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>

#include "example_util.h"

extern char** environ;

namespace kvwire::examples {
namespace {

// Exit codes >= 128 stand for "killed by signal (code - 128)", as in a shell.
int ExitCodeOf(int wstatus) {
  if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
  return 255;
}

}  // namespace

Result<ChildProcess> ChildProcess::SpawnSelf(std::string name,
                                             const std::vector<std::string>& args) {
  std::vector<std::string> argv_storage;
  argv_storage.push_back(ProgramName());
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ);
  if (rc != 0)
    return Status(StatusCode::kIoError,
                  "cannot start the " + name + " process: " + std::strerror(rc));
  ChildProcess child;
  child.name_ = std::move(name);
  child.pid_ = pid;
  return child;
}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    Kill();
    name_ = std::move(other.name_);
    pid_ = other.pid_;
    other.pid_ = -1;
  }
  return *this;
}

ChildProcess::~ChildProcess() { Kill(); }

bool ChildProcess::TryWait(int* exit_code) {
  if (pid_ <= 0) return false;
  int wstatus = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &wstatus, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  *exit_code = r < 0 ? 255 : ExitCodeOf(wstatus);
  pid_ = -1;
  return true;
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int wstatus = 0;
  while (::waitpid(pid_, &wstatus, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

std::string DescribeExit(int exit_code) {
  if (exit_code >= 128 && exit_code < 128 + 65)
    return "killed by signal " + std::to_string(exit_code - 128);
  return "exit code " + std::to_string(exit_code);
}

}  // namespace kvwire::examples
