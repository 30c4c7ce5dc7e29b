// kvwire send: the prefill-node end. Reads a KV dump, connects to `kvwire serve`, and sends it
// layer by layer, choosing the level of each chunk from --codec (one codec or a ladder),
// --max-kl | --bits and --deadline-ms. --json writes what happened (levels chosen, bytes, timings)
// for scripts and tests.
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <sstream>
#include <string>

#include "cli_profile.h"
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
  TlsArgs tls;
  std::string in, codec = "fp16", profile;
  std::optional<double> max_kl, bits;
  int deadline_ms = 0;
  uint32_t chunk_tokens = 0;
  uint64_t request_id = 1;
  uint64_t max_inflight_mib = 64;
  uint32_t busy_poll_us = 0;
  int reconnect_window_ms = SenderOptions{}.reconnect_window_ms;
  int reconnect_backoff_ms = SenderOptions{}.reconnect_backoff_ms;
  int max_reconnect_backoff_ms = SenderOptions{}.max_reconnect_backoff_ms;
  int stall_timeout_ms = SenderOptions{}.stall_timeout_ms;
  int encode_threads = 0;
  std::string on_receiver_restart = "resend";
  std::string json;
  bool verbose = false;
  bool lend_dump = false;
};

std::vector<std::string> SplitComma(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// All-in bits/element of `spec` measured on up to 2^20 elements of layer 0 (K and V) of the
// input: the chooser plans with what the wire will actually carry. (It measured 16 Mi elements
// once: for a 200 MB fp16 send, a seventh of the sender's CPU went into this probe.)
Result<double> MeasureBits(const MappedKvDump& cache, const std::string& spec, const Profile* profile) {
  StreamInfo info;
  info.shape = cache.shape();
  info.dtype = cache.dtype();
  info.metadata = cache.metadata();
  info.levels = {spec};
  KVWIRE_ASSIGN_OR_RETURN(auto writer, StreamWriter::Create(info, {}, profile));
  const KvShape& sh = cache.shape();
  const uint64_t row = uint64_t{sh.kv_heads} * sh.head_dim;
  const uint32_t tokens =
      static_cast<uint32_t>(std::max<uint64_t>(1, std::min<uint64_t>(sh.tokens, (1ull << 20) / row)));
  std::vector<uint8_t> frame;
  for (KvKind kind : {KvKind::kKey, KvKind::kValue})
    KVWIRE_RETURN_IF_ERROR(writer->EncodeChunk(cache.view(), 0, kind, 0, tokens, 0, &frame));
  return double(frame.size()) * 8.0 / double(2 * tokens * row);
}

// A level's codec throughput in elements per second on this CPU, one thread: Encode and Decode
// of up to 2^20 elements of K and V of the middle layer (a first layer may be unrepresentative:
// its rows repeat), the faster of two runs each (the first builds the codec's tables). The
// chooser compares it with the link, so that a level that computes slower than the link sends
// is not taken for a faster one.
Status MeasureSpeed(const MappedKvDump& cache, const std::string& spec, const Profile* profile,
                    LevelSpec* level) {
  KVWIRE_ASSIGN_OR_RETURN(auto codec, CreateCodec(spec, profile));
  const KvShape& sh = cache.shape();
  const uint64_t row = uint64_t{sh.kv_heads} * sh.head_dim;
  ChunkDesc d;
  d.layer = sh.layers / 2;
  d.tokens = static_cast<uint32_t>(std::max<uint64_t>(1, std::min<uint64_t>(sh.tokens, (1u << 20) / row)));
  d.kv_heads = sh.kv_heads;
  d.head_dim = sh.head_dim;
  d.seq_tokens = sh.tokens;
  d.positions_start = cache.metadata().positions_start;
  std::vector<float> x(d.elements()), y(d.elements());
  std::vector<uint8_t> payload;
  double enc = 1e30, dec = 1e30;
  for (int run = 0; run < 2; ++run) {
    double e = 0, t = 0;
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      d.kind = kind;
      KVWIRE_RETURN_IF_ERROR(cache.view().ReadF32(d.layer, kind, 0, d.tokens, x.data()));
      payload.clear();
      const double t0 = NowSeconds();
      KVWIRE_RETURN_IF_ERROR(codec->Encode(d, x.data(), &payload));
      const double t1 = NowSeconds();
      KVWIRE_RETURN_IF_ERROR(codec->Decode(d, payload, y.data()));
      e += t1 - t0;
      t += NowSeconds() - t1;
    }
    enc = std::min(enc, e);
    dec = std::min(dec, t);
  }
  const double elements = 2.0 * double(d.elements());
  level->encode_elements_per_s = enc > 0 ? elements / enc : 0;
  level->decode_elements_per_s = dec > 0 ? elements / dec : 0;
  return Status::Ok();
}

