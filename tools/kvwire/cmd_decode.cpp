// kvwire decode: kvwire stream (.kvw) -> KV dump (safetensors).
#include <algorithm>
#include <cmath>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli_profile.h"
#include "cli_util.h"
#include "command.h"
#include "kvwire/kv_file.h"
#include "kvwire/stream.h"

namespace kvwire::cli {
namespace {

struct DecodeArgs {
  std::string in, out, profile, dtype, reference;
};

// Error of `got` against `ref` (same shape): relative RMSE of K, V and both, max |error|.
struct ErrorStats {
  double rel_k = 0, rel_v = 0, rel = 0, max_abs = 0;
};

Result<ErrorStats> Compare(const KvCache& ref, const KvCache& got) {
  const KvShape& s = ref.shape();
  KVWIRE_RETURN_ERROR_IF(!(s == got.shape()), kInvalidArgument,
                         Format("--reference has shape %u layers x %u tokens x %u x %u, the stream "
                                "%u x %u x %u x %u",
                                s.layers, s.tokens, s.kv_heads, s.head_dim, got.shape().layers,
                                got.shape().tokens, got.shape().kv_heads, got.shape().head_dim));
  std::vector<float> x(s.tensor_elements()), y(s.tensor_elements());
  double err[2] = {0, 0}, sig[2] = {0, 0};
  ErrorStats e;
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (int k = 0; k < 2; ++k) {
      const KvKind kind = k ? KvKind::kValue : KvKind::kKey;
      KVWIRE_RETURN_IF_ERROR(ref.view().ReadF32(l, kind, 0, s.tokens, x.data()));
      KVWIRE_RETURN_IF_ERROR(got.view().ReadF32(l, kind, 0, s.tokens, y.data()));
      for (size_t i = 0; i < x.size(); ++i) {
        const double d = double(y[i]) - double(x[i]);
        err[k] += d * d;
        sig[k] += double(x[i]) * double(x[i]);
        e.max_abs = std::max(e.max_abs, std::abs(d));
      }
    }
  }
  auto rel = [](double a, double b) { return b > 0 ? std::sqrt(a / b) : 0.0; };
  e.rel_k = rel(err[0], sig[0]);
  e.rel_v = rel(err[1], sig[1]);
  e.rel = rel(err[0] + err[1], sig[0] + sig[1]);
  return e;
}

int RunDecode(const DecodeArgs& a) {
  const char* cmd = "decode";
  auto prof = LoadProfileArg(a.profile);
  if (!prof.ok()) return FailStatus(cmd, prof.status());
  std::optional<KvCache> reference;
  if (!a.reference.empty()) {  // loaded first: a bad --reference fails before any work
    auto loaded = LoadKvDump(a.reference);
    if (!loaded.ok()) return FailStatus(cmd, loaded.status().WithContext("--reference"));
    reference = std::move(loaded).value();
  }
  auto bytes = ReadFileBytes(a.in);
  if (!bytes.ok()) return FailStatus(cmd, bytes.status());
  const double t0 = NowSeconds();
  auto reader = StreamReader::Open(*bytes, prof->get());
  if (!reader.ok()) return FailStatus(cmd, reader.status().WithContext(a.in));
  const StreamInfo& info = (*reader)->info();
  if (Status s = CheckStreamProfile(info.profile_id, *prof); !s.ok()) return FailStatus(cmd, s);

  DType dtype = info.dtype;
  if (!a.dtype.empty()) {
    auto parsed = ParseDType(a.dtype);
    if (!parsed.ok()) return FailStatus(cmd, parsed.status().WithContext("--dtype"));
    dtype = *parsed;
  }
  auto cache = KvCache::Create(info.shape, dtype);
  if (!cache.ok()) return FailStatus(cmd, cache.status().WithContext(a.in));
  // The dump starts at sequence token info.token_begin, so its token 0 sits at that position.
  cache->metadata() = info.metadata;
  cache->metadata().positions_start += info.token_begin;
  if (Status s = (*reader)->DecodeAll(cache->view()); !s.ok()) {
    return FailStatus(cmd, s.WithContext(a.in));
  }
  const double seconds = NowSeconds() - t0;
  std::optional<ErrorStats> error;
  if (reference) {
    auto e = Compare(*reference, *cache);
    if (!e.ok()) return FailStatus(cmd, e.status());
    error = *e;
  }
  if (Status s = SaveKvDump(a.out, *cache); !s.ok()) return FailStatus(cmd, s);

  const KvShape& shape = info.shape;
  std::cout << "wrote " << a.out << ": " << shape.layers << " layers x " << shape.tokens
            << " tokens x " << shape.kv_heads << " kv heads x " << shape.head_dim << " head_dim, "
            << DTypeName(dtype) << ", decoded from "
            << (info.levels.empty() ? std::string("?") : info.levels[0])
            << Format(" (%.4f bits/element) in %.3f s",
                      double(bytes->size()) * 8.0 / double(shape.elements()), seconds)
            << "\n";
  if (error) {
    std::cout << Format("  error vs %s: relative RMSE %.4g (K %.4g, V %.4g), max |error| %.4g\n",
                        a.reference.c_str(), error->rel, error->rel_k, error->rel_v,
                        error->max_abs);
  }
  return 0;
}

const CommandRegistrar kRegistrar(
    "decode", "Decompress a kvwire stream into a KV dump (safetensors)",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<DecodeArgs>();
      sub->footer(
          "Validates the whole stream (every length, chunk CRC32C and the trailer) and writes\n"
          "k.<layer>/v.<layer> [tokens, kv_heads, head_dim] plus the stream's metadata "
          "(positions,\n"
          "rope, model fingerprint). A malformed or truncated stream is an error, never a partial\n"
          "file. Example: kvwire decode --in x.kvw --out kv_decoded.safetensors --dtype f32");
      sub->add_option("--in", a->in, "Input stream (.kvw)")->required();
      sub->add_option("--out", a->out, "Output KV dump (.safetensors)")->required();
      sub->add_option("--profile", a->profile,
                      "Calibration profile (.kvp) the stream was encoded with");
      sub->add_option(
          "--dtype", a->dtype,
          "Output dtype f16, bf16 or f32 (default: the dtype the stream was encoded from)");
      sub->add_option("--reference", a->reference,
                      "Original KV dump: also print the decoded error against it (relative RMSE = "
                      "sqrt(sum err^2 / sum x^2) for K, V and both; max |error|)");
      return [a] { return RunDecode(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
