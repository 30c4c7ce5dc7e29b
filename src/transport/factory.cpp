#include <mutex>

#include "common/log_line.h"
#include "transport/backends.h"

namespace kvwire {

Result<std::unique_ptr<Transport>> CreateTransport(std::string_view name) {
  if (name == "inproc") return transport::MakeInprocTransport();
  if (name == "tcp") return transport::MakeTcpTransport();
  if (name == "ucx") {
#if KVWIRE_HAVE_UCX
    return transport::MakeUcxTransport();
#else
    return Status(StatusCode::kUnsupported, "this build of kvwire has no UCX backend");
#endif
  }
  return Status(StatusCode::kNotFound,
                "unknown transport '" + std::string(name) + "' (known: inproc, tcp, ucx)");
}

std::vector<std::string> AvailableTransports() {
  std::vector<std::string> names = {"inproc", "tcp"};
#if KVWIRE_HAVE_UCX
  names.push_back("ucx");
#endif
  return names;
}

namespace transport {

void LogRefusedPeer(const std::string& where, const Status& why) {
  static std::mutex mu;
  std::lock_guard lock(mu);
  WriteLogLine(stderr, "kvwire: refused peer on " + where + ": " + why.ToString());
}

}  // namespace transport
}  // namespace kvwire
