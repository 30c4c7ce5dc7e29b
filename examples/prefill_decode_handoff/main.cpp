// prefill_decode_handoff: see handoff.h for what each role does.
#include <iostream>

#include "../common/example_util.h"
#include "handoff.h"

int main(int argc, char** argv) {
  using namespace kvwire::examples;
  SetProgramName("prefill_decode_handoff");
  handoff::Args a;
  CLI::App app{
      "Prefill -> decode handoff over kvwire (DESIGN.md section 7), on loopback.\n"
      "Process A prefills a prompt with the project's model and sends its KV cache layer by\n"
      "layer, compressed with --codec; process B receives it, waits layer by layer and continues\n"
      "greedy generation without recomputing the prefill. The default role (driver) runs both\n"
      "as child processes, compares B's text with a single-process run (Model::Generate) and\n"
      "reports wire bytes, compression vs fp16, time to KV-ready and top-1 agreement. At fp16\n"
      "it exits non-zero unless the texts are equal.\n\n"
      "Example:\n"
      "  prefill_decode_handoff --backend ucx --codec fraqtl@2 --profile kjv.kvp\n"
      "  kvwire calibrate --model models/kjv-gqa-6l/model.bin --text models/data/kjv_calib.txt "
      "--out kjv.kvp",
      "prefill_decode_handoff"};
  app.add_option("--role", a.role,
                 "driver: run both ends and compare; prefill: process A; decode: process B")
      ->check(CLI::IsMember({"driver", "prefill", "decode"}))
      ->capture_default_str();
  app.add_option("--listen", a.listen, "decode: HOST:PORT to listen on (loopback; port 0: any)")
      ->capture_default_str();
  app.add_option("--connect", a.connect, "prefill: HOST:PORT of the decode process");
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
