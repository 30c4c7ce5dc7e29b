// Runs this same executable again as a child process (one role of an example), for the driver
// mode that starts both ends of a transfer. Linux only (/proc/self/exe).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "kvwire/status.h"

namespace kvwire::examples {

/// One child process. The destructor kills (SIGKILL) and reaps a child still running.
class ChildProcess {
 public:
  /// Starts /proc/self/exe with `args` (argv[1..]); stdin, stdout and stderr are inherited.
  static Result<ChildProcess> SpawnSelf(std::string name, const std::vector<std::string>& args);

  ChildProcess() = default;
  ChildProcess(ChildProcess&& other) noexcept { *this = std::move(other); }
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ~ChildProcess();

  const std::string& name() const { return name_; }
  bool running() const { return pid_ > 0; }

  /// Polls: true (and sets `*exit_code`) once the child has exited.
  bool TryWait(int* exit_code);
  /// SIGKILL and reap. Idempotent.
  void Kill();

 private:
  std::string name_;
  pid_t pid_ = -1;
};

/// Describes an exit code the way a shell would ("exit code 1", "killed by signal 9").
std::string DescribeExit(int exit_code);

}  // namespace kvwire::examples
