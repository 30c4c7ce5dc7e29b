// Checks shared by the model-file fuzz targets (fuzz_gguf, fuzz_llama2c_model) and the
// tokenizer target: what a loader returned must be consistent with its configuration, a
// tokenizer must only ever produce ids of its vocabulary, and a model that loads must prepare
// and run one token without crashing. A violated invariant aborts (a crash for libFuzzer, a
// failed replay for ctest).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/alloc_bound.h"
#include "kvwire/model.h"
#include "model/model_impl.h"

namespace kvwire::fuzz {

[[noreturn]] inline void ModelFail(const char* target, const char* what,
                                   const std::string& detail = "") {
  std::fprintf(stderr, "%s: invariant violated: %s %s\n", target, what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

// Encodes a few texts (fixed ones and `extra`, e.g. bytes of the input) and decodes the ids:
// ids stay inside the vocabulary; a byte-level tokenizer round-trips exactly.
inline void CheckTokenizer(const char* target, const Tokenizer& tok, std::string_view extra) {
  if (tok.size() == 0) return;
  for (int32_t i : {0, 1, static_cast<int32_t>(tok.size()) - 1}) (void)tok.Piece(i);
  if (tok.bos_id() >= static_cast<int32_t>(tok.size()) ||
      tok.eos_id() >= static_cast<int32_t>(tok.size())) {
    ModelFail(target, "BOS/EOS id outside the vocabulary");
  }
  const std::string_view texts[] = {"In the beginning God created the heaven and the earth.",
                                    " a  b\n\n'll 's 123 4567 \xe2\x96\x81 caf\xc3\xa9 \xf0\x9f\x98\x80",
                                    "", extra};
  for (std::string_view text : texts) {
    for (bool bos : {false, true}) {
      auto ids = tok.Encode(text, bos);
      auto again = tok.Encode(text, bos);
      if (ids.ok() != again.ok() || (ids.ok() && *ids != *again)) {
        ModelFail(target, "Encode is not deterministic");
      }
      if (!ids.ok()) continue;
      for (int32_t id : *ids) {
        if (id < 0 || static_cast<uint32_t>(id) >= tok.size()) {
          ModelFail(target, "Encode produced an id outside the vocabulary", std::to_string(id));
        }
      }
      const std::string decoded = tok.Decode(*ids);
      if (tok.kind() == TokenizerKind::kBytes && decoded != text) {
        ModelFail(target, "a byte-level tokenizer does not round-trip");
      }
    }
  }
  // Ids outside the vocabulary decode to nothing rather than crash.
  const int32_t odd[] = {-1, static_cast<int32_t>(tok.size()), 0};
  (void)tok.Decode(odd);
}

// The loader's weights have the sizes its configuration implies.
inline void CheckLoadedModel(const char* target, const model::LoadedModel& lm) {
  const ModelConfig& c = lm.config;
  if (Status s = model::ValidateConfig(c); !s.ok()) {
    ModelFail(target, "loaded config does not validate", s.ToString());
  }
  const uint64_t dim = c.dim, hid = c.hidden_dim, V = c.vocab_size;
  const uint64_t qd = uint64_t{c.heads} * c.head_dim, kvd = uint64_t{c.kv_heads} * c.head_dim;
  const model::ModelWeights& w = lm.weights;
  auto want = [&](const std::vector<float>& v, uint64_t n, const char* what, bool optional) {
    if (v.size() != n && !(optional && v.empty())) {
      ModelFail(target, "weight size differs from the config", std::string(what) + ": " +
                                                                  std::to_string(v.size()) +
                                                                  " != " + std::to_string(n));
    }
  };
  want(w.embedding, V * dim, "embedding", false);
  want(w.final_norm, dim, "final_norm", false);
  if (c.tied_output != w.output.empty()) ModelFail(target, "tied_output disagrees with output");
  want(w.output, V * dim, "output", true);
  want(w.rope_freq_factors, c.rope_dim / 2, "rope_freq_factors", true);
  if (w.layers.size() != c.layers) ModelFail(target, "layer count");
  for (const model::LayerWeights& L : w.layers) {
    want(L.attn_norm, dim, "attn_norm", false);
    want(L.wq, qd * dim, "wq", false);
    want(L.wk, kvd * dim, "wk", false);
    want(L.wv, kvd * dim, "wv", false);
    want(L.wo, dim * qd, "wo", false);
    want(L.bq, qd, "bq", true);
    want(L.bk, kvd, "bk", true);
    want(L.bv, kvd, "bv", true);
    want(L.ffn_norm, dim, "ffn_norm", false);
    want(L.w1, hid * dim, "w1", false);
    want(L.w2, dim * hid, "w2", false);
    want(L.w3, hid * dim, "w3", false);
    if (!c.qkv_bias && (!L.bq.empty() || !L.bk.empty() || !L.bv.empty())) {
      ModelFail(target, "biases without qkv_bias");
    }
  }
  if (lm.tokenizer.size() > c.vocab_size) ModelFail(target, "tokenizer larger than the vocab");
}

// The public loader on the same bytes: it must agree with the internal loader's configuration,
// and a model that loads runs one token.
inline void CheckModelFromBytes(const char* target, std::span<const uint8_t> bytes,
                                const model::LoadedModel& lm) {
  ModelOptions options;
  options.threads = 1;
  options.skip_fingerprint = true;
  Result<std::unique_ptr<Model>> m = [&] {
    AllocBound bound(target, bytes.size());
    return Model::LoadFromBytes(bytes, "fuzz", options);
  }();
  if (!m.ok()) {
    // Prepare refuses non-finite weights and frequency factors; nothing else.
    if (m.status().code() != StatusCode::kCorrupt) {
      ModelFail(target, "Model::LoadFromBytes refuses what the loader accepts",
                m.status().ToString());
    }
    return;
  }
  const ModelConfig& a = (*m)->config();
  const ModelConfig& b = lm.config;
  if (a.dim != b.dim || a.hidden_dim != b.hidden_dim || a.layers != b.layers ||
      a.heads != b.heads || a.kv_heads != b.kv_heads || a.head_dim != b.head_dim ||
      a.vocab_size != b.vocab_size || a.rope_dim != b.rope_dim ||
      a.tied_output != b.tied_output || a.qkv_bias != b.qkv_bias) {
    ModelFail(target, "Model::LoadFromBytes and the loader disagree on the config");
  }
  if ((*m)->tokenizer().size() != lm.tokenizer.size()) ModelFail(target, "tokenizer size");
  auto seq = (*m)->NewSequence(2);
  if (!seq.ok()) ModelFail(target, "NewSequence(2)", seq.status().ToString());
  const int32_t tokens[] = {0, static_cast<int32_t>(b.vocab_size - 1)};
  std::vector<float> logits;
  Status s = (*m)->Forward(&*seq, tokens, {}, &logits);
  if (!s.ok()) ModelFail(target, "Forward of two tokens", s.ToString());
  if (logits.size() != 2 * size_t{b.vocab_size}) ModelFail(target, "logits size");
}

}  // namespace kvwire::fuzz
