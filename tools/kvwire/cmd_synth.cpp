// kvwire synth: writes a synthetic KV dump (safetensors) for demos, tests and benchmarks.
#include <iostream>
#include <string>

#include "cli_util.h"
#include "command.h"
#include "kvwire/kv_file.h"
#include "synthetic_kv.h"

namespace kvwire::cli {
namespace {

struct SynthArgs {
  std::string out;
  uint32_t layers = 0, kv_heads = 0, head_dim = 0, tokens = 0, q_heads = 0;
  uint64_t seed = 1;
  std::string dtype = "f16";
  double rope_theta = 10000.0;
  int64_t positions_start = 0;
  int threads = 1;
};

int RunSynth(const SynthArgs& a) {
  auto dtype = ParseDType(a.dtype);
  if (!dtype.ok()) return FailStatus("synth", dtype.status());
  SyntheticKvOptions o;
  o.shape = {a.layers, a.tokens, a.kv_heads, a.head_dim};
  o.dtype = *dtype;
  o.seed = a.seed;
  o.q_heads = a.q_heads;
  o.rope_theta = a.rope_theta;
  o.positions_start = a.positions_start;
  o.threads = a.threads;
  auto cache = MakeSyntheticKv(o);
  if (!cache.ok()) return FailStatus("synth", cache.status());
  if (Status s = SaveKvDump(a.out, *cache); !s.ok()) return FailStatus("synth", s);
  const uint64_t bytes = cache->shape().elements() * DTypeSize(o.dtype);
  std::cout << "wrote " << a.out << ": SYNTHETIC KV (not from a model), " << a.layers
            << " layers x " << a.tokens << " tokens x " << a.kv_heads << " kv heads x "
            << a.head_dim << " head_dim, " << DTypeName(o.dtype) << ", K+V " << Thousands(bytes)
            << " bytes"
            << (a.q_heads ? ", with queries (" + std::to_string(a.q_heads) + " heads)" : "")
            << ", seed " << a.seed << "\n";
  return 0;
}

const CommandRegistrar kRegistrar(
    "synth", "Write a synthetic KV dump (safetensors) with realistic structure",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<SynthArgs>();
      sub->footer(
          "The data is SYNTHETIC, not captured from a model: K has a mean, a low-rank part that\n"
          "drifts over tokens, a few large outlier channels (in the slowly rotating RoPE pairs)\n"
          "and is rotated by interleaved RoPE at each position; V is close to Gaussian with\n"
          "per-channel scales. Good for exercising codecs, sizes and speed; its errors say\n"
          "nothing about a model's accuracy (use `kvwire capture` / `kvwire eval` for that).\n"
          "The metadata records model_fingerprint = synthetic-v1:seed=<S>. Deterministic in\n"
          "(shape, dtype, seed, q-heads) for any --threads.\n\n"
          "Example: kvwire synth --out kv.safetensors --layers 6 --kv-heads 2 --head-dim 64 "
          "--tokens 2048");
      sub->add_option("--out", a->out, "Output KV dump (.safetensors)")->required();
      sub->add_option("--layers", a->layers, "Layers")
          ->required()
          ->check(CLI::Range(1u, kMaxLayers));
      sub->add_option("--kv-heads", a->kv_heads, "KV heads per layer")
          ->required()
          ->check(CLI::Range(1u, kMaxKvHeads));
      sub->add_option("--head-dim", a->head_dim, "Head dimension")
          ->required()
          ->check(CLI::Range(1u, kMaxHeadDim));
      sub->add_option("--tokens", a->tokens, "Tokens")
          ->required()
          ->check(CLI::Range(1u, kMaxTokens));
      sub->add_option("--seed", a->seed, "Random seed")->capture_default_str();
      sub->add_option("--dtype", a->dtype, "Tensor dtype: f16, bf16 or f32")->capture_default_str();
      sub->add_option(
             "--q-heads", a->q_heads,
             "Also write queries q.<layer> with this many heads (a multiple of --kv-heads); "
             "0 = none")
          ->capture_default_str();
      sub->add_option("--rope-theta", a->rope_theta, "RoPE base applied to K (and Q)")
          ->capture_default_str();
      sub->add_option("--positions-start", a->positions_start, "RoPE position of token 0")
          ->capture_default_str();
      sub->add_option("--threads", a->threads, "Generation threads (output does not depend on it)")
          ->capture_default_str()
          ->check(CLI::Range(1, 1024));
      return [a] { return RunSynth(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
