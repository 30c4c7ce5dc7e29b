// A synthetic KV cache with the structure real ones have, for demos, tests and benchmarks.
//
// It is NOT captured from a model: accuracy numbers measured on it say nothing about a model's
// KL or perplexity. It only gives codecs data with realistic statistics:
//   K (post-RoPE, interleaved pairs, theta from the options): per (layer, head) a mean, a
//     low-rank part (8 directions, decaying amplitudes, coefficients that drift slowly over
//     tokens), a few persistent large-magnitude outlier channels in the low-frequency RoPE
//     pairs, and a little isotropic noise; then rotated by RoPE at each token's position.
//   V: close to Gaussian, per-channel scales that vary ~2x, a weak low-rank part.
//   Q (optional, q_heads > 0): each query head mixes the K directions of its kv head (GQA
//     groups of q_heads / kv_heads), plus noise, with the same RoPE.
// Output is deterministic for (shape, dtype, seed, q_heads) whatever the thread count.
#pragma once

#include <cstdint>

#include "kvwire/kv_view.h"
#include "kvwire/status.h"

namespace kvwire::cli {

struct SyntheticKvOptions {
  KvShape shape;
  DType dtype = DType::kF16;
  uint64_t seed = 1;
  uint32_t q_heads = 0;  // 0: no queries; else a multiple of shape.kv_heads
  double rope_theta = 10000.0;
  int64_t positions_start = 0;
  int threads = 1;  // generation threads (result does not depend on it)
};

/// Generates the cache; metadata says rope "interleaved", the theta, positions_start and a
/// model fingerprint "synthetic-v1:seed=<S>" so nobody mistakes it for a model capture.
Result<KvCache> MakeSyntheticKv(const SyntheticKvOptions& options);

}  // namespace kvwire::cli
