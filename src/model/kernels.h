// Float32 building blocks of the forward pass. Layouts are row-major; every output element is
// computed by one task with a fixed summation order (results do not depend on threads).
#pragma once

#include <cstddef>
#include <cstdint>

#include "model/thread_pool.h"

namespace kvwire::model {

/// c[n, m] = a[n, k] · wt[k, m] (+ bias[m] when non-null). `wt` is a weight stored transposed
/// ([in, out]), so the inner loop runs along contiguous output columns. Cache-blocked; tasks
/// are (row block, column block) tiles.
void MatMul(const float* a, size_t n, size_t k, const float* wt, size_t m, const float* bias,
            float* c, ThreadPool* pool);

/// out[n, dim] = x * rsqrt(mean(x^2) + eps) * w, row by row (out may alias x).
void RmsNorm(const float* x, const float* w, size_t n, size_t dim, float eps, float* out);

/// Rotates `heads` heads of `n` rows (row stride `row_stride` floats, head stride head_dim) by
/// the angles cos/sin [n, rope_dim / 2]. Interleaved: pairs (2i, 2i+1); neox: (i, i + rope_dim/2).
void ApplyRope(float* x, size_t n, size_t row_stride, uint32_t heads, uint32_t head_dim,
               uint32_t rope_dim, bool neox, const float* cos, const float* sin);

/// In place: a[i] = silu(a[i]) * b[i].
void SwiGlu(float* a, const float* b, size_t count);

/// Causal attention of n queries at cache rows [t0, t0 + n) over cache rows [0, t0 + i].
///   q    [n, heads, head_dim]
///   k, v [>= t0 + n, kv_heads, head_dim]  (query head h reads kv head h / (heads / kv_heads))
///   out  [n, heads, head_dim]
void CausalAttention(const float* q, size_t n, size_t t0, const float* k, const float* v,
                     uint32_t heads, uint32_t kv_heads, uint32_t head_dim, float* out,
                     ThreadPool* pool);

/// Transposes src [rows, cols] into dst [cols, rows].
void Transpose(const float* src, size_t rows, size_t cols, float* dst);

}  // namespace kvwire::model
