// GGUF models of the LLaMA family ("llama": Llama 1-3, SmolLM, TinyLlama, Mistral; "qwen2"):
// configuration from metadata, weights dequantized to float32, tokenizer from the vocabulary.
#include <cmath>

#include "model/gguf_reader.h"
#include "model/model_impl.h"
#include "model/tokenizer_data.h"

namespace kvwire::model {
namespace {

struct Meta {
  const GgufFile& f;
  const std::string arch;

  Result<uint32_t> U32(const std::string& key, bool required, uint32_t fallback) const {
    const GgufValue* v = f.Find(key);
    if (!v) {
      KVWIRE_RETURN_ERROR_IF(required, kCorrupt, "GGUF: missing metadata '" + key + "'");
      return fallback;
    }
    KVWIRE_RETURN_ERROR_IF(v->type == GgufType::kArray, kUnsupported,
                           "GGUF: '" + key + "' is an array (per-layer values are not supported)");
    KVWIRE_RETURN_ERROR_IF(!v->is_integer() || v->integer < 0 || v->integer > UINT32_MAX, kCorrupt,
                           "GGUF: '" + key + "' must be a non-negative 32-bit integer");
    return static_cast<uint32_t>(v->integer);
  }
  Result<double> Number(const std::string& key, double fallback) const {
    const GgufValue* v = f.Find(key);
    if (!v) return fallback;
    KVWIRE_RETURN_ERROR_IF(!v->is_number() || !std::isfinite(v->number), kCorrupt,
                           "GGUF: '" + key + "' must be a finite number");
    return v->number;
  }
  std::string String(const std::string& key) const {
    const GgufValue* v = f.Find(key);
    return v && v->type == GgufType::kString ? v->str : std::string();
  }
  bool Bool(const std::string& key, bool fallback) const {
    const GgufValue* v = f.Find(key);
    return v && v->is_number() ? v->number != 0 : fallback;
  }
};

// Loads tensor `name` as float32 after checking its shape: `dims` in GGUF order (ne[0] first,
// i.e. [in, out] for a matrix stored row-major [out][in]).
Status LoadTensor(std::span<const uint8_t> bytes, const GgufFile& f, const std::string& name,
                  std::initializer_list<uint64_t> dims, bool required, std::vector<float>* out) {
  const GgufTensor* t = f.FindTensor(name);
  if (!t) {
    KVWIRE_RETURN_ERROR_IF(required, kCorrupt, "GGUF: missing tensor '" + name + "'");
    return Status::Ok();
  }
  std::vector<uint64_t> want(dims);
  if (t->dims != want) {
    auto fmt = [](const std::vector<uint64_t>& d) {
      std::string s = "[";
      for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
      return s + "]";
    };
    return Status(StatusCode::kCorrupt, "GGUF: tensor '" + name + "' has shape " + fmt(t->dims) +
                                            ", the metadata implies " + fmt(want));
  }
  KVWIRE_ASSIGN_OR_RETURN(*out, DequantizeGgufTensor(bytes, *t));
  return Status::Ok();
}

Result<Tokenizer> GgufTokenizer(const Meta& m, uint32_t vocab_size, std::string* note) {
  const GgufValue* tokens = m.f.Find("tokenizer.ggml.tokens");
  const std::string model = m.String("tokenizer.ggml.model");
  if (!tokens) {
    *note = "the GGUF file has no tokenizer.ggml.tokens";
    return Tokenizer();
  }
  KVWIRE_RETURN_ERROR_IF(
      tokens->type != GgufType::kArray || tokens->array_type != GgufType::kString, kCorrupt,
      "GGUF: tokenizer.ggml.tokens must be an array of strings");
  const size_t n = tokens->strings.size();
  KVWIRE_RETURN_ERROR_IF(n == 0 || n > vocab_size, kCorrupt,
                         "GGUF: tokenizer has " + std::to_string(n) + " tokens, the model " +
                             std::to_string(vocab_size) + " embedding rows");
  auto d = std::make_shared<Tokenizer::Data>();
  d->pieces = tokens->strings;
  if (const GgufValue* s = m.f.Find("tokenizer.ggml.scores")) {
    KVWIRE_RETURN_ERROR_IF(s->numbers.size() != n, kCorrupt,
                           "GGUF: tokenizer.ggml.scores has " + std::to_string(s->numbers.size()) +
                               " entries for " + std::to_string(n) + " tokens");
    d->scores.assign(s->numbers.begin(), s->numbers.end());
  }
  d->control.assign(n, 0);
  if (const GgufValue* t = m.f.Find("tokenizer.ggml.token_type")) {
    KVWIRE_RETURN_ERROR_IF(t->numbers.size() != n, kCorrupt,
                           "GGUF: tokenizer.ggml.token_type has " +
                               std::to_string(t->numbers.size()) + " entries for " +
                               std::to_string(n) + " tokens");
    for (size_t i = 0; i < n; ++i) {
      const double type = t->numbers[i];  // 2 unknown, 3 control, 5 unused
      d->control[i] = type == 2 || type == 3 || type == 5;
    }
  }
  auto id = [&](const char* key) -> Result<int32_t> {
    const GgufValue* v = m.f.Find(key);
    if (!v) return -1;
    KVWIRE_RETURN_ERROR_IF(
        !v->is_integer() || v->integer < 0 || static_cast<uint64_t>(v->integer) >= n, kCorrupt,
        std::string("GGUF: ") + key + " is not a token id");
    return static_cast<int32_t>(v->integer);
  };
  KVWIRE_ASSIGN_OR_RETURN(d->bos, id("tokenizer.ggml.bos_token_id"));
  KVWIRE_ASSIGN_OR_RETURN(d->eos, id("tokenizer.ggml.eos_token_id"));
  KVWIRE_ASSIGN_OR_RETURN(d->unk, id("tokenizer.ggml.unknown_token_id"));
  if (model == "llama") {
    d->kind = TokenizerKind::kScoreBpe;
    KVWIRE_RETURN_ERROR_IF(d->scores.size() != n, kCorrupt,
                           "GGUF: a SentencePiece tokenizer needs tokenizer.ggml.scores");
    d->space_marker = "\xe2\x96\x81";
    d->dummy_prefix = m.Bool("tokenizer.ggml.add_space_prefix", true);
    d->add_bos = m.Bool("tokenizer.ggml.add_bos_token", true);
  } else if (model == "gpt2") {
    d->kind = TokenizerKind::kMergeBpe;
    if (const GgufValue* mg = m.f.Find("tokenizer.ggml.merges")) d->merges = mg->strings;
    d->pre = m.String("tokenizer.ggml.pre");
    d->add_bos = m.Bool("tokenizer.ggml.add_bos_token", false);
  } else {
    *note = "tokenizer model '" + model + "' is not supported (llama and gpt2 are)";
    return Tokenizer();
  }
  FinalizeTokenizer(d.get());
  return Tokenizer(std::move(d));
}

}  // namespace

bool LooksLikeGguf(std::span<const uint8_t> bytes) { return HasGgufMagic(bytes); }

Result<LoadedModel> LoadGgufModel(std::span<const uint8_t> bytes) {
  KVWIRE_ASSIGN_OR_RETURN(GgufFile f, ParseGguf(bytes));
  const GgufValue* arch_v = f.Find("general.architecture");
  KVWIRE_RETURN_ERROR_IF(!arch_v || arch_v->type != GgufType::kString, kCorrupt,
                         "GGUF: missing general.architecture");
  const std::string arch = arch_v->str;
  KVWIRE_RETURN_ERROR_IF(arch != "llama" && arch != "qwen2", kUnsupported,
                         "GGUF: architecture '" + arch + "' is not supported (llama, qwen2 are)");
  const Meta m{f, arch};
  LoadedModel lm;
  ModelConfig& c = lm.config;
  c.format = "gguf";
  c.architecture = arch;
  c.name = m.String("general.name");
  const std::string a = arch + ".";
  KVWIRE_ASSIGN_OR_RETURN(c.dim, m.U32(a + "embedding_length", true, 0));
  KVWIRE_ASSIGN_OR_RETURN(c.hidden_dim, m.U32(a + "feed_forward_length", true, 0));
  KVWIRE_ASSIGN_OR_RETURN(c.layers, m.U32(a + "block_count", true, 0));
  KVWIRE_ASSIGN_OR_RETURN(c.heads, m.U32(a + "attention.head_count", true, 0));
  KVWIRE_ASSIGN_OR_RETURN(c.kv_heads, m.U32(a + "attention.head_count_kv", false, c.heads));
  KVWIRE_ASSIGN_OR_RETURN(c.max_seq_len, m.U32(a + "context_length", false, 0));
  KVWIRE_RETURN_ERROR_IF(c.heads == 0, kCorrupt, "GGUF: attention.head_count is 0");
  KVWIRE_ASSIGN_OR_RETURN(c.head_dim, m.U32(a + "attention.key_length", false, c.dim / c.heads));
  KVWIRE_ASSIGN_OR_RETURN(uint32_t v_len, m.U32(a + "attention.value_length", false, c.head_dim));
  KVWIRE_RETURN_ERROR_IF(v_len != c.head_dim, kUnsupported,
                         "GGUF: key length " + std::to_string(c.head_dim) + " != value length " +
                             std::to_string(v_len));
  KVWIRE_ASSIGN_OR_RETURN(c.rope_dim, m.U32(a + "rope.dimension_count", false, c.head_dim));
  KVWIRE_ASSIGN_OR_RETURN(c.rope_theta, m.Number(a + "rope.freq_base", 10000.0));
  KVWIRE_ASSIGN_OR_RETURN(double eps, m.Number(a + "attention.layer_norm_rms_epsilon", 1e-5));
  c.rms_eps = static_cast<float>(eps);
  c.rope_style = arch == "qwen2" ? RopeStyle::kNeox : RopeStyle::kInterleaved;

  const std::string scaling = m.String(a + "rope.scaling.type");
  double linear_scale = 1.0;
  if (scaling == "linear") {
    KVWIRE_ASSIGN_OR_RETURN(linear_scale, m.Number(a + "rope.scaling.factor", 1.0));
    KVWIRE_RETURN_ERROR_IF(!(linear_scale > 0), kCorrupt, "GGUF: rope.scaling.factor must be > 0");
  } else {
    KVWIRE_RETURN_ERROR_IF(!scaling.empty() && scaling != "none", kUnsupported,
                           "GGUF: rope scaling '" + scaling + "' is not supported (linear is)");
  }

  const GgufTensor* emb = f.FindTensor("token_embd.weight");
  KVWIRE_RETURN_ERROR_IF(!emb || emb->dims.size() != 2, kCorrupt,
                         "GGUF: missing or non-2-D tensor 'token_embd.weight'");
  KVWIRE_RETURN_ERROR_IF(emb->dims[1] > (1u << 24), kCorrupt, "GGUF: vocabulary too large");
  c.vocab_size = static_cast<uint32_t>(emb->dims[1]);
  KVWIRE_RETURN_IF_ERROR(ValidateConfig(c).WithContext("GGUF"));
  KVWIRE_RETURN_ERROR_IF(f.FindTensor("blk.0.attn_qkv.weight"), kUnsupported,
                         "GGUF: fused attn_qkv tensors are not supported");

  const uint64_t dim = c.dim, hid = c.hidden_dim, V = c.vocab_size;
  const uint64_t qd = uint64_t{c.heads} * c.head_dim, kvd = uint64_t{c.kv_heads} * c.head_dim;
  ModelWeights& w = lm.weights;
  KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, "token_embd.weight", {dim, V}, true, &w.embedding));
  KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, "output_norm.weight", {dim}, true, &w.final_norm));
  KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, "output.weight", {dim, V}, false, &w.output));
  c.tied_output = w.output.empty();
  KVWIRE_RETURN_IF_ERROR(
      LoadTensor(bytes, f, "rope_freqs.weight", {c.rope_dim / 2}, false, &w.rope_freq_factors));
  c.has_rope_freq_factors = !w.rope_freq_factors.empty();
  if (linear_scale != 1.0) {
    // Linear scaling divides positions by the factor: the same as dividing every frequency.
    if (w.rope_freq_factors.empty()) w.rope_freq_factors.assign(c.rope_dim / 2, 1.0f);
    for (float& x : w.rope_freq_factors) x *= static_cast<float>(linear_scale);
  }
  w.layers.resize(c.layers);
  for (uint32_t l = 0; l < c.layers; ++l) {
    LayerWeights& L = w.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "attn_norm.weight", {dim}, true, &L.attn_norm));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "attn_q.weight", {dim, qd}, true, &L.wq));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "attn_k.weight", {dim, kvd}, true, &L.wk));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "attn_v.weight", {dim, kvd}, true, &L.wv));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "attn_output.weight", {qd, dim}, true, &L.wo));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "attn_q.bias", {qd}, false, &L.bq));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "attn_k.bias", {kvd}, false, &L.bk));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "attn_v.bias", {kvd}, false, &L.bv));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "ffn_norm.weight", {dim}, true, &L.ffn_norm));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "ffn_gate.weight", {dim, hid}, true, &L.w1));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "ffn_up.weight", {dim, hid}, true, &L.w3));
    KVWIRE_RETURN_IF_ERROR(LoadTensor(bytes, f, p + "ffn_down.weight", {hid, dim}, true, &L.w2));
    if (!L.bq.empty() || !L.bk.empty() || !L.bv.empty()) c.qkv_bias = true;
  }
  KVWIRE_ASSIGN_OR_RETURN(lm.tokenizer, GgufTokenizer(m, c.vocab_size, &lm.tokenizer_note));
  return lm;
}

}  // namespace kvwire::model
