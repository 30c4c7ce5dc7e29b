// Internal representation of a loaded model, shared by the loaders and the forward pass.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvwire/model.h"
#include "model/thread_pool.h"

namespace kvwire::model {

/// Weights as the file stores them: every matrix row-major [out, in] (PyTorch nn.Linear).
struct LayerWeights {
  std::vector<float> attn_norm;   // [dim]
  std::vector<float> wq;          // [heads * head_dim, dim]
  std::vector<float> wk, wv;      // [kv_heads * head_dim, dim]
  std::vector<float> wo;          // [dim, heads * head_dim]
  std::vector<float> bq, bk, bv;  // biases (empty unless config.qkv_bias)
  std::vector<float> ffn_norm;    // [dim]
  std::vector<float> w1, w3;      // gate, up: [hidden_dim, dim]
  std::vector<float> w2;          // down: [dim, hidden_dim]
};

struct ModelWeights {
  std::vector<float> embedding;  // [vocab, dim]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;         // [dim]
  std::vector<float> output;             // [vocab, dim]; empty when tied to the embedding
  std::vector<float> rope_freq_factors;  // [rope_dim / 2] divisors of the frequencies, or empty
};

/// What a loader returns.
struct LoadedModel {
  ModelConfig config;
  ModelWeights weights;
  Tokenizer tokenizer;         // size() == 0 when the file carries none
  std::string tokenizer_note;  // why there is no usable tokenizer, if so
};

/// Checks the ranges and divisibility of a configuration read from a file.
Status ValidateConfig(const ModelConfig& c);

bool LooksLikeGguf(std::span<const uint8_t> bytes);
Result<LoadedModel> LoadLlama2cModel(std::span<const uint8_t> bytes);
Result<LoadedModel> LoadGgufModel(std::span<const uint8_t> bytes);

}  // namespace kvwire::model

namespace kvwire {

/// The prepared model: matrices transposed to [in, out] for MatMul, Q/K/V and gate/up fused.
struct Model::Impl {
  struct Layer {
    std::vector<float> attn_norm;
    std::vector<float> wqkv_t;  // [dim, (heads + 2 kv_heads) * head_dim]
    std::vector<float> bqkv;    // [(heads + 2 kv_heads) * head_dim] or empty
    std::vector<float> wo_t;    // [heads * head_dim, dim]
    std::vector<float> ffn_norm;
    std::vector<float> w13_t;  // [dim, 2 hidden_dim]: gate columns then up columns
    std::vector<float> w2_t;   // [hidden_dim, dim]
  };
  ModelConfig config;
  std::string fingerprint;
  Tokenizer tokenizer;
  std::string tokenizer_note;
  std::vector<float> embedding;  // [vocab, dim]; empty when tied (rows read from output_t)
  std::vector<float> output_t;   // [dim, vocab]
  std::vector<float> final_norm;
  std::vector<Layer> layers;
  std::vector<float> inv_freq;  // [rope_dim / 2] RoPE angle per position
  std::unique_ptr<model::ThreadPool> pool;
};

}  // namespace kvwire
