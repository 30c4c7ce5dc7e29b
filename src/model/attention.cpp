// Causal grouped-query attention over a float32 KV cache (the batched form of run.c's loop).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "model/kernels.h"

namespace kvwire::model {
namespace {

// Eight floats handled as one value; GCC/Clang lower it to AVX2 or to pairs of SSE ops. The
// helpers below are always inlined, so the ABI note about passing such values is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V8 __attribute__((vector_size(32)));

inline __attribute__((always_inline)) V8 Load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

constexpr size_t kQueryBlock = 16;  // queries of one head per task

// Scores and weighted sums for queries [qi0, qi1) of head h.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void AttendBlock(
    const float* q, size_t qi0, size_t qi1, size_t t0, const float* k, const float* v, uint32_t h,
    uint32_t heads, uint32_t kv_heads, uint32_t head_dim, float* out, std::vector<float>* scratch) {
  const uint32_t kvh = h / (heads / kv_heads);
  const size_t q_stride = size_t{heads} * head_dim;
  const size_t kv_stride = size_t{kv_heads} * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const bool wide = head_dim % 8 == 0;
  scratch->resize(t0 + qi1);
  float* att = scratch->data();
  for (size_t i = qi0; i < qi1; ++i) {
    const float* qv = q + i * q_stride + size_t{h} * head_dim;
    const size_t len = t0 + i + 1;  // keys 0 .. t0 + i
    float max_score = -INFINITY;
    for (size_t j = 0; j < len; ++j) {
      const float* kv = k + j * kv_stride + size_t{kvh} * head_dim;
      float s;
      if (wide) {
        V8 acc{};
        for (uint32_t d = 0; d < head_dim; d += 8) acc += Load8(qv + d) * Load8(kv + d);
        s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      } else {
        s = 0.0f;
        for (uint32_t d = 0; d < head_dim; ++d) s += qv[d] * kv[d];
      }
      s *= scale;
      att[j] = s;
      max_score = std::max(max_score, s);
    }
    float sum = 0.0f;
    for (size_t j = 0; j < len; ++j) {
      att[j] = std::exp(att[j] - max_score);
      sum += att[j];
    }
    float* o = out + i * q_stride + size_t{h} * head_dim;
    std::fill(o, o + head_dim, 0.0f);
    for (size_t j = 0; j < len; ++j) {
      const float* vv = v + j * kv_stride + size_t{kvh} * head_dim;
      const float a = att[j];
      for (uint32_t d = 0; d < head_dim; ++d) o[d] += a * vv[d];
    }
    const float inv = 1.0f / sum;
    for (uint32_t d = 0; d < head_dim; ++d) o[d] *= inv;
  }
}

}  // namespace

void CausalAttention(const float* q, size_t n, size_t t0, const float* k, const float* v,
                     uint32_t heads, uint32_t kv_heads, uint32_t head_dim, float* out,
                     ThreadPool* pool) {
  const size_t blocks = (n + kQueryBlock - 1) / kQueryBlock;
  // Later query blocks attend to more keys; hand them out first so the tail of the parallel
  // loop is made of cheap tasks.
  pool->ParallelFor(blocks * heads, [&](size_t task) {
    thread_local std::vector<float> scratch;
    const size_t block = blocks - 1 - task / heads;
    const uint32_t h = static_cast<uint32_t>(task % heads);
    AttendBlock(q, block * kQueryBlock, std::min(n, (block + 1) * kQueryBlock), t0, k, v, h, heads,
                kv_heads, head_dim, out, &scratch);
  });
}

}  // namespace kvwire::model
