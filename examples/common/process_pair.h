// The driver mode of the examples: a listening process and a connecting process on loopback,
// started as children of the driver, each with its own one-line errors and timeouts.
#pragma once

#include <string>
#include <vector>

#include "kvwire/status.h"

namespace kvwire::examples {

/// A private scratch directory (key file, address file, results), removed on destruction.
class ScratchDir {
 public:
  static Result<ScratchDir> Create(const std::string& prefix);
  ScratchDir() = default;
  ScratchDir(ScratchDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  ScratchDir& operator=(ScratchDir&&) = delete;
  ~ScratchDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct ProcessPairSpec {
  std::string server_name = "decode";    // for messages
  std::vector<std::string> server_args;  // must make the server write its address to address_file
  std::string address_file;
  std::string client_name = "prefill";
  std::vector<std::string> client_args;  // "--connect ADDRESS" is appended
  int64_t deadline_ns = 0;               // NowNs() clock
};

/// Starts the server, waits for its address, starts the client, waits for both. Ok when both
/// exit 0; otherwise the error names the process that failed first (its own error line is
/// already on stderr) and the other one is killed.
Status RunProcessPair(const ProcessPairSpec& spec);

}  // namespace kvwire::examples
