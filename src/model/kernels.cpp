#include "model/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

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
inline __attribute__((always_inline)) void Store8(float* p, V8 v) { std::memcpy(p, &v, sizeof(v)); }

// The matrix product is the hot loop of the whole runner: compile it for AVX2 as well as for
// the baseline, picked at load time, without raising the build's minimum CPU.
#define KVWIRE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))

constexpr size_t kStrip = 16;      // output columns per micro-kernel (two V8)
constexpr size_t kRowBlock = 64;   // rows of a per task
constexpr size_t kColBlock = 128;  // output columns per task

// c[r, 0:16] = sum_p a[r, p] * wt[p, 0:16] for R rows; p ascending, no fused multiply-add, so
// the scalar tail below produces bit-identical sums.
template <int R>
inline __attribute__((always_inline)) void Micro(const float* a, size_t k, const float* wt,
                                                 size_t m, const float* bias, float* c) {
  V8 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V8{};
  for (size_t p = 0; p < k; ++p) {
    const V8 w0 = Load8(wt + p * m);
    const V8 w1 = Load8(wt + p * m + 8);
    for (int r = 0; r < R; ++r) {
      const float s = a[r * k + p];
      acc[r][0] += s * w0;
      acc[r][1] += s * w1;
    }
  }
  if (bias) {
    const V8 b0 = Load8(bias), b1 = Load8(bias + 8);
    for (int r = 0; r < R; ++r) {
      acc[r][0] += b0;
      acc[r][1] += b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    Store8(c + r * m, acc[r][0]);
    Store8(c + r * m + 8, acc[r][1]);
  }
}

KVWIRE_SIMD_CLONES
void MatMulTile(const float* a, size_t k, const float* wt, size_t m, const float* bias, float* c,
                size_t i0, size_t i1, size_t j0, size_t j1) {
  size_t j = j0;
  for (; j + kStrip <= j1; j += kStrip) {
    size_t i = i0;
    for (; i + 4 <= i1; i += 4) {
      Micro<4>(a + i * k, k, wt + j, m, bias ? bias + j : nullptr, c + i * m + j);
    }
    for (; i < i1; ++i) Micro<1>(a + i * k, k, wt + j, m, bias ? bias + j : nullptr, c + i * m + j);
  }
  if (j < j1) {  // fewer than 16 columns left: same order of operations, one at a time
    for (size_t i = i0; i < i1; ++i) {
      const float* ar = a + i * k;
      for (size_t jj = j; jj < j1; ++jj) {
        float s = 0.0f;
        for (size_t p = 0; p < k; ++p) s += ar[p] * wt[p * m + jj];
        if (bias) s += bias[jj];
        c[i * m + jj] = s;
      }
    }
  }
}

}  // namespace

void MatMul(const float* a, size_t n, size_t k, const float* wt, size_t m, const float* bias,
            float* c, ThreadPool* pool) {
  const size_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  const size_t col_blocks = (m + kColBlock - 1) / kColBlock;
  pool->ParallelFor(row_blocks * col_blocks, [&](size_t task) {
    const size_t rb = task / col_blocks, cb = task % col_blocks;
    MatMulTile(a, k, wt, m, bias, c, rb * kRowBlock, std::min(n, (rb + 1) * kRowBlock),
               cb * kColBlock, std::min(m, (cb + 1) * kColBlock));
  });
}

void RmsNorm(const float* x, const float* w, size_t n, size_t dim, float eps, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float* xr = x + i * dim;
    float ss = 0.0f;
    for (size_t d = 0; d < dim; ++d) ss += xr[d] * xr[d];
    const float scale = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    float* o = out + i * dim;
    for (size_t d = 0; d < dim; ++d) o[d] = w[d] * (scale * xr[d]);
  }
}

void ApplyRope(float* x, size_t n, size_t row_stride, uint32_t heads, uint32_t head_dim,
               uint32_t rope_dim, bool neox, const float* cos, const float* sin) {
  const uint32_t half = rope_dim / 2;
  for (size_t t = 0; t < n; ++t) {
    const float* ct = cos + t * half;
    const float* st = sin + t * half;
    for (uint32_t h = 0; h < heads; ++h) {
      float* v = x + t * row_stride + size_t{h} * head_dim;
      for (uint32_t i = 0; i < half; ++i) {
        const uint32_t i0 = neox ? i : 2 * i;
        const uint32_t i1 = neox ? i + half : 2 * i + 1;
        const float x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * ct[i] - x1 * st[i];
        v[i1] = x0 * st[i] + x1 * ct[i];
      }
    }
  }
}

void SwiGlu(float* a, const float* b, size_t count) {
  for (size_t i = 0; i < count; ++i) a[i] = a[i] * (1.0f / (1.0f + std::exp(-a[i]))) * b[i];
}

void Transpose(const float* src, size_t rows, size_t cols, float* dst) {
  constexpr size_t kB = 32;
  for (size_t r0 = 0; r0 < rows; r0 += kB) {
    const size_t r1 = std::min(rows, r0 + kB);
    for (size_t c0 = 0; c0 < cols; c0 += kB) {
      const size_t c1 = std::min(cols, c0 + kB);
      for (size_t r = r0; r < r1; ++r) {
        for (size_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
}

}  // namespace kvwire::model
