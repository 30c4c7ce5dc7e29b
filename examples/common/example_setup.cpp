#include "example_setup.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "example_util.h"
#include "kvwire/codec.h"
#include "kvwire/stream.h"

namespace kvwire::examples {

void AddCommonOptions(CLI::App* app, CommonArgs* a) {
  app->add_option("--model", a->model, "llama2.c model.bin or GGUF file")->capture_default_str();
  app->add_option("--tokenizer", a->tokenizer, "tokenizer.bin (default: beside the model)");
  app->add_option("--prompt", a->prompt, "prompt text")->capture_default_str();
  app->add_option("--new-tokens", a->new_tokens, "tokens to generate (greedy)")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app->add_option("--codec", a->codec,
                  "codec spec of the KV on the wire: fp16, q4_0, kivi2, fraqtl@2, ...")
      ->capture_default_str();
  app->add_option(
      "--profile", a->profile,
      "fraqtl profile (kvwire calibrate --model M --text T --out P); both ends load it");
  app->add_option("--backend", a->backend, "transport: tcp | ucx")
      ->check(CLI::IsMember({"tcp", "ucx"}))
      ->capture_default_str();
  app->add_option("--key-file", a->key_file,
                  "pre-shared key (64+ hex digits or >= 16 bytes); the driver mode makes a "
                  "random one when omitted");
  app->add_option("--threads", a->threads, "model worker threads per process")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app->add_option("--timeout-ms", a->timeout_ms,
                  "give up (one-line error, non-zero exit) after this long")
      ->check(CLI::Range(1000, 3600000))
      ->capture_default_str();
  app->add_option("--chunk-tokens", a->chunk_tokens, "tokens per chunk (0: one chunk per layer)");
  app->add_flag("--verbose,-v", a->verbose, "log the sessions (levels, chunks, completions)");
  app->add_option("--json", a->json, "driver: also write the results as JSON here");
  const std::string internal = "Internal (set by the driver mode for the processes it starts)";
  app->add_option("--address-file", a->address_file, "decode/target: write the bound address here")
      ->group(internal);
  app->add_option("--result-file", a->result_file, "write this process's results (JSON) here")
      ->group(internal);
  app->add_option("--reference-file", a->reference_file,
                  "decode/target: reference tokens of a single-process run (JSON), to measure "
                  "top-1 agreement")
      ->group(internal);
}

Result<Loaded> LoadCommon(const CommonArgs& a, bool need_key, bool need_prompt) {
  Loaded out;
  ModelOptions mo;
  mo.tokenizer_path = a.tokenizer;
  mo.threads = a.threads;
  auto model = Model::Load(a.model, mo);
  if (!model.ok()) return model.status().WithContext("--model " + a.model);
  out.model = std::move(*model);
  KVWIRE_RETURN_IF_ERROR(out.model->TokenizerStatus().WithContext("--model " + a.model));
  if (need_prompt) {
    KVWIRE_ASSIGN_OR_RETURN(out.prompt, out.model->tokenizer().Encode(a.prompt));
    KVWIRE_RETURN_ERROR_IF(out.prompt.size() < 2, kInvalidArgument,
                           "--prompt must be at least 2 tokens long");
  }
  if (!a.profile.empty()) {
    auto profile = Profile::Load(a.profile);
    if (!profile.ok()) return profile.status().WithContext("--profile " + a.profile);
    const std::string& want = out.model->fingerprint();
    KVWIRE_RETURN_ERROR_IF(
        !profile->model_fingerprint.empty() && !want.empty() && profile->model_fingerprint != want,
        kInvalidArgument,
        "--profile " + a.profile + " was calibrated for model " + profile->model_fingerprint +
            ", not for " + a.model + " (" + want + "): calibrate it again (kvwire calibrate)");
    out.profile = std::make_unique<Profile>(std::move(*profile));
  }
  auto codec = CreateCodec(a.codec, out.profile.get());
  if (!codec.ok()) return codec.status().WithContext("--codec " + a.codec);
  if (need_key) {
    KVWIRE_RETURN_ERROR_IF(a.key_file.empty(), kInvalidArgument,
                           "--key-file is required (peers authenticate with a pre-shared key)");
    KVWIRE_ASSIGN_OR_RETURN(out.key, LoadKey(a.key_file));
  }
  return out;
}

std::vector<std::string> ChildArgs(const CommonArgs& a) {
  std::vector<std::string> out = {"--model",        a.model,
                                  "--prompt",       a.prompt,
                                  "--new-tokens",   std::to_string(a.new_tokens),
                                  "--codec",        a.codec,
                                  "--backend",      a.backend,
                                  "--key-file",     a.key_file,
                                  "--threads",      std::to_string(a.threads),
                                  "--timeout-ms",   std::to_string(a.timeout_ms),
                                  "--chunk-tokens", std::to_string(a.chunk_tokens)};
  if (!a.tokenizer.empty()) out.insert(out.end(), {"--tokenizer", a.tokenizer});
  if (!a.profile.empty()) out.insert(out.end(), {"--profile", a.profile});
  if (a.verbose) out.push_back("--verbose");
  return out;
}

Result<std::string> DescribeBackend(const std::string& name) {
  auto t = CreateTransport(name);
  if (!t.ok()) {
    std::string have;
    for (const auto& n : AvailableTransports()) have += (have.empty() ? "" : ", ") + n;
    return t.status().WithContext("--backend " + name + " (this build has: " + have + ")");
  }
  const TransportCaps caps = (*t)->caps();
  KVWIRE_RETURN_ERROR_IF(!caps.remote, kInvalidArgument,
                         "--backend " + name + " does not reach other processes");
  std::string out = name + " (remote";
  if (caps.rendezvous) out += ", rendezvous for large payloads";
  if (caps.zero_copy_send) out += ", zero-copy send";
  if (caps.gpu_memory) out += ", GPU memory";
  out += caps.tls ? ", TLS" : ", authenticated, not encrypted";
  return out + ")";
}

std::vector<LevelSpec> LevelsFor(const std::string& codec) {
  // One level: the chooser has nothing to choose, so no bits/KL estimate is needed.
  return {LevelSpec{codec, 0, -1}};
}

SenderOptions MakeSenderOptions(const CommonArgs& a, const Loaded& loaded,
                                const std::string& address, const std::string& node_name) {
  SenderOptions o;
  o.backend = a.backend;
  o.transport.address = address;
  o.transport.key = loaded.key;
  o.transport.node_name = node_name;
  o.stall_timeout_ms = std::min(a.timeout_ms, 30000);
  o.profile = loaded.profile.get();
  o.verbose = a.verbose;
  return o;
}

ReceiverOptions MakeReceiverOptions(const CommonArgs& a, const Loaded& loaded,
                                    const std::string& address, const std::string& node_name) {
  ReceiverOptions o;
  o.backend = a.backend;
  o.transport.address = address;
  o.transport.key = loaded.key;
  o.transport.node_name = node_name;
  o.stall_timeout_ms = std::min(a.timeout_ms, 30000);
  o.profile = loaded.profile.get();
  o.verbose = a.verbose;
  return o;
}

Result<uint64_t> StreamHeaderBytes(const KvView& kv, const SendRequestOptions& r,
                                   const Profile* profile) {
  StreamInfo info;
  info.shape = kv.shape();
  info.dtype = kv.dtype();
  info.token_begin = r.token_begin;
  info.metadata = r.metadata;
  info.profile_id = r.profile_id;
  for (const auto& l : r.levels) info.levels.push_back(l.codec);
  KVWIRE_ASSIGN_OR_RETURN(auto writer, StreamWriter::Create(info, {}, profile));
  std::vector<uint8_t> header;
  KVWIRE_RETURN_IF_ERROR(writer->WriteHeader(&header));
  return uint64_t{header.size()};
}

Status WriteTokensFile(const std::string& path, const std::vector<int32_t>& tokens) {
  nlohmann::json j;
  j["tokens"] = tokens;
  return WriteFileAtomic(path, DumpJson(j));
}

Result<nlohmann::json> ReadJsonFile(const std::string& path) {
  KVWIRE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  KVWIRE_RETURN_ERROR_IF(j.is_discarded() || !j.is_object(), kCorrupt, path + ": not JSON");
  return j;
}

std::string DumpJson(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

Result<std::vector<int32_t>> ReadTokensFile(const std::string& path, uint32_t vocab) {
  KVWIRE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  KVWIRE_RETURN_ERROR_IF(
      j.is_discarded() || !j.is_object() || !j.contains("tokens") || !j["tokens"].is_array(),
      kCorrupt, path + ": not a tokens file");
  std::vector<int32_t> out;
  for (const auto& t : j["tokens"]) {
    KVWIRE_RETURN_ERROR_IF(
        !t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= int64_t{vocab},
        kCorrupt, path + ": token outside the vocabulary");
    out.push_back(t.get<int32_t>());
  }
  return out;
}

std::string Quoted(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      out += Format("\\x%02x", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace kvwire::examples
