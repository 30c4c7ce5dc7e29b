#include "process_pair.h"

#include <unistd.h>

#include <chrono>
#include <thread>

#include "child_process.h"
#include "example_util.h"

namespace kvwire::examples {

Result<ScratchDir> ScratchDir::Create(const std::string& prefix) {
  KVWIRE_ASSIGN_OR_RETURN(std::string path, MakeTempDir(prefix));
  ScratchDir d;
  d.path_ = std::move(path);
  return d;
}

ScratchDir::~ScratchDir() {
  if (!path_.empty()) RemoveTempDir(path_);
}

namespace {

Status Exited(const ChildProcess& c, int code) {
  return Status(StatusCode::kInternal, "the " + c.name() + " process failed (" +
                                           DescribeExit(code) + "); its error is above");
}

}  // namespace

Status RunProcessPair(const ProcessPairSpec& spec) {
  KVWIRE_ASSIGN_OR_RETURN(ChildProcess server,
                          ChildProcess::SpawnSelf(spec.server_name, spec.server_args));
  // Wait for the server to bind and publish its address.
  std::string address;
  for (;;) {
    auto text = ReadFile(spec.address_file);
    if (text.ok() && !text->empty() && text->back() == '\n') {
      address = text->substr(0, text->size() - 1);
      break;
    }
    int code = 0;
    if (server.TryWait(&code)) return Exited(server, code);
    if (NowNs() >= spec.deadline_ns)
      return Status(StatusCode::kTimeout, "the " + spec.server_name +
                                              " process did not start "
                                              "listening in time");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::vector<std::string> client_args = spec.client_args;
  client_args.insert(client_args.end(), {"--connect", address});
  KVWIRE_ASSIGN_OR_RETURN(ChildProcess client,
                          ChildProcess::SpawnSelf(spec.client_name, client_args));
  // Whichever ends first decides: a failure there is the root cause, the other is killed.
  bool server_done = false, client_done = false;
  while (!(server_done && client_done)) {
    int code = 0;
    if (!client_done && client.TryWait(&code)) {
      if (code != 0) return Exited(client, code);
      client_done = true;
    }
    if (!server_done && server.TryWait(&code)) {
      if (code != 0) return Exited(server, code);
      server_done = true;
    }
    if (NowNs() >= spec.deadline_ns)
      return Status(StatusCode::kTimeout, std::string("the ") +
                                              (client_done ? spec.server_name : spec.client_name) +
                                              " process did not finish in time (--timeout-ms)");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return Status::Ok();
}

}  // namespace kvwire::examples
