// prefill_decode_handoff: see handoff.h for what each role does.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "../common/example_util.h"
#include "handoff.h"

namespace kvwire::examples::handoff {

Status EnterNetns(const std::string& name) {
  const std::string path = name.find('/') == std::string::npos ? "/run/netns/" + name : name;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status(StatusCode::kInvalidArgument,
                  "--netns " + name + ": cannot open " + path + ": " + std::strerror(errno));
  const int rc = ::setns(fd, CLONE_NEWNET);
  const int err = errno;
  ::close(fd);
  if (rc != 0)
    return Status(StatusCode::kInvalidArgument, "--netns " + name +
                                                    ": setns: " + std::strerror(err) +
                                                    (err == EPERM ? " (needs root)" : ""));
  return Status::Ok();
}

}  // namespace kvwire::examples::handoff

int main(int argc, char** argv) {
  using namespace kvwire::examples;
  SetProgramName("prefill_decode_handoff");
  handoff::Args a;
  CLI::App app{
      "Prefill -> decode handoff over kvwire, on loopback (or between two network namespaces\n"
      "of this host, e.g. the ends of a veth pair shaped with tc: --decode-netns ...).\n"
      "Process A prefills a prompt with the project's model and sends its KV cache layer by\n"
      "layer, compressed with --codec; process B receives it, waits layer by layer and continues\n"
      "greedy generation without recomputing the prefill. The default role (driver) runs both\n"
      "as child processes, compares B's text with a single-process run (Model::Generate) and\n"
      "reports wire bytes, compression vs fp16, time to KV-ready and top-1 agreement. At fp16\n"
      "it exits non-zero unless the texts are equal.\n\n"
      "Example:\n"
      "  prefill_decode_handoff --backend ucx --codec fraqtl@2 --profile kjv.kvp\n"
      "  kvwire calibrate --model models/kjv-gqa-6l/model.bin --text models/data/kjv_calib.txt "
      "--out kjv.kvp\n"
      "Over a veth pair between namespaces nsA (10.1.2.1) and nsB (root; scripts/demo.sh makes\n"
      "one shaped to 1 Gbit/s):\n"
      "  prefill_decode_handoff --codec fraqtl@2 --profile kjv.kvp --decode-netns nsA \\\n"
      "      --prefill-netns nsB --listen-address 10.1.2.1",
      "prefill_decode_handoff"};
  app.add_option("--role", a.role,
                 "driver: run both ends and compare; prefill: process A; decode: process B")
      ->check(CLI::IsMember({"driver", "prefill", "decode"}))
      ->capture_default_str();
  app.add_option("--listen", a.listen,
                 "decode: HOST:PORT to listen on (loopback unless --netns; port 0: any)")
      ->capture_default_str();
  app.add_option("--connect", a.connect, "prefill: HOST:PORT of the decode process");
  app.add_option("--netns", a.netns,
                 "decode/prefill: join this network namespace (ip netns add NAME) first; then "
                 "--listen/--connect may name its addresses (tcp only; root)");
  app.add_option("--decode-netns", a.decode_netns,
                 "driver: run the decode process in this network namespace (with "
                 "--prefill-netns and --listen-address)");
  app.add_option("--prefill-netns", a.prefill_netns,
                 "driver: run the prefill process in this network namespace");
  app.add_option("--listen-address", a.listen_address,
                 "driver: the decode process listens on this IP (in --decode-netns), any port");
  app.add_flag("--require-equal", a.require_equal,
               "driver: fail on a text mismatch with any codec (always on for fp16)");
  AddCommonOptions(&app, &a.common);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    Fail(std::string(e.what()) + " (see --help)");
    return 2;
  }
  try {
    if (a.role == "prefill") return handoff::RunPrefill(a);
    if (a.role == "decode") return handoff::RunDecode(a);
    return handoff::RunDriver(a);
  } catch (const std::exception& e) {
    return Fail(std::string("unexpected error: ") + e.what());
  }
}
