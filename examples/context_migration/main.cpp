// context_migration: see migration.h for what each role does.
#include <iostream>

#include "../common/example_util.h"
#include "migration.h"

int main(int argc, char** argv) {
  using namespace kvwire::examples;
  SetProgramName("context_migration");
  migration::Args a;
  CLI::App app{
      "Live context migration between two decode nodes over kvwire, on\n"
      "loopback. Node A generates from the prompt; after --migrate-after tokens it pre-copies\n"
      "its KV cache to node B while it keeps generating, then sends the tail generated meanwhile\n"
      "(a second request starting at token_begin = the prefix length), frees its cache once B\n"
      "confirmed, and B continues. The default role (driver) runs both as child processes and\n"
      "compares A's tokens followed by B's with the unmigrated run; at fp16 it exits non-zero\n"
      "unless they are equal.\n\n"
      "Example:\n"
      "  context_migration --backend tcp --codec q4_0 --new-tokens 64 --migrate-after 16",
      "context_migration"};
  app.add_option("--role", a.role,
                 "driver: run both nodes and compare; source: node A; target: node B")
      ->check(CLI::IsMember({"driver", "source", "target"}))
      ->capture_default_str();
  app.add_option("--listen", a.listen, "target: HOST:PORT to listen on (loopback; port 0: any)")
      ->capture_default_str();
  app.add_option("--connect", a.connect, "source: HOST:PORT of the target process");
  app.add_option("--migrate-after", a.migrate_after,
                 "tokens A generates before it is told to migrate")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--overlap-tokens", a.overlap_tokens,
                 "tokens A generates at least while the prefix is on the wire (it goes on until "
                 "B confirmed the prefix)")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
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
    if (a.role == "source") return migration::RunSource(a);
    if (a.role == "target") return migration::RunTarget(a);
    return migration::RunDriver(a);
  } catch (const std::exception& e) {
    return Fail(std::string("unexpected error: ") + e.what());
  }
}
