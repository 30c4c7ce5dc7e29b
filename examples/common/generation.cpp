#include "generation.h"

#include <algorithm>
#include <limits>

#include "example_util.h"

namespace kvwire::examples {

Result<KvView> SequenceRows(const Sequence& seq, const ModelConfig& config, uint32_t begin,
                            uint32_t count) {
  KVWIRE_RETURN_ERROR_IF(
      count == 0 || uint64_t{begin} + count > seq.capacity(), kInvalidArgument,
      "rows [" + std::to_string(begin) + ", " + std::to_string(uint64_t{begin} + count) +
          ") outside the sequence's capacity of " + std::to_string(seq.capacity()) + " tokens");
  const size_t row = size_t{config.kv_heads} * config.head_dim;
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < config.layers; ++l) {
    auto kl = seq.kv(l, KvKind::kKey), vl = seq.kv(l, KvKind::kValue);
    KVWIRE_RETURN_ERROR_IF(kl.size() != size_t{seq.capacity()} * row, kInvalidArgument,
                           "the sequence does not match the model config");
    // The view is only read from; KvView holds non-const pointers because receivers write.
    k.push_back(const_cast<float*>(kl.data() + size_t{begin} * row));
    v.push_back(const_cast<float*>(vl.data() + size_t{begin} * row));
  }
  return KvView::Contiguous({config.layers, count, config.kv_heads, config.head_dim}, DType::kF32,
                            std::move(k), std::move(v));
}

Result<KvView> CachePrefix(const KvCache& cache, uint32_t tokens) {
  KvShape shape = cache.shape();
  KVWIRE_RETURN_ERROR_IF(tokens == 0 || tokens > shape.tokens, kInvalidArgument,
                         "prefix of " + std::to_string(tokens) + " tokens of a cache of " +
                             std::to_string(shape.tokens));
  shape.tokens = tokens;
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    k.push_back(const_cast<uint8_t*>(cache.tensor(l, KvKind::kKey).data()));
    v.push_back(const_cast<uint8_t*>(cache.tensor(l, KvKind::kValue).data()));
  }
  return KvView::Contiguous(shape, cache.dtype(), std::move(k), std::move(v));
}

Result<std::vector<int32_t>> GreedyDecode(const Model& model, Sequence* seq, int32_t input,
                                          uint32_t count, std::vector<int64_t>* token_ns) {
  std::vector<int32_t> out;
  std::vector<float> logits;
  const uint32_t vocab = model.config().vocab_size;
  int32_t next = input;
  while (out.size() < count) {
    KVWIRE_RETURN_IF_ERROR(model.Forward(seq, std::span<const int32_t>(&next, 1),
                                         {ForwardOptions::Logits::kLast}, &logits));
    next = ArgMax(logits.data(), vocab);
    out.push_back(next);
    if (token_ns) token_ns->push_back(NowNs());
  }
  return out;
}

Result<Agreement> TeacherForcedTop1(const Model& model, const KvView& kv, int64_t positions_start,
                                    std::span<const int32_t> inputs,
                                    std::span<const int32_t> targets) {
  KVWIRE_RETURN_ERROR_IF(inputs.size() != targets.size() || inputs.empty(), kInvalidArgument,
                         "teacher forcing needs as many targets as inputs");
  KVWIRE_ASSIGN_OR_RETURN(std::vector<float> logits, model.Continue(kv, inputs, positions_start));
  const uint32_t vocab = model.config().vocab_size;
  Agreement a;
  for (size_t i = 0; i < inputs.size(); ++i) {
    ++a.positions;
    if (ArgMax(logits.data() + i * vocab, vocab) == targets[i]) {
      ++a.agree;
    } else if (a.first_miss < 0) {
      a.first_miss = static_cast<int32_t>(i);
    }
  }
  return a;
}

int32_t FirstDifference(std::span<const int32_t> a, std::span<const int32_t> b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return static_cast<int32_t>(i);
  }
  return a.size() == b.size() ? -1 : static_cast<int32_t>(n);
}

Result<float> SmallestTop1Margin(const Model& model, std::span<const int32_t> prompt,
                                 std::span<const int32_t> tokens) {
  KVWIRE_RETURN_ERROR_IF(prompt.empty() || tokens.empty(), kInvalidArgument,
                         "margin: empty prompt or continuation");
  std::vector<int32_t> all(prompt.begin(), prompt.end());
  all.insert(all.end(), tokens.begin(), tokens.end() - 1);
  KVWIRE_ASSIGN_OR_RETURN(Sequence seq, model.NewSequence(static_cast<uint32_t>(all.size())));
  std::vector<float> logits;
  KVWIRE_RETURN_IF_ERROR(model.Forward(&seq, all, {ForwardOptions::Logits::kAll}, &logits));
  const uint32_t vocab = model.config().vocab_size;
  float smallest = std::numeric_limits<float>::infinity();
  // Rows prompt.size() - 1 ... predict the continuation tokens.
  for (size_t r = prompt.size() - 1; r < all.size(); ++r) {
    const float* row = logits.data() + r * vocab;
    float best = -std::numeric_limits<float>::infinity(), second = best;
    for (uint32_t i = 0; i < vocab; ++i) {
      if (row[i] > best) {
        second = best;
        best = row[i];
      } else if (row[i] > second) {
        second = row[i];
      }
    }
    smallest = std::min(smallest, best - second);
  }
  return smallest;
}

}  // namespace kvwire::examples
