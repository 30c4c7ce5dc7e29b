// kvwire — the single command-line tool: one binary, one subcommand per task (cmd_*.cpp).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>

#include "command.h"

namespace kvwire::cli {

std::vector<CommandEntry>& Commands() {
  static std::vector<CommandEntry> commands;
  return commands;
}

int Fail(const std::string& command, const std::string& reason) {
  std::cerr << "kvwire" << (command.empty() ? "" : " ") << command << ": " << reason << "\n";
  return 1;
}

}  // namespace kvwire::cli

int main(int argc, char** argv) {
  using namespace kvwire::cli;
  CLI::App app{
      "kvwire: compress and ship the KV cache of an LLM between machines.\n"
      "Run `kvwire <command> --help` for the options of one command."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kvwire 0.1.0");
  auto& commands = Commands();
  std::sort(commands.begin(), commands.end(),
            [](const CommandEntry& a, const CommandEntry& b) { return std::string(a.name) < b.name; });
  std::map<CLI::App*, std::function<int()>> runners;
  for (const auto& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    runners[sub] = c.setup(sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version print and exit 0; every other parse error is one line with the
    // command it belongs to, like the errors the commands themselves report.
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    std::string command;
    for (auto& [sub, run] : runners) {
      if (sub->parsed()) command = sub->get_name();
    }
    Fail(command, std::string(e.what()) + " (see --help)");
    return e.get_exit_code();
  }
  for (auto& [sub, run] : runners) {
    if (sub->parsed()) {
      try {
        return run();
      } catch (const std::exception& e) {
        return Fail(sub->get_name(), std::string("unexpected error: ") + e.what());
      }
    }
  }
  return Fail("", "no command given (see --help)");
}
