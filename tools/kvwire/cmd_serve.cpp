// kvwire serve: the decode-node end. Listens, authenticates senders, receives KV caches and
// writes each one as a KV dump (safetensors) into --out-dir.
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include "cli_profile.h"
#include "cli_util.h"
#include "common/log_line.h"
#include "command.h"
#include "kvwire/kv_file.h"
#include "kvwire/session.h"

namespace kvwire::cli {
namespace {

struct ServeArgs {
  std::string listen = "127.0.0.1:7070";
  std::string backend = "tcp";
  std::string key_file;
  bool insecure = false;
  TlsArgs tls;
  std::string out_dir = ".";
  std::string profile;
  bool no_fetch_profiles = false;
  int count = 0;  // 0: serve forever
  int stall_timeout_ms = 30000;
  uint32_t busy_poll_us = 0;
  bool discard = false;
  bool verbose = false;
};

int RunServe(const ServeArgs& a) {
  const char* cmd = "serve";
  ReceiverOptions o;
  o.backend = a.backend;
  o.transport.address = a.listen;
  o.transport.node_name = "kvwire-serve";
  o.stall_timeout_ms = a.stall_timeout_ms;
  o.transport.busy_poll_us = a.busy_poll_us;
  o.verbose = a.verbose;
  auto profile = LoadProfileArg(a.profile);
  if (!profile.ok()) return FailStatus(cmd, profile.status().WithContext("--profile " + a.profile));
  o.profile = profile->get();
  o.fetch_profiles = !a.no_fetch_profiles;
  auto tls = MakeTlsOptions(a.tls, a.backend);
  if (!tls.ok()) return FailStatus(cmd, tls.status());
  o.transport.tls = std::move(*tls);
  if (!a.key_file.empty()) {
    auto key = LoadKeyFile(a.key_file);
    if (!key.ok()) return FailStatus(cmd, key.status());
    o.transport.key = std::move(*key);
  } else if (!a.insecure) {
    return Fail(cmd, "--key-file is required (or --insecure to accept unauthenticated peers)");
  } else {
    o.transport.allow_unauthenticated = true;
  }
  if (!a.discard) {
    std::error_code ec;
    std::filesystem::create_directories(a.out_dir, ec);
    if (ec) return Fail(cmd, "cannot create --out-dir " + a.out_dir + ": " + ec.message());
  }

  auto receiver = Receiver::Listen(o);
  if (!receiver.ok()) return FailStatus(cmd, receiver.status());
  std::cout << "kvwire serve: listening on " << (*receiver)->address() << " (" << a.backend
            << (a.tls.tls ? ", TLS" : "") << ")"
            << std::endl;
  std::optional<KvCache> cache;
  for (int served = 0; a.count == 0 || served < a.count;) {
    auto in = (*receiver)->NextRequest(-1);
    if (!in.ok()) return FailStatus(cmd, in.status());
    const uint64_t id = in->request_id;
    // The destination: the previous request's cache when the shape and dtype match, as a decode
    // node's KV pool is allocated once (a fresh 200 MB cache would put its page faults on the
    // KV-ready clock).
    if (!cache || cache->shape() != in->info.shape || cache->dtype() != in->info.dtype) {
      auto fresh = KvCache::Create(in->info.shape, in->info.dtype);
      if (!fresh.ok()) return FailStatus(cmd, fresh.status());
      cache = std::move(*fresh);
    }
    cache->metadata() = in->info.metadata;
    const double t0 = NowSeconds();
    Status s = (*receiver)->SetDestination(id, cache->view());
    if (s.ok()) s = (*receiver)->Wait(id, -1);
    const double seconds = NowSeconds() - t0;
    ++served;
    if (!s.ok()) {
      WriteLogLine(stderr, "kvwire serve: request " + std::to_string(id) + " from '" + in->peer +
                               "' failed: " + s.ToString());
      (void)(*receiver)->Release(id);
      if (a.count != 0) return 1;
      continue;
    }
    const std::string path = a.discard ? std::string("(discarded)")
                                       : a.out_dir + "/request-" + std::to_string(id) +
                                             ".safetensors";
    if (!a.discard) {
      if (Status w = SaveKvDump(path, *cache); !w.ok()) return FailStatus(cmd, w);
    }
    auto st = (*receiver)->stats(id);
    std::string levels;
    if (st.ok()) {
      for (size_t i = 0; i < st->chunks_per_level.size(); ++i) {
        if (st->chunks_per_level[i] == 0) continue;
        if (!levels.empty()) levels += ", ";
        levels += in->levels[i].codec + " x" + std::to_string(st->chunks_per_level[i]);
      }
    }
    const KvShape& sh = in->info.shape;
    const uint64_t raw = sh.elements() * DTypeSize(in->info.dtype);
    // One write for both lines: the receiver's threads log to stderr meanwhile, and a log that
    // holds both streams must not get their lines spliced into this one.
    WriteLogLine(stdout,
                 "request " + std::to_string(id) + " from '" + in->peer + "': " +
                     std::to_string(sh.layers) + " layers x " + std::to_string(sh.tokens) +
                     " tokens -> " + path + "\n  " +
                     (st.ok() ? Thousands(st->wire_bytes) : std::string("?")) +
                     " bytes on the wire (" +
                     (st.ok() && st->wire_bytes
                          ? Format("%.2fx", double(raw) / double(st->wire_bytes))
                          : std::string("?")) +
                     " vs " + std::string(DTypeName(in->info.dtype)) + "), " +
                     Format("%.1f ms", seconds * 1000) + " to KV-ready; levels: " + levels);
    (void)(*receiver)->Release(id);
  }
  (*receiver)->Close();
  return 0;
}

const CommandRegistrar kRegister(
    "serve", "decode node: receive KV caches over ucx or tcp and write them as KV dumps",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<ServeArgs>();
      sub->add_option("--listen", a->listen, "HOST:PORT to listen on (port 0: any free port)");
      sub->add_option("--backend", a->backend, "ucx | tcp")->check(CLI::IsMember({"ucx", "tcp"}));
      sub->add_option("--key-file", a->key_file,
                      "pre-shared key: 64+ hex digits or >= 16 raw bytes");
      sub->add_flag("--insecure", a->insecure, "accept unauthenticated peers (no --key-file)");
      sub->add_option("--out-dir", a->out_dir, "where received KV dumps are written");
      sub->add_flag("--discard", a->discard,
                    "do not write the received KV (benchmarks: report bytes and time only)");
      sub->add_option("--profile", a->profile,
                      "calibration profile (.kvp) for requests with profile-based levels "
                      "(fraqtl); without it, or for a stream made with another one, the profile "
                      "is fetched from the sender and checked against its content hash");
      sub->add_flag("--no-fetch-profiles", a->no_fetch_profiles,
                    "refuse requests whose profile is not --profile instead of fetching it");
      sub->add_option("--count", a->count, "exit after this many requests (0: serve forever)");
      sub->add_option("--stall-timeout-ms", a->stall_timeout_ms, "fail a request idle this long");
      sub->add_option("--busy-poll-us", a->busy_poll_us, kBusyPollHelp);
      AddTlsOptions(sub, &a->tls, /*listening=*/true);
      sub->add_flag("--verbose,-v", a->verbose, "log connections, levels and completions");
      return [a] { return RunServe(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
