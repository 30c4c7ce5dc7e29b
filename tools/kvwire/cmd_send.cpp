// kvwire send: the prefill-node end. Reads a KV dump, connects to `kvwire serve`, and sends it
// layer by layer, choosing the level of each chunk from --codec (one codec or a ladder),
// --max-kl | --bits and --deadline-ms.
#include <algorithm>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

#include "cli_util.h"
#include "command.h"
#include "kvwire/kv_file.h"
#include "kvwire/session.h"

namespace kvwire::cli {
namespace {

struct SendArgs {
  std::string connect;
  std::string backend = "tcp";
  std::string key_file;
  bool insecure = false;
  std::string in, codec = "fp16", profile;
  std::optional<double> max_kl, bits;
  int deadline_ms = 0;
  uint32_t chunk_tokens = 0;
  uint64_t request_id = 1;
  uint64_t max_inflight_mib = 64;
  bool verbose = false;
};

std::vector<std::string> SplitComma(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// All-in bits/element of `spec` measured on layer 0 (K and V) of the input: the chooser plans
// with what the wire will actually carry.
Result<double> MeasureBits(const KvCache& cache, const std::string& spec) {
  StreamInfo info;
  info.shape = cache.shape();
  info.dtype = cache.dtype();
  info.metadata = cache.metadata();
  info.levels = {spec};
  KVWIRE_ASSIGN_OR_RETURN(auto writer, StreamWriter::Create(info));
  const KvShape& sh = cache.shape();
  const uint64_t row = uint64_t{sh.kv_heads} * sh.head_dim;
  const uint32_t tokens = static_cast<uint32_t>(std::min<uint64_t>(sh.tokens, (16ull << 20) / row));
  std::vector<uint8_t> frame;
  for (KvKind kind : {KvKind::kKey, KvKind::kValue})
    KVWIRE_RETURN_IF_ERROR(writer->EncodeChunk(cache.view(), 0, kind, 0, tokens, 0, &frame));
  return double(frame.size()) * 8.0 / double(2 * tokens * row);
}

int RunSend(const SendArgs& a) {
  const char* cmd = "send";
  if (!a.profile.empty())
    return Fail(cmd, "--profile: profiles are not supported by this build yet");
  if (a.max_kl && a.bits) return Fail(cmd, "give --max-kl or --bits, not both");
  SenderOptions o;
  o.backend = a.backend;
  o.transport.address = a.connect;
  o.transport.node_name = "kvwire-send";
  o.max_inflight_bytes = a.max_inflight_mib << 20;
  o.verbose = a.verbose;
  if (!a.key_file.empty()) {
    auto key = LoadKeyFile(a.key_file);
    if (!key.ok()) return FailStatus(cmd, key.status());
    o.transport.key = std::move(*key);
  } else if (!a.insecure) {
    return Fail(cmd, "--key-file is required (or --insecure when the server runs --insecure)");
  } else {
    o.transport.allow_unauthenticated = true;
  }

  // Levels: one codec (with --bits filling in a family's width) or a comma-separated ladder.
  std::vector<std::string> specs;
  const auto names = SplitComma(a.codec);
  if (names.empty()) return Fail(cmd, "--codec is empty");
  if (names.size() == 1) {
    auto spec = ResolveCodecSpec(names[0], a.bits);
    if (!spec.ok()) return FailStatus(cmd, spec.status());
    specs.push_back(*spec);
  } else {
    if (a.bits) return Fail(cmd, "--bits needs a single --codec family, not a ladder");
    specs = names;
  }
  for (const auto& s : specs)
    if (auto c = CreateCodec(s); !c.ok()) return FailStatus(cmd, c.status());

  auto cache = LoadKvDump(a.in);
  if (!cache.ok()) return FailStatus(cmd, cache.status());
  SendRequestOptions r;
  r.request_id = a.request_id;
  r.deadline_ms = a.deadline_ms;
  r.chunk_tokens = a.chunk_tokens;
  r.metadata = cache->metadata();
  for (const auto& s : specs) {
    auto bits = MeasureBits(*cache, s);
    if (!bits.ok()) return FailStatus(cmd, bits.status().WithContext(s));
    r.levels.push_back({s, *bits, -1});
  }
  // Most accurate first.
  std::stable_sort(r.levels.begin(), r.levels.end(), [](const LevelSpec& x, const LevelSpec& y) {
    return x.bits_per_element > y.bits_per_element;
  });
  if (a.max_kl) {
    // Without a profile no level has a measured KL: only the most accurate level qualifies.
    r.max_kl = *a.max_kl;
    std::cerr << "kvwire send: note: no profile, so no level has a known KL; --max-kl keeps the "
                 "most accurate level\n";
  }

  auto sender = Sender::Connect(o);
  if (!sender.ok()) return FailStatus(cmd, sender.status());
  const double t0 = NowSeconds();
  auto req = (*sender)->Open(cache->view(), r);
  if (!req.ok()) return FailStatus(cmd, req.status());
  for (uint32_t l = 0; l < cache->shape().layers; ++l) {
    if (Status s = (*req)->PushLayer(l); !s.ok()) return FailStatus(cmd, s);
  }
  Status done = (*req)->Wait(-1);
  const double seconds = NowSeconds() - t0;
  if (!done.ok()) return FailStatus(cmd, done);
  const SendStats st = (*req)->stats();
  const KvShape& sh = cache->shape();
  const uint64_t raw = sh.elements() * DTypeSize(cache->dtype());
  std::string levels;
  for (size_t i = 0; i < st.chunks_per_level.size(); ++i) {
    if (st.chunks_per_level[i] == 0) continue;
    if (!levels.empty()) levels += ", ";
    levels += r.levels[i].codec + Format(" (%.3f b/e) x", r.levels[i].bits_per_element) +
              std::to_string(st.chunks_per_level[i]);
  }
  std::cout << "sent " << a.in << " to " << a.connect << " (" << a.backend << "): " << st.chunks
            << " chunks, " << Thousands(st.wire_bytes) << " bytes on the wire, "
            << Format("%.2fx smaller than %s, %.1f ms, %.1f MB/s goodput",
                      double(raw) / double(st.wire_bytes),
                      std::string(DTypeName(cache->dtype())).c_str(), seconds * 1000,
                      double(st.wire_bytes) / seconds / 1e6)
            << "\n  levels: " << levels;
  if (st.reconnects)
    std::cout << "; " << st.reconnects << " reconnect(s), " << st.resent_chunks << " chunks resent";
  std::cout << std::endl;
  (*sender)->Close();
  return 0;
}

const CommandRegistrar kRegister(
    "send", "prefill node: send a KV dump to `kvwire serve`, compressed, layer by layer",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<SendArgs>();
      sub->add_option("--connect", a->connect, "HOST:PORT of kvwire serve")->required();
      sub->add_option("--backend", a->backend, "ucx | tcp")->check(CLI::IsMember({"ucx", "tcp"}));
      sub->add_option("--key-file", a->key_file,
                      "pre-shared key: 64+ hex digits or >= 16 raw bytes");
      sub->add_flag("--insecure", a->insecure, "connect without authentication");
      sub->add_option("--in", a->in, "KV dump (safetensors)")->required();
      sub->add_option("--codec", a->codec,
                      "codec spec, or a comma-separated ladder the sender picks from per chunk");
      sub->add_option("--profile", a->profile, "calibration profile (profile-based codecs)");
      sub->add_option("--max-kl", a->max_kl,
                      "accuracy budget: max mean KL per level (needs a profile)");
      sub->add_option("--bits", a->bits, "bit-width filled into a --codec family (e.g. kivi + 2)");
      sub->add_option("--deadline-ms", a->deadline_ms, "deadline for the whole transfer (0: none)");
      sub->add_option("--chunk-tokens", a->chunk_tokens, "tokens per chunk (0: whole layer)");
      sub->add_option("--request-id", a->request_id, "request id (!= 0)");
      sub->add_option("--max-inflight-mib", a->max_inflight_mib,
                      "unacknowledged bytes bound (MiB)");
      sub->add_flag("--verbose,-v", a->verbose, "log level choices and reconnects");
      return [a] { return RunSend(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
