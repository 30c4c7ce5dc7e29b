// The forward pass over a batch of tokens, the Sequence state it appends to, and the
// prefill / continuation / greedy-generation conveniences built on it.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/fp16.h"
#include "model/kernels.h"
#include "model/model_impl.h"

namespace kvwire {
namespace {

// Tokens per internal batch: bounds activation memory; results do not depend on it (each
// output is computed the same way whichever batch its token falls in).
constexpr size_t kChunkTokens = 512;
constexpr size_t kRowsPerTask = 16;

void AddInPlace(float* x, const float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

std::span<const float> Sequence::kv(uint32_t layer, KvKind kind) const {
  if (layer >= k_.size()) return {};
  return kind == KvKind::kKey ? std::span<const float>(k_[layer])
                              : std::span<const float>(v_[layer]);
}

std::span<const float> Sequence::queries(uint32_t layer) const {
  if (layer >= q_.size()) return {};
  return q_[layer];
}

Result<KvCache> Sequence::Export(uint32_t begin, uint32_t count, DType dtype, bool with_queries,
                                 KvMetadata metadata) const {
  KVWIRE_RETURN_ERROR_IF(count == 0 || uint64_t{begin} + count > tokens_, kInvalidArgument,
                         "Sequence::Export: tokens [" + std::to_string(begin) + ", " +
                             std::to_string(uint64_t{begin} + count) + ") outside the " +
                             std::to_string(tokens_) + " cached tokens");
  KVWIRE_RETURN_ERROR_IF(with_queries && q_.empty(), kInvalidArgument,
                         "Sequence::Export: the sequence does not keep queries");
  const KvShape shape{static_cast<uint32_t>(k_.size()), count, kv_heads_, head_dim_};
  KVWIRE_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape, dtype, with_queries ? heads_ : 0));
  const size_t row = size_t{kv_heads_} * head_dim_, qrow = size_t{heads_} * head_dim_;
  const KvView view = cache.view();
  for (uint32_t l = 0; l < shape.layers; ++l) {
    KVWIRE_RETURN_IF_ERROR(view.WriteF32(l, KvKind::kKey, 0, count, k_[l].data() + begin * row));
    KVWIRE_RETURN_IF_ERROR(view.WriteF32(l, KvKind::kValue, 0, count, v_[l].data() + begin * row));
    if (!with_queries) continue;
    const float* src = q_[l].data() + begin * qrow;
    std::span<uint8_t> dst = cache.queries(l);
    const size_t n = size_t{count} * qrow;
    if (dtype == DType::kF32) {
      std::memcpy(dst.data(), src, n * 4);
    } else {
      auto* d16 = reinterpret_cast<uint16_t*>(dst.data());
      for (size_t i = 0; i < n; ++i) {
        d16[i] = dtype == DType::kF16 ? FloatToHalf(src[i]) : FloatToBf16(src[i]);
      }
    }
  }
  metadata.positions_start = positions_start_ + begin;
  cache.metadata() = std::move(metadata);
  return cache;
}

Result<Sequence> Model::NewSequence(uint32_t capacity, bool with_queries,
                                    int64_t positions_start) const {
  const ModelConfig& c = impl_->config;
  KVWIRE_RETURN_ERROR_IF(capacity == 0 || capacity > kMaxTokens, kInvalidArgument,
                         "sequence capacity " + std::to_string(capacity) + " out of range [1, " +
                             std::to_string(kMaxTokens) + "]");
  KVWIRE_RETURN_ERROR_IF(positions_start < 0 || positions_start > (int64_t{1} << 40),
                         kInvalidArgument, "positions_start out of range");
  Sequence s;
  s.capacity_ = capacity;
  s.positions_start_ = positions_start;
  s.heads_ = c.heads;
  s.kv_heads_ = c.kv_heads;
  s.head_dim_ = c.head_dim;
  const size_t row = size_t{c.kv_heads} * c.head_dim;
  s.k_.assign(c.layers, std::vector<float>(capacity * row));
  s.v_.assign(c.layers, std::vector<float>(capacity * row));
  if (with_queries)
    s.q_.assign(c.layers, std::vector<float>(capacity * size_t{c.heads} * c.head_dim));
  return s;
}

Result<Sequence> Model::SequenceFromKv(const KvView& kv, uint32_t extra_capacity,
                                       int64_t positions_start) const {
  const ModelConfig& c = impl_->config;
  const KvShape& s = kv.shape();
  KVWIRE_RETURN_ERROR_IF(
      s.layers != c.layers || s.kv_heads != c.kv_heads || s.head_dim != c.head_dim,
      kInvalidArgument,
      "KV cache shape (layers " + std::to_string(s.layers) + ", kv_heads " +
          std::to_string(s.kv_heads) + ", head_dim " + std::to_string(s.head_dim) +
          ") does not match the model (" + c.Summary() + ")");
  KVWIRE_RETURN_ERROR_IF(uint64_t{s.tokens} + extra_capacity > kMaxTokens, kInvalidArgument,
                         "KV cache plus continuation exceeds the token limit");
  KVWIRE_ASSIGN_OR_RETURN(Sequence seq,
                          NewSequence(s.tokens + extra_capacity, false, positions_start));
  for (uint32_t l = 0; l < c.layers; ++l) {
    KVWIRE_RETURN_IF_ERROR(kv.ReadF32(l, KvKind::kKey, 0, s.tokens, seq.k_[l].data()));
    KVWIRE_RETURN_IF_ERROR(kv.ReadF32(l, KvKind::kValue, 0, s.tokens, seq.v_[l].data()));
  }
  seq.tokens_ = s.tokens;
  return seq;
}

Status Model::Forward(Sequence* seq, std::span<const int32_t> tokens, const ForwardOptions& options,
                      std::vector<float>* logits) const {
  const Impl& m = *impl_;
  const ModelConfig& c = m.config;
  KVWIRE_RETURN_ERROR_IF(!seq || seq->k_.size() != c.layers || seq->kv_heads_ != c.kv_heads ||
                             seq->head_dim_ != c.head_dim || seq->heads_ != c.heads,
                         kInvalidArgument, "Forward: the sequence was not made by this model");
  KVWIRE_RETURN_ERROR_IF(tokens.empty(), kInvalidArgument, "Forward: no tokens");
  KVWIRE_RETURN_ERROR_IF(uint64_t{seq->tokens_} + tokens.size() > seq->capacity_, kInvalidArgument,
                         "Forward: " + std::to_string(tokens.size()) + " tokens do not fit (" +
                             std::to_string(seq->tokens_) + " of " +
                             std::to_string(seq->capacity_) + " used)");
  for (size_t i = 0; i < tokens.size(); ++i) {
    KVWIRE_RETURN_ERROR_IF(tokens[i] < 0 || static_cast<uint32_t>(tokens[i]) >= c.vocab_size,
                           kInvalidArgument,
                           "Forward: token " + std::to_string(tokens[i]) + " at index " +
                               std::to_string(i) + " outside the vocabulary");
  }
  const bool want = options.logits != ForwardOptions::Logits::kNone;
  KVWIRE_RETURN_ERROR_IF(want && !logits, kInvalidArgument, "Forward: logits requested, no output");
  const size_t V = c.vocab_size, dim = c.dim, hid = c.hidden_dim, hd = c.head_dim;
  const size_t qd = size_t{c.heads} * hd, kvd = size_t{c.kv_heads} * hd, qkvd = qd + 2 * kvd;
  const uint32_t half = c.rope_dim / 2;
  const bool neox = c.rope_style == RopeStyle::kNeox;
  if (options.logits == ForwardOptions::Logits::kAll) logits->assign(tokens.size() * V, 0.0f);
  if (options.logits == ForwardOptions::Logits::kLast) logits->assign(V, 0.0f);

  model::ThreadPool* pool = m.pool.get();
  std::vector<float> x, xb, qkv, q, att, tmp, h13, h, cosv, sinv;
  for (size_t c0 = 0; c0 < tokens.size(); c0 += kChunkTokens) {
    const size_t n = std::min(kChunkTokens, tokens.size() - c0);
    const size_t t0 = seq->tokens_;
    x.resize(n * dim);
    xb.resize(n * dim);
    qkv.resize(n * qkvd);
    q.resize(n * qd);
    att.resize(n * qd);
    tmp.resize(n * dim);
    h13.resize(n * 2 * hid);
    h.resize(n * hid);
    cosv.resize(n * half);
    sinv.resize(n * half);
    for (size_t i = 0; i < n; ++i) {
      const size_t tok = static_cast<size_t>(tokens[c0 + i]);
      float* xr = x.data() + i * dim;
      if (!m.embedding.empty()) {
        std::copy_n(m.embedding.data() + tok * dim, dim, xr);
      } else {
        for (size_t d = 0; d < dim; ++d) xr[d] = m.output_t[d * V + tok];
      }
      const float pos = static_cast<float>(seq->positions_start_ + static_cast<int64_t>(t0 + i));
      for (uint32_t j = 0; j < half; ++j) {
        const float a = pos * m.inv_freq[j];
        cosv[i * half + j] = std::cos(a);
        sinv[i * half + j] = std::sin(a);
      }
    }
    const size_t row_tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
    for (uint32_t l = 0; l < c.layers; ++l) {
      const Impl::Layer& L = m.layers[l];
      float* kc = seq->k_[l].data();
      float* vc = seq->v_[l].data();
      model::RmsNorm(x.data(), L.attn_norm.data(), n, dim, c.rms_eps, xb.data());
      model::MatMul(xb.data(), n, dim, L.wqkv_t.data(), qkvd,
                    L.bqkv.empty() ? nullptr : L.bqkv.data(), qkv.data(), pool);
      pool->ParallelFor(row_tasks, [&](size_t task) {
        const size_t i0 = task * kRowsPerTask, i1 = std::min(n, i0 + kRowsPerTask);
        float* base = qkv.data() + i0 * qkvd;
        model::ApplyRope(base, i1 - i0, qkvd, c.heads, c.head_dim, c.rope_dim, neox,
                         cosv.data() + i0 * half, sinv.data() + i0 * half);
        model::ApplyRope(base + qd, i1 - i0, qkvd, c.kv_heads, c.head_dim, c.rope_dim, neox,
                         cosv.data() + i0 * half, sinv.data() + i0 * half);
        for (size_t i = i0; i < i1; ++i) {
          const float* r = qkv.data() + i * qkvd;
          std::copy_n(r, qd, q.data() + i * qd);
          std::copy_n(r + qd, kvd, kc + (t0 + i) * kvd);
          std::copy_n(r + qd + kvd, kvd, vc + (t0 + i) * kvd);
          if (!seq->q_.empty()) std::copy_n(r, qd, seq->q_[l].data() + (t0 + i) * qd);
        }
      });
      // Layer l's K/V rows are final now; the rest of the layer only reads them.
      if (options.on_layer_done && c0 + n == tokens.size()) options.on_layer_done(l);
      model::CausalAttention(q.data(), n, t0, kc, vc, c.heads, c.kv_heads, c.head_dim, att.data(),
                             pool);
      model::MatMul(att.data(), n, qd, L.wo_t.data(), dim, nullptr, tmp.data(), pool);
      AddInPlace(x.data(), tmp.data(), n * dim);
      model::RmsNorm(x.data(), L.ffn_norm.data(), n, dim, c.rms_eps, xb.data());
      model::MatMul(xb.data(), n, dim, L.w13_t.data(), 2 * hid, nullptr, h13.data(), pool);
      pool->ParallelFor(row_tasks, [&](size_t task) {
        for (size_t i = task * kRowsPerTask; i < std::min(n, (task + 1) * kRowsPerTask); ++i) {
          std::copy_n(h13.data() + i * 2 * hid, hid, h.data() + i * hid);
          model::SwiGlu(h.data() + i * hid, h13.data() + i * 2 * hid + hid, hid);
        }
      });
      model::MatMul(h.data(), n, hid, L.w2_t.data(), dim, nullptr, tmp.data(), pool);
      AddInPlace(x.data(), tmp.data(), n * dim);
    }
    seq->tokens_ += static_cast<uint32_t>(n);

    const bool last_chunk = c0 + n == tokens.size();
    if (options.logits == ForwardOptions::Logits::kAll) {
      model::RmsNorm(x.data(), m.final_norm.data(), n, dim, c.rms_eps, xb.data());
      model::MatMul(xb.data(), n, dim, m.output_t.data(), V, nullptr, logits->data() + c0 * V,
                    pool);
    } else if (options.logits == ForwardOptions::Logits::kLast && last_chunk) {
      model::RmsNorm(x.data() + (n - 1) * dim, m.final_norm.data(), 1, dim, c.rms_eps, xb.data());
      model::MatMul(xb.data(), 1, dim, m.output_t.data(), V, nullptr, logits->data(), pool);
    }
  }
  return Status::Ok();
}

Result<KvCache> Model::Prefill(std::span<const int32_t> tokens, DType dtype, bool with_queries,
                               int64_t positions_start) const {
  KVWIRE_RETURN_ERROR_IF(tokens.empty(), kInvalidArgument, "Prefill: no tokens");
  KVWIRE_ASSIGN_OR_RETURN(
      Sequence seq,
      NewSequence(static_cast<uint32_t>(std::min<size_t>(tokens.size(), kMaxTokens + 1ull)),
                  with_queries, positions_start));
  KVWIRE_RETURN_IF_ERROR(Forward(&seq, tokens, {ForwardOptions::Logits::kNone}, nullptr));
  KvMetadata meta = kv_metadata();
  return seq.Export(0, seq.tokens(), dtype, with_queries, std::move(meta));
}

Result<std::vector<float>> Model::Continue(const KvView& prefix, std::span<const int32_t> tokens,
                                           int64_t positions_start) const {
  KVWIRE_RETURN_ERROR_IF(tokens.empty(), kInvalidArgument, "Continue: no tokens");
  KVWIRE_RETURN_ERROR_IF(tokens.size() > kMaxTokens, kInvalidArgument, "Continue: too many tokens");
  KVWIRE_ASSIGN_OR_RETURN(
      Sequence seq, SequenceFromKv(prefix, static_cast<uint32_t>(tokens.size()), positions_start));
  std::vector<float> logits;
  KVWIRE_RETURN_IF_ERROR(Forward(&seq, tokens, {ForwardOptions::Logits::kAll}, &logits));
  return logits;
}

Result<std::vector<int32_t>> Model::Generate(std::span<const int32_t> prompt,
                                             uint32_t max_new_tokens, bool stop_at_eos) const {
  KVWIRE_RETURN_ERROR_IF(prompt.empty(), kInvalidArgument, "Generate: empty prompt");
  KVWIRE_RETURN_ERROR_IF(prompt.size() + max_new_tokens > kMaxTokens, kInvalidArgument,
                         "Generate: prompt plus new tokens exceed the token limit");
  KVWIRE_ASSIGN_OR_RETURN(Sequence seq,
                          NewSequence(static_cast<uint32_t>(prompt.size() + max_new_tokens)));
  std::vector<int32_t> out;
  std::vector<float> logits;
  const int32_t eos = impl_->tokenizer.eos_id();
  std::span<const int32_t> next = prompt;
  int32_t tok = 0;
  while (out.size() < max_new_tokens) {
    KVWIRE_RETURN_IF_ERROR(Forward(&seq, next, {ForwardOptions::Logits::kLast}, &logits));
    tok = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(tok);
    if (stop_at_eos && eos >= 0 && tok == eos) break;
    next = std::span<const int32_t>(&tok, 1);
  }
  return out;
}

}  // namespace kvwire
