// Each `kvwire <command>` lives in its own cmd_<name>.cpp and registers itself here.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace kvwire::cli {

/// Adds the subcommand's options to `sub` and returns the function that runs it (exit code).
/// The returned function runs only if this subcommand was chosen.
using CommandSetup = std::function<std::function<int()>(CLI::App* sub)>;

struct CommandEntry {
  const char* name;
  const char* help;
  CommandSetup setup;
};

/// Registered by a static CommandRegistrar in each cmd_*.cpp (linked directly into the binary).
std::vector<CommandEntry>& Commands();

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* help, CommandSetup setup) {
    Commands().push_back({name, help, std::move(setup)});
  }
};

/// Prints "kvwire <cmd>: <reason>" to stderr and returns the exit code 1.
int Fail(const std::string& command, const std::string& reason);

}  // namespace kvwire::cli
