// Model loading and preparation (format detection, validation, weight layout for MatMul).
#include <cmath>
#include <filesystem>
#include <thread>

#include "model/kernels.h"
#include "model/mapped_file.h"
#include "model/model_impl.h"

namespace kvwire {
namespace {

using model::LoadedModel;

Status CheckFinite(const std::vector<float>& v, const std::string& what) {
  for (size_t i = 0; i < v.size(); ++i) {
    KVWIRE_RETURN_ERROR_IF(
        !std::isfinite(v[i]), kCorrupt,
        "model weight " + what + " holds a non-finite value at element " + std::to_string(i));
  }
  return Status::Ok();
}

// [out, in] -> [in, out], appended as columns [col0, col0 + out) of a [in, total] matrix.
void PlaceTransposed(const std::vector<float>& w, size_t out, size_t in, size_t total, size_t col0,
                     std::vector<float>* dst) {
  std::vector<float> t(in * out);
  model::Transpose(w.data(), out, in, t.data());
  for (size_t r = 0; r < in; ++r) {
    std::copy(t.begin() + r * out, t.begin() + (r + 1) * out, dst->begin() + r * total + col0);
  }
}

Result<std::unique_ptr<Model::Impl>> Prepare(LoadedModel lm, const ModelOptions& options) {
  auto impl = std::make_unique<Model::Impl>();
  const ModelConfig& c = lm.config;
  model::ModelWeights& w = lm.weights;
  const size_t dim = c.dim, hid = c.hidden_dim, V = c.vocab_size;
  const size_t qd = size_t{c.heads} * c.head_dim, kvd = size_t{c.kv_heads} * c.head_dim;
  const size_t qkv = qd + 2 * kvd;

  KVWIRE_RETURN_IF_ERROR(CheckFinite(w.embedding, "embedding"));
  KVWIRE_RETURN_IF_ERROR(CheckFinite(w.output, "output"));
  KVWIRE_RETURN_IF_ERROR(CheckFinite(w.final_norm, "final norm"));
  for (float f : w.rope_freq_factors) {
    KVWIRE_RETURN_ERROR_IF(!(f > 0) || !std::isfinite(f), kCorrupt,
                           "rope frequency factors must be finite and > 0");
  }
  impl->layers.resize(c.layers);
  for (uint32_t l = 0; l < c.layers; ++l) {
    model::LayerWeights& s = w.layers[l];
    const std::string name = "layer " + std::to_string(l);
    for (const auto* v : {&s.attn_norm, &s.wq, &s.wk, &s.wv, &s.wo, &s.bq, &s.bk, &s.bv,
                          &s.ffn_norm, &s.w1, &s.w2, &s.w3}) {
      KVWIRE_RETURN_IF_ERROR(CheckFinite(*v, name));
    }
    Model::Impl::Layer& d = impl->layers[l];
    d.attn_norm = std::move(s.attn_norm);
    d.ffn_norm = std::move(s.ffn_norm);
    d.wqkv_t.resize(dim * qkv);
    PlaceTransposed(s.wq, qd, dim, qkv, 0, &d.wqkv_t);
    PlaceTransposed(s.wk, kvd, dim, qkv, qd, &d.wqkv_t);
    PlaceTransposed(s.wv, kvd, dim, qkv, qd + kvd, &d.wqkv_t);
    if (c.qkv_bias) {
      d.bqkv.assign(qkv, 0.0f);  // a missing bias is zero (adding 0 leaves values unchanged)
      std::copy(s.bq.begin(), s.bq.end(), d.bqkv.begin());
      std::copy(s.bk.begin(), s.bk.end(), d.bqkv.begin() + qd);
      std::copy(s.bv.begin(), s.bv.end(), d.bqkv.begin() + qd + kvd);
    }
    d.wo_t.resize(qd * dim);
    model::Transpose(s.wo.data(), dim, qd, d.wo_t.data());
    d.w13_t.resize(dim * 2 * hid);
    PlaceTransposed(s.w1, hid, dim, 2 * hid, 0, &d.w13_t);
    PlaceTransposed(s.w3, hid, dim, 2 * hid, hid, &d.w13_t);
    d.w2_t.resize(hid * dim);
    model::Transpose(s.w2.data(), dim, hid, d.w2_t.data());
    s = model::LayerWeights();  // release the file-order copy as we go
  }
  impl->output_t.resize(dim * V);
  if (c.tied_output) {
    model::Transpose(w.embedding.data(), V, dim, impl->output_t.data());
  } else {
    model::Transpose(w.output.data(), V, dim, impl->output_t.data());
    impl->embedding = std::move(w.embedding);
  }
  impl->final_norm = std::move(w.final_norm);

  // Angle of pair i at position p: p * theta^(-2i / rope_dim) (computed in float as run.c does),
  // divided by the file's frequency factor when it has one.
  const uint32_t half = c.rope_dim / 2;
  impl->inv_freq.resize(half);
  for (uint32_t i = 0; i < half; ++i) {
    float f = 1.0f / std::pow(static_cast<float>(c.rope_theta),
                              static_cast<float>(2 * i) / static_cast<float>(c.rope_dim));
    if (!w.rope_freq_factors.empty()) f /= w.rope_freq_factors[i];
    impl->inv_freq[i] = f;
  }
  impl->config = c;
  impl->tokenizer = std::move(lm.tokenizer);
  impl->tokenizer_note = std::move(lm.tokenizer_note);
  int threads = options.threads;
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  impl->pool = std::make_unique<model::ThreadPool>(std::min(threads, 256));
  return impl;
}

}  // namespace

std::string_view RopeStyleName(RopeStyle style) {
  return style == RopeStyle::kNeox ? "neox" : "interleaved";
}

uint64_t ModelConfig::parameters() const {
  const uint64_t qd = uint64_t{heads} * head_dim, kvd = uint64_t{kv_heads} * head_dim;
  const uint64_t per_layer = 2ull * dim + qd * dim * 2 + 2 * kvd * dim + 3ull * hidden_dim * dim +
                             (qkv_bias ? qd + 2 * kvd : 0);
  return uint64_t{vocab_size} * dim * (tied_output ? 1 : 2) + layers * per_layer + dim;
}

std::string ModelConfig::Summary() const {
  return architecture + " dim=" + std::to_string(dim) + " layers=" + std::to_string(layers) +
         " heads=" + std::to_string(heads) + "/" + std::to_string(kv_heads) +
         " head_dim=" + std::to_string(head_dim) + " ffn=" + std::to_string(hidden_dim) +
         " vocab=" + std::to_string(vocab_size) + " ctx=" + std::to_string(max_seq_len) +
         " rope=" + std::string(RopeStyleName(rope_style)) + "/" +
         std::to_string(static_cast<long long>(rope_theta)) + (qkv_bias ? " qkv_bias" : "") +
         (tied_output ? " tied" : "");
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

const ModelConfig& Model::config() const { return impl_->config; }
const std::string& Model::fingerprint() const { return impl_->fingerprint; }
const Tokenizer& Model::tokenizer() const { return impl_->tokenizer; }
Status Model::TokenizerStatus() const {
  KVWIRE_RETURN_ERROR_IF(
      impl_->tokenizer.size() == 0, kNotFound,
      impl_->tokenizer_note.empty() ? "the model has no tokenizer" : impl_->tokenizer_note);
  return impl_->tokenizer.Encode("a", false).status();  // e.g. an unimplemented pre-tokenizer
}

int Model::threads() const { return impl_->pool->threads(); }

KvMetadata Model::kv_metadata() const {
  KvMetadata m;
  m.positions_start = 0;
  m.rope_theta = impl_->config.rope_theta;
  m.rope_style = std::string(RopeStyleName(impl_->config.rope_style));
  m.model_fingerprint = impl_->fingerprint;
  return m;
}

Result<std::unique_ptr<Model>> Model::LoadFromBytes(std::span<const uint8_t> bytes,
                                                    std::string_view name,
                                                    const ModelOptions& options) {
  const bool gguf = model::LooksLikeGguf(bytes);
  auto loaded = gguf ? model::LoadGgufModel(bytes) : model::LoadLlama2cModel(bytes);
  if (!loaded.ok()) return loaded.status().WithContext(name);
  LoadedModel lm = std::move(loaded).value();
  if (lm.config.name.empty()) lm.config.name = std::filesystem::path(name).filename().string();
  if (!options.tokenizer_path.empty()) {
    auto tok = Tokenizer::LoadLlama2c(options.tokenizer_path, lm.config.vocab_size);
    if (!tok.ok()) return tok.status();
    lm.tokenizer = std::move(tok).value();
    lm.tokenizer_note.clear();
  }
  KVWIRE_RETURN_ERROR_IF(lm.tokenizer.size() > lm.config.vocab_size, kInvalidArgument,
                         std::string(name) + ": tokenizer has more entries than the model's vocab");
  auto impl = Prepare(std::move(lm), options);
  if (!impl.ok()) return impl.status().WithContext(name);
  if (!options.skip_fingerprint) impl.value()->fingerprint = model::Sha256Fingerprint(bytes);
  return std::unique_ptr<Model>(new Model(std::move(impl).value()));
}

Result<std::unique_ptr<Model>> Model::Load(const std::string& path, const ModelOptions& options) {
  KVWIRE_ASSIGN_OR_RETURN(model::MappedFile file, model::MappedFile::Open(path));
  ModelOptions opts = options;
  if (opts.tokenizer_path.empty() && !model::LooksLikeGguf(file.bytes())) {
    // llama2.c: a tokenizer.bin beside the model is the convention.
    const auto beside = std::filesystem::path(path).parent_path() / "tokenizer.bin";
    std::error_code ec;
    if (std::filesystem::is_regular_file(beside, ec)) opts.tokenizer_path = beside.string();
  }
  auto m = LoadFromBytes(file.bytes(), path, opts);
  if (m.ok() && m.value()->impl_->tokenizer.size() == 0 &&
      m.value()->impl_->tokenizer_note.empty()) {
    m.value()->impl_->tokenizer_note =
        "no tokenizer: pass --tokenizer (llama2.c tokenizer.bin) for " + path;
  }
  return m;
}

}  // namespace kvwire
