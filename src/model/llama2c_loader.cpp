// llama2.c legacy checkpoints (version 0): a 7 x int32 header, then float32 weights in run.c's
// order. A negative vocab size means the classifier is stored separately (not shared).
#include <cstring>

#include "model/model_impl.h"

namespace kvwire::model {
namespace {

constexpr size_t kHeaderBytes = 7 * 4;

}  // namespace

Status ValidateConfig(const ModelConfig& c) {
  auto range = [](const char* what, uint64_t v, uint64_t max) -> Status {
    KVWIRE_RETURN_ERROR_IF(v == 0 || v > max, kCorrupt,
                           std::string(what) + " = " + std::to_string(v) + " out of range [1, " +
                               std::to_string(max) + "]");
    return Status::Ok();
  };
  KVWIRE_RETURN_IF_ERROR(range("dim", c.dim, 1u << 16));
  KVWIRE_RETURN_IF_ERROR(range("hidden_dim", c.hidden_dim, 1u << 18));
  KVWIRE_RETURN_IF_ERROR(range("layers", c.layers, kMaxLayers));
  KVWIRE_RETURN_IF_ERROR(range("heads", c.heads, kMaxKvHeads));
  KVWIRE_RETURN_IF_ERROR(range("kv_heads", c.kv_heads, kMaxKvHeads));
  KVWIRE_RETURN_IF_ERROR(range("head_dim", c.head_dim, kMaxHeadDim));
  KVWIRE_RETURN_IF_ERROR(range("vocab_size", c.vocab_size, 1u << 24));
  KVWIRE_RETURN_ERROR_IF(c.heads % c.kv_heads != 0, kCorrupt,
                         "heads " + std::to_string(c.heads) + " not a multiple of kv_heads " +
                             std::to_string(c.kv_heads));
  KVWIRE_RETURN_ERROR_IF(
      c.rope_dim == 0 || c.rope_dim > c.head_dim || c.rope_dim % 2 != 0, kCorrupt,
      "rope dimension " + std::to_string(c.rope_dim) +
          " must be even and in [2, head_dim = " + std::to_string(c.head_dim) + "]");
  KVWIRE_RETURN_ERROR_IF(!(c.rope_theta > 0) || !(c.rms_eps >= 0), kCorrupt,
                         "rope theta must be > 0 and rms epsilon >= 0");
  return Status::Ok();
}

Result<LoadedModel> LoadLlama2cModel(std::span<const uint8_t> bytes) {
  KVWIRE_RETURN_ERROR_IF(bytes.size() < kHeaderBytes, kTruncated,
                         "llama2.c model: " + std::to_string(bytes.size()) +
                             " bytes, shorter than the 28-byte header");
  int32_t h[7];
  std::memcpy(h, bytes.data(), kHeaderBytes);
  for (int i = 0; i < 7; ++i) {
    KVWIRE_RETURN_ERROR_IF(i != 5 && h[i] <= 0, kCorrupt,
                           "llama2.c model: header field " + std::to_string(i) + " = " +
                               std::to_string(h[i]) + " (expected > 0); not a llama2.c file?");
  }
  KVWIRE_RETURN_ERROR_IF(h[5] == 0 || h[5] == INT32_MIN, kCorrupt,
                         "llama2.c model: vocab size is 0");
  LoadedModel m;
  ModelConfig& c = m.config;
  c.format = "llama2c";
  c.architecture = "llama";
  c.dim = static_cast<uint32_t>(h[0]);
  c.hidden_dim = static_cast<uint32_t>(h[1]);
  c.layers = static_cast<uint32_t>(h[2]);
  c.heads = static_cast<uint32_t>(h[3]);
  c.kv_heads = static_cast<uint32_t>(h[4]);
  c.tied_output = h[5] > 0;
  c.vocab_size = static_cast<uint32_t>(h[5] > 0 ? h[5] : -h[5]);
  c.max_seq_len = static_cast<uint32_t>(h[6]);
  KVWIRE_RETURN_ERROR_IF(c.heads == 0 || c.dim % c.heads != 0, kCorrupt,
                         "llama2.c model: dim " + std::to_string(c.dim) +
                             " not a multiple of heads " + std::to_string(c.heads));
  c.head_dim = c.dim / c.heads;
  c.rope_dim = c.head_dim;
  c.rope_theta = 10000.0;
  c.rope_style = RopeStyle::kInterleaved;
  c.rms_eps = 1e-5f;
  KVWIRE_RETURN_ERROR_IF(c.max_seq_len > (1u << 24), kCorrupt,
                         "llama2.c model: seq_len " + std::to_string(c.max_seq_len) + " too large");
  KVWIRE_RETURN_IF_ERROR(ValidateConfig(c).WithContext("llama2.c model"));

  // Every count below is bounded by the validated config, so 64-bit products cannot overflow.
  const uint64_t dim = c.dim, hid = c.hidden_dim, L = c.layers, V = c.vocab_size;
  const uint64_t qd = uint64_t{c.heads} * c.head_dim, kvd = uint64_t{c.kv_heads} * c.head_dim;
  const uint64_t rope_table = uint64_t{c.max_seq_len} * c.head_dim / 2;
  const uint64_t floats = V * dim + L * dim + L * qd * dim + 2 * L * kvd * dim + L * dim * qd +
                          L * dim + 3 * L * hid * dim + dim + 2 * rope_table +
                          (c.tied_output ? 0 : V * dim);
  const uint64_t expected = kHeaderBytes + 4 * floats;
  if (bytes.size() != expected) {
    return Status(bytes.size() < expected ? StatusCode::kTruncated : StatusCode::kCorrupt,
                  "llama2.c model: file has " + std::to_string(bytes.size()) +
                      " bytes, the header (" + c.Summary() + ") implies " +
                      std::to_string(expected));
  }

  const uint8_t* p = bytes.data() + kHeaderBytes;
  auto take = [&](uint64_t count) {
    std::vector<float> v(count);
    std::memcpy(v.data(), p, count * 4);
    p += count * 4;
    return v;
  };
  ModelWeights& w = m.weights;
  w.layers.resize(c.layers);
  w.embedding = take(V * dim);
  for (auto& l : w.layers) l.attn_norm = take(dim);
  for (auto& l : w.layers) l.wq = take(qd * dim);
  for (auto& l : w.layers) l.wk = take(kvd * dim);
  for (auto& l : w.layers) l.wv = take(kvd * dim);
  for (auto& l : w.layers) l.wo = take(dim * qd);
  for (auto& l : w.layers) l.ffn_norm = take(dim);
  for (auto& l : w.layers) l.w1 = take(hid * dim);
  for (auto& l : w.layers) l.w2 = take(dim * hid);
  for (auto& l : w.layers) l.w3 = take(hid * dim);
  w.final_norm = take(dim);
  p += 2 * rope_table * 4;  // precomputed RoPE tables of old exporters; recomputed as run.c does
  if (!c.tied_output) w.output = take(V * dim);
  return m;
}

}  // namespace kvwire::model