int RunSend(const SendArgs& a) {
  const char* cmd = "send";
  const double t_process = NowSeconds();
  if (a.max_kl && a.bits) return Fail(cmd, "give --max-kl or --bits, not both");
  auto profile = LoadProfileArg(a.profile);
  if (!profile.ok()) return FailStatus(cmd, profile.status().WithContext("--profile " + a.profile));
  SenderOptions o;
  o.backend = a.backend;
  o.transport.address = a.connect;
  o.transport.node_name = "kvwire-send";
  o.max_inflight_bytes = a.max_inflight_mib << 20;
  o.reconnect_window_ms = a.reconnect_window_ms;
  o.reconnect_backoff_ms = a.reconnect_backoff_ms;
  o.max_reconnect_backoff_ms = a.max_reconnect_backoff_ms;
  o.stall_timeout_ms = a.stall_timeout_ms;
  o.encode_threads = a.encode_threads;
  o.resend_after_receiver_restart = a.on_receiver_restart == "resend";
  o.transport.busy_poll_us = a.busy_poll_us;
  o.verbose = a.verbose;
  o.profile = profile->get();
  auto tls = MakeTlsOptions(a.tls, a.backend);
  if (!tls.ok()) return FailStatus(cmd, tls.status());
  o.transport.tls = std::move(*tls);
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
    if (auto c = CreateCodec(s, profile->get()); !c.ok()) return FailStatus(cmd, c.status());

  auto cache = MappedKvDump::Open(a.in);
  if (!cache.ok()) return FailStatus(cmd, cache.status());
  WarnFingerprint("KV dump model", cache->metadata().model_fingerprint, *profile);
  SendRequestOptions r;
  r.request_id = a.request_id;
  r.deadline_ms = a.deadline_ms;
  r.chunk_tokens = a.chunk_tokens;
  r.metadata = cache->metadata();
  r.profile_id = profile->id;
  // The dump's pages are the page cache's: on the VMs measured, reading them costs more than a
  // copy does, so fp16 chunks are copied once (and the copy read) rather than read twice.
  r.lend_kv = a.lend_dump;
  const double t_loaded = NowSeconds();
  for (const auto& s : specs) {
    auto bits = MeasureBits(*cache, s, profile->get());
    if (!bits.ok()) return FailStatus(cmd, bits.status().WithContext(s));
    r.levels.push_back({s, *bits, -1});
    if (specs.size() > 1) {  // a ladder: the chooser weighs each level's codec time
      if (Status st = MeasureSpeed(*cache, s, profile->get(), &r.levels.back()); !st.ok()) {
        return FailStatus(cmd, st.WithContext(s));
      }
    }
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

  const double t_measured = NowSeconds();
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
  if (!a.json.empty()) {
    // Times in seconds from this process's start of RunSend; "send_s" (Open -> the receiver
    // confirmed every chunk decoded) is what the transfer itself took.
    nlohmann::ordered_json j;
    j["in"] = a.in;
    j["connect"] = a.connect;
    j["backend"] = a.backend;
    j["request_id"] = a.request_id;
    j["deadline_ms"] = a.deadline_ms;
    j["shape"] = {{"layers", sh.layers},
                  {"tokens", sh.tokens},
                  {"kv_heads", sh.kv_heads},
                  {"head_dim", sh.head_dim}};
    j["dtype"] = std::string(DTypeName(cache->dtype()));
    j["elements"] = sh.elements();
    j["raw_bytes"] = raw;
    j["chunks"] = st.chunks;
    j["wire_bytes"] = st.wire_bytes;
    j["wire_bits_per_element"] = double(st.wire_bytes) * 8.0 / double(sh.elements());
    nlohmann::ordered_json lv = nlohmann::ordered_json::array();
    double weighted = 0;
    for (size_t i = 0; i < r.levels.size(); ++i) {
      const uint64_t n = i < st.chunks_per_level.size() ? st.chunks_per_level[i] : 0;
      weighted += double(n) * r.levels[i].bits_per_element;
      lv.push_back({{"codec", r.levels[i].codec},
                    {"bits_per_element", r.levels[i].bits_per_element},
                    {"encode_elements_per_s", r.levels[i].encode_elements_per_s},
                    {"decode_elements_per_s", r.levels[i].decode_elements_per_s},
                    {"chunks", n}});
    }
    j["levels"] = lv;
    // Chunks are equal-sized but for a layer's last one: the chunk-weighted mean of the levels'
    // measured bits/element, the policy's view (wire_bits_per_element is the all-in truth).
    j["mean_level_bits_per_element"] = st.chunks ? weighted / double(st.chunks) : 0.0;
    j["reconnects"] = st.reconnects;
    j["resent_chunks"] = st.resent_chunks;
    j["load_s"] = t_loaded - t_process;
    j["measure_bits_s"] = t_measured - t_loaded;
    j["connect_s"] = t0 - t_measured;
    j["send_s"] = seconds;
    j["goodput_bytes_per_s"] = double(st.wire_bytes) / seconds;
    const std::string body = j.dump(2) + "\n";
    if (Status s = WriteFileBytes(
            a.json,
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
        !s.ok())
      return FailStatus(cmd, s);
  }
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
      sub->add_option("--busy-poll-us", a->busy_poll_us, kBusyPollHelp);
      sub->add_option("--reconnect-window-ms", a->reconnect_window_ms,
                      "how long a broken connection is retried (also a first connect that "
                      "failed on the way, not one the receiver refused); the transfer resumes "
                      "where it stopped. 0: no retries")
          ->check(CLI::Range(0, 24 * 3600 * 1000))
          ->capture_default_str();
      sub->add_option("--reconnect-backoff-ms", a->reconnect_backoff_ms,
                      "wait before the second attempt, doubled after each")
          ->check(CLI::Range(1, 60000))
          ->capture_default_str();
      sub->add_option("--max-reconnect-backoff-ms", a->max_reconnect_backoff_ms,
                      "longest wait between two attempts")
          ->check(CLI::Range(1, 60000))
          ->capture_default_str();
      sub->add_option("--on-receiver-restart", a->on_receiver_restart,
                      "a receiver that comes back holding nothing of the request (it restarted): "
                      "resend it from the start, or fail")
          ->check(CLI::IsMember({"resend", "fail"}))
          ->capture_default_str();
      sub->add_option("--stall-timeout-ms", a->stall_timeout_ms,
                      "no acknowledgement for this long with chunks in flight: the connection "
                      "counts as broken")
          ->check(CLI::Range(100, 24 * 3600 * 1000))
          ->capture_default_str();
      sub->add_option("--encode-threads", a->encode_threads,
                      "chunks encoded at once (sent in order); 0: the machine's cores, at most 4")
          ->check(CLI::Range(0, 64))
          ->capture_default_str();
      AddTlsOptions(sub, &a->tls, /*listening=*/false);
      sub->add_option("--json", a->json,
                      "write levels chosen, bytes and timings (load, connect, send) as JSON");
      sub->add_flag("--verbose,-v", a->verbose, "log level choices and reconnects");
      sub->add_flag("--lend-dump", a->lend_dump,
                    "tcp and ucx, fp16 level: send chunks straight from the mapped dump (read "
                    "twice: the CRC, then the socket) instead of copying each into a frame (read "
                    "once, then the copy read); quicker where reading the dump's pages is cheap");
      return [a] { return RunSend(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
