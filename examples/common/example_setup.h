// Command-line options and set-up shared by the examples: the model and prompt, the codec and
// its profile, the transport (backend, key), timeouts, and the files through which the driver
// mode talks to the processes it starts.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvwire/model.h"
#include "kvwire/profile.h"
#include "kvwire/session.h"

namespace kvwire::examples {

struct CommonArgs {
  std::string model = "models/kjv-gqa-6l/model.bin";
  std::string tokenizer;  // empty: tokenizer.bin beside the model
  std::string prompt = "And God said, Let there be light: and there was light. And God saw";
  uint32_t new_tokens = 48;
  std::string codec = "fp16";
  std::string profile;
  std::string backend = "tcp";
  std::string key_file;  // roles: required; driver: a fresh random key when empty
  int threads = 1;       // model worker threads per process (the machine runs two processes)
  int timeout_ms = 120000;
  uint32_t chunk_tokens = 0;
  bool verbose = false;
  std::string json;  // driver: write the results here
  // Set by the driver for the processes it starts.
  std::string address_file, result_file, reference_file;
};

/// Adds the options above to `app` (the internal ones in their own group).
void AddCommonOptions(CLI::App* app, CommonArgs* args);

/// What every process loads before it starts.
struct Loaded {
  std::unique_ptr<Model> model;
  std::unique_ptr<Profile> profile;  // null without --profile
  std::vector<uint8_t> key;          // empty unless requested
  std::vector<int32_t> prompt;       // the prompt's tokens
};
/// Loads the model, the profile (checked against the model's fingerprint) and, when asked, the
/// key file and the prompt's tokens; checks that the codec exists.
Result<Loaded> LoadCommon(const CommonArgs& args, bool need_key, bool need_prompt);

/// The command-line options that pass `args` on to a process the driver starts (everything but
/// the driver-only and internal ones).
std::vector<std::string> ChildArgs(const CommonArgs& args);

/// "ucx (remote, rendezvous, ...)": the backend's capabilities (TransportCaps), or the reason
/// it cannot be used (not built, not a cross-process backend).
Result<std::string> DescribeBackend(const std::string& name);

/// The single level of a request coded with `codec`.
std::vector<LevelSpec> LevelsFor(const std::string& codec);
SenderOptions MakeSenderOptions(const CommonArgs& args, const Loaded& loaded,
                                const std::string& address, const std::string& node_name);
ReceiverOptions MakeReceiverOptions(const CommonArgs& args, const Loaded& loaded,
                                    const std::string& address, const std::string& node_name);

/// Bytes of the stream header that the RequestBegin of `r` on `kv` carries (SendStats counts
/// chunk traffic only): what makes a request's bits/element all-in.
Result<uint64_t> StreamHeaderBytes(const KvView& kv, const SendRequestOptions& r,
                                   const Profile* profile);

/// The reference continuation the driver computed, as a JSON file {"tokens": [...]}.
Status WriteTokensFile(const std::string& path, const std::vector<int32_t>& tokens);
Result<std::vector<int32_t>> ReadTokensFile(const std::string& path, uint32_t vocab);

/// A JSON object read from `path` (a result file of a child process).
Result<nlohmann::json> ReadJsonFile(const std::string& path);

/// `j` as indented JSON text (bytes that are not UTF-8, e.g. from a byte-level tokenizer,
/// become U+FFFD instead of an exception).
std::string DumpJson(const nlohmann::json& j);

/// The prompt as a C++ string literal would show it (for logs).
std::string Quoted(std::string_view text);

}  // namespace kvwire::examples
