// Kernels of fraqtl's table-driven payload (fraqtl_rans_kernels.h).
#include "codec/fraqtl_rans_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "codec/quant_common.h"
#include "codec/simd_gather.h"
#include "common/fp16.h"

namespace kvwire::fraqtl::internal {

// out[0, n) = sum over j in [0, d) of m[j * n + c] * x[j], each out[c] accumulated from 0 in
// ascending j by fused multiply-adds (one rounding per term, std::fma where the CPU has no
// FMA): the floats the version-2 format defines. n is a multiple of 8.
void ProjectScalar(const float* m, const float* x, size_t d, size_t n, float* out) {
  for (size_t c = 0; c < n; ++c) out[c] = 0.0f;
  for (size_t j = 0; j < d; ++j) {
    const float xj = x[j];
    const float* row = m + j * n;
    for (size_t c = 0; c < n; ++c) out[c] = std::fma(row[c], xj, out[c]);
  }
}

// out[0, d) = mean + sum over k of rows[k][0, d) * z[k], accumulated from 0 in ascending k by
// fused multiply-adds, then added to the mean. d is a multiple of 8 for the AVX2 version.
void AccumulateScalar(const float* const* rows, const float* z, size_t k, const float* mean,
                      size_t d, float* out) {
  for (size_t j = 0; j < d; ++j) out[j] = 0.0f;
  for (size_t c = 0; c < k; ++c) {
    const float* r = rows[c];
    const float zc = z[c];
    for (size_t j = 0; j < d; ++j) out[j] = std::fma(r[j], zc, out[j]);
  }
  for (size_t j = 0; j < d; ++j) out[j] = mean[j] + out[j];
}

namespace {

template <int R>
__attribute__((target("avx2,fma"), always_inline)) inline void MulRowsR(
    const float* const* a, size_t k, const float* const* x, size_t n, const float* add,
    float* const* out) {
  size_t c0 = 0;
  for (; c0 + 32 <= n; c0 += 32) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_ps();
    }
    for (size_t j = 0; j < k; ++j) {
      // 12 accumulators, R broadcasts and one row vector: within AVX2's 16 registers.
      const float* aj = a[j] + c0;
      __m256 b[R];
      for (int r = 0; r < R; ++r) b[r] = _mm256_broadcast_ss(x[r] + j);
      for (int v = 0; v < 4; ++v) {
        const __m256 av = _mm256_loadu_ps(aj + 8 * v);
        for (int r = 0; r < R; ++r) acc[r][v] = _mm256_fmadd_ps(av, b[r], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 4; ++v) {
        __m256 o = acc[r][v];
        if (add) o = _mm256_add_ps(_mm256_loadu_ps(add + c0 + 8 * v), o);
        _mm256_storeu_ps(out[r] + c0 + 8 * v, o);
      }
    }
  }
  for (; c0 + 8 <= n; c0 += 8) {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (size_t j = 0; j < k; ++j) {
      const __m256 aj = _mm256_loadu_ps(a[j] + c0);
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm256_fmadd_ps(aj, _mm256_broadcast_ss(x[r] + j), acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      __m256 o = acc[r];
      if (add) o = _mm256_add_ps(_mm256_loadu_ps(add + c0), o);
      _mm256_storeu_ps(out[r] + c0, o);
    }
  }
}

}  // namespace

__attribute__((target("avx2,fma"))) void MulRowsAvx2(const float* const* a, size_t k,
                                                  const float* const* x, int rows, size_t n,
                                                  const float* add, float* const* out) {
  switch (rows) {
    case 1: MulRowsR<1>(a, k, x, n, add, out); break;
    case 2: MulRowsR<2>(a, k, x, n, add, out); break;
    case 3:
      MulRowsR<3>(a, k, x, n, add, out);
      break;
    default:  // four rows would need 16 accumulators: two pairs
      MulRowsR<2>(a, k, x, n, add, out);
      MulRowsR<2>(a, k, x + 2, n, add, out + 2);
      break;
  }
}

namespace {

// The last n - c0 < 64 columns of MulRows512R in one pass over j: V 16-column vectors per row
// (the last one masked to 8 columns where n % 16 == 8), R x V accumulators, so that each
// broadcast serves every vector and up to 16 independent chains hide the latency of the
// multiply-adds (one 16-column piece at a time has only R of them).
template <int R, int V, typename X>
__attribute__((target("avx512f"), always_inline)) inline void MulRows512Tail(
    const float* const* a, size_t k, X x, size_t c0, __mmask16 last, const float* add,
    float* const* out) {
  __m512 acc[R][V];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (size_t j = 0; j < k; ++j) {
    const float* aj = a[j] + c0;
    __m512 b[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) b[r] = _mm512_set1_ps(x(r, j));
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const __m512 av =
          v + 1 < V ? _mm512_loadu_ps(aj + 16 * v) : _mm512_maskz_loadu_ps(last, aj + 16 * v);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][v] = _mm512_fmadd_ps(av, b[r], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const __mmask16 m = v + 1 < V ? __mmask16(0xffff) : last;
      __m512 o = acc[r][v];
      if (add) o = _mm512_add_ps(_mm512_maskz_loadu_ps(m, add + c0 + 16 * v), o);
      _mm512_mask_storeu_ps(out[r] + c0 + 16 * v, m, o);
    }
  }
}

// MulRowsR with 16 columns to a register: 64-column pieces (4 R accumulators, R broadcasts and
// one row vector within AVX-512's 32 registers), then the rest in one pass (MulRows512Tail).
// x(r, j) is row r's value j.
template <int R, typename X>
__attribute__((target("avx512f"), always_inline)) inline void MulRows512R(const float* const* a,
                                                                          size_t k, X x, size_t n,
                                                                          const float* add,
                                                                          float* const* out) {
  size_t c0 = 0;
  for (; c0 + 64 <= n; c0 += 64) {
    __m512 acc[R][4];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
    }
    for (size_t j = 0; j < k; ++j) {
      const float* aj = a[j] + c0;
      __m512 b[R];
      for (int r = 0; r < R; ++r) b[r] = _mm512_set1_ps(x(r, j));
      for (int v = 0; v < 4; ++v) {
        const __m512 av = _mm512_loadu_ps(aj + 16 * v);
        for (int r = 0; r < R; ++r) acc[r][v] = _mm512_fmadd_ps(av, b[r], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 4; ++v) {
        __m512 o = acc[r][v];
        if (add) o = _mm512_add_ps(_mm512_loadu_ps(add + c0 + 16 * v), o);
        _mm512_storeu_ps(out[r] + c0 + 16 * v, o);
      }
    }
  }
  const size_t rest = n - c0;  // a multiple of 8 below 64: up to four vectors
  const __mmask16 last = rest % 16 != 0 ? __mmask16(0x00ff) : __mmask16(0xffff);
  switch ((rest + 15) / 16) {
    case 0:
      break;
    case 1:
      MulRows512Tail<R, 1>(a, k, x, c0, last, add, out);
      break;
    case 2:
      MulRows512Tail<R, 2>(a, k, x, c0, last, add, out);
      break;
    case 3:
      MulRows512Tail<R, 3>(a, k, x, c0, last, add, out);
      break;
    default:
      MulRows512Tail<R, 4>(a, k, x, c0, last, add, out);
      break;  // 56 columns
  }
}

template <typename X>
__attribute__((target("avx512f"), always_inline)) inline void MulRows512(const float* const* a,
                                                                         size_t k, X x, int rows,
                                                                         size_t n, const float* add,
                                                                         float* const* out) {
  switch (rows) {
    case 1:
      MulRows512R<1>(a, k, x, n, add, out);
      break;
    case 2:
      MulRows512R<2>(a, k, x, n, add, out);
      break;
    case 3:
      MulRows512R<3>(a, k, x, n, add, out);
      break;
    default:
      MulRows512R<4>(a, k, x, n, add, out);
      break;
  }
}

}  // namespace

__attribute__((target("avx512f"))) void MulRowsAvx512(const float* const* a, size_t k,
                                                      const float* const* x, int rows, size_t n,
                                                      const float* add, float* const* out) {
  MulRows512(
      a, k, [x](int r, size_t j) { return x[r][j]; }, rows, n, add, out);
}

__attribute__((target("avx512f"))) void MulRowsDequantAvx512(const float* const* a, size_t k,
                                                             const float* const* x, size_t prefix,
                                                             const float* pool, const int32_t* off,
                                                             const uint32_t* const* sym, int rows,
                                                             size_t n, const float* add,
                                                             float* const* out) {
  // Dequantized as it is broadcast, never stored; a branch whose direction changes once a row.
  auto value = [=](int r, size_t j) {
    return j < prefix ? x[r][j] : pool[off[j - prefix] + static_cast<int32_t>(sym[r][j - prefix])];
  };
  MulRows512(a, k, value, rows, n, add, out);
}

__attribute__((target("avx512f"))) void MulRowsCenteredAvx512(const float* const* a, size_t k,
                                                              const float* const* x,
                                                              const float* center, int rows,
                                                              size_t n, float* const* out) {
  MulRows512(
      a, k, [x, center](int r, size_t j) { return x[r][j] - center[j]; }, rows, n, nullptr, out);
}

void MulRowsSimd(const float* const* a, size_t k, const float* const* x, int rows, size_t n,
                 const float* add, float* const* out) {
  if (HaveAvx512()) return MulRowsAvx512(a, k, x, rows, n, add, out);
  MulRowsAvx2(a, k, x, rows, n, add, out);
}

__attribute__((target("avx2"))) void DequantizeAvx2(const float* pool, const int32_t* off,
                                                   const uint32_t* sym, size_t k, float* out) {
  size_t c = 0;
  for (; c + 8 <= k; c += 8) {
    const __m256i at =
        _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(off + c)),
                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sym + c)));
    _mm256_storeu_ps(out + c, simd::GatherF32(pool, at));
  }
  for (; c < k; ++c) out[c] = pool[off[c] + static_cast<int32_t>(sym[c])];
}

__attribute__((target("avx2"))) void RopeRotateAvx2(const Rope& rope, float* x, const float* c,
                                                   const float* s, bool undo) {
  const uint32_t half = rope.rope_dim / 2;
  const __m256d sign = _mm256_set1_pd(undo ? -1.0 : 1.0);
  uint32_t i = 0;
  for (; i + 4 <= half; i += 4) {
    __m256d C = _mm256_cvtps_pd(_mm_loadu_ps(c + i));
    __m256d S = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(s + i)), sign);  // exact: +-1
    __m256d X0, X1;
    if (rope.neox) {
      X0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
      X1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + half));
    } else {  // pairs (2i, 2i + 1): lanes in the order i, i + 2, i + 1, i + 3
      const __m256 v = _mm256_loadu_ps(x + 2 * i);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
      const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
      X0 = _mm256_unpacklo_pd(lo, hi);
      X1 = _mm256_unpackhi_pd(lo, hi);
      C = _mm256_permute4x64_pd(C, 0xd8);
      S = _mm256_permute4x64_pd(S, 0xd8);
    }
    const __m256d Y0 = _mm256_sub_pd(_mm256_mul_pd(X0, C), _mm256_mul_pd(X1, S));
    const __m256d Y1 = _mm256_add_pd(_mm256_mul_pd(X0, S), _mm256_mul_pd(X1, C));
    if (rope.neox) {
      _mm_storeu_ps(x + i, _mm256_cvtpd_ps(Y0));
      _mm_storeu_ps(x + i + half, _mm256_cvtpd_ps(Y1));
    } else {
      _mm_storeu_ps(x + 2 * i, _mm256_cvtpd_ps(_mm256_unpacklo_pd(Y0, Y1)));
      _mm_storeu_ps(x + 2 * i + 4, _mm256_cvtpd_ps(_mm256_unpackhi_pd(Y0, Y1)));
    }
  }
  for (; i < half; ++i) {  // as Rope::Rotate
    const uint32_t i0 = rope.neox ? i : 2 * i;
    const uint32_t i1 = rope.neox ? i + half : 2 * i + 1;
    const double x0 = x[i0], x1 = x[i1];
    const double si = undo ? -static_cast<double>(s[i]) : static_cast<double>(s[i]);
    x[i0] = static_cast<float>(x0 * c[i] - x1 * si);
    x[i1] = static_cast<float>(x0 * si + x1 * c[i]);
  }
}

// RopeRotateAvx2 eight pairs at a time: the same double products and sums, the same rounding.
__attribute__((target("avx512f"))) void RopeRotateAvx512(const Rope& rope, float* x, const float* c,
                                                         const float* s, bool undo) {
  const uint32_t half = rope.rope_dim / 2;
  const __m512d sign = _mm512_set1_pd(undo ? -1.0 : 1.0);
  // Interleaved pairs (2i, 2i + 1): the even floats of 16, then the odd ones; and back.
  const __m512i split = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m512i merge = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  uint32_t i = 0;
  for (; i + 8 <= half; i += 8) {
    const __m512d C = _mm512_cvtps_pd(_mm256_loadu_ps(c + i));
    const __m512d S = _mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(s + i)), sign);  // exact
    __m512d X0, X1;
    if (rope.neox) {
      X0 = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
      X1 = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + half));
    } else {
      const __m512 v = _mm512_permutexvar_ps(split, _mm512_loadu_ps(x + 2 * i));
      X0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
      X1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    }
    const __m512d Y0 = _mm512_sub_pd(_mm512_mul_pd(X0, C), _mm512_mul_pd(X1, S));
    const __m512d Y1 = _mm512_add_pd(_mm512_mul_pd(X0, S), _mm512_mul_pd(X1, C));
    const __m256 y0 = _mm512_cvtpd_ps(Y0), y1 = _mm512_cvtpd_ps(Y1);
    if (rope.neox) {
      _mm256_storeu_ps(x + i, y0);
      _mm256_storeu_ps(x + i + half, y1);
    } else {
      const __m512 both = _mm512_castpd_ps(_mm512_insertf64x4(
          _mm512_castpd256_pd512(_mm256_castps_pd(y0)), _mm256_castps_pd(y1), 1));
      _mm512_storeu_ps(x + 2 * i, _mm512_permutexvar_ps(merge, both));
    }
  }
  for (; i < half; ++i) {  // as Rope::Rotate
    const uint32_t i0 = rope.neox ? i : 2 * i;
    const uint32_t i1 = rope.neox ? i + half : 2 * i + 1;
    const double x0 = x[i0], x1 = x[i1];
    const double si = undo ? -static_cast<double>(s[i]) : static_cast<double>(s[i]);
    x[i0] = static_cast<float>(x0 * c[i] - x1 * si);
    x[i1] = static_cast<float>(x0 * si + x1 * c[i]);
  }
}

void RopeRotate(const Rope& rope, float* x, const float* c, const float* s, bool undo) {
  if (HaveAvx512()) return RopeRotateAvx512(rope, x, c, s, undo);
  if (HaveAvx2()) return RopeRotateAvx2(rope, x, c, s, undo);
  rope.Rotate(x, c, s, undo);
}

namespace {

// sin and cos of r, |r| <= pi/4 (plus a little), by their Taylor series to r^15 and r^16:
// truncation below 3e-17, Horner's rounding a few units of 2^-53.
__attribute__((target("avx512f"), always_inline)) inline void SinCosReduced(__m512d r, __m512d* s,
                                                                            __m512d* c) {
  const __m512d r2 = _mm512_mul_pd(r, r);
  __m512d ps = _mm512_set1_pd(-1.0 / 1307674368000.0);  // -1/15!
  ps = _mm512_fmadd_pd(ps, r2, _mm512_set1_pd(1.0 / 6227020800.0));
  ps = _mm512_fmadd_pd(ps, r2, _mm512_set1_pd(-1.0 / 39916800.0));
  ps = _mm512_fmadd_pd(ps, r2, _mm512_set1_pd(1.0 / 362880.0));
  ps = _mm512_fmadd_pd(ps, r2, _mm512_set1_pd(-1.0 / 5040.0));
  ps = _mm512_fmadd_pd(ps, r2, _mm512_set1_pd(1.0 / 120.0));
  ps = _mm512_fmadd_pd(ps, r2, _mm512_set1_pd(-1.0 / 6.0));
  *s = _mm512_fmadd_pd(_mm512_mul_pd(ps, r2), r, r);
  __m512d pc = _mm512_set1_pd(1.0 / 20922789888000.0);  // 1/16!
  pc = _mm512_fmadd_pd(pc, r2, _mm512_set1_pd(-1.0 / 87178291200.0));
  pc = _mm512_fmadd_pd(pc, r2, _mm512_set1_pd(1.0 / 479001600.0));
  pc = _mm512_fmadd_pd(pc, r2, _mm512_set1_pd(-1.0 / 3628800.0));
  pc = _mm512_fmadd_pd(pc, r2, _mm512_set1_pd(1.0 / 40320.0));
  pc = _mm512_fmadd_pd(pc, r2, _mm512_set1_pd(-1.0 / 720.0));
  pc = _mm512_fmadd_pd(pc, r2, _mm512_set1_pd(1.0 / 24.0));
  pc = _mm512_fmadd_pd(pc, r2, _mm512_set1_pd(-0.5));
  *c = _mm512_fmadd_pd(pc, r2, _mm512_set1_pd(1.0));
}

// The float of every double within `margin` of y, in `out`; false where they are not all one
// float (a lane to compute exactly instead).
__attribute__((target("avx512f"), always_inline)) inline __mmask8 RoundSafely(__m512d y,
                                                                              __m256* out) {
  const __m512d abs = _mm512_abs_pd(y);
  const __m512d margin = _mm512_fmadd_pd(abs, _mm512_set1_pd(0x1p-40), _mm512_set1_pd(0x1p-46));
  const __m256 lo = _mm512_cvtpd_ps(_mm512_sub_pd(y, margin));
  const __m256 hi = _mm512_cvtpd_ps(_mm512_add_pd(y, margin));
  *out = lo;
  // Compared as bits: -0 and +0 are different floats.
  const __m256i same = _mm256_cmpeq_epi32(_mm256_castps_si256(lo), _mm256_castps_si256(hi));
  return static_cast<__mmask8>(_mm256_movemask_ps(_mm256_castsi256_ps(same)));
}

}  // namespace

__attribute__((target("avx512f"))) void RopeAnglesAvx512(const Rope& rope, int64_t first, size_t n,
                                                         float* out) {
  const uint32_t half = rope.rope_dim / 2;
  // pi/2 as C1 + C2 (C1: its double, C2: the rest), so a - k * C1 - k * C2 leaves r within
  // about 2^-53 of a - k * pi/2 for |k| < 2^20.
  const __m512d c1 = _mm512_set1_pd(1.5707963267948966);
  const __m512d c2 = _mm512_set1_pd(6.123233995736766e-17);
  const __m512d two_over_pi = _mm512_set1_pd(0.6366197723675814);
  const __m512d k_max = _mm512_set1_pd(1048576.0);
  std::vector<double> freq(half);
  for (uint32_t i = 0; i < half; ++i) freq[i] = rope.InvFreq(i);
  for (size_t t = 0; t < n; ++t) {
    const int64_t pos = first + static_cast<int64_t>(t);
    const __m512d p = _mm512_set1_pd(static_cast<double>(pos));
    float* cos_out = out + t * 2 * half;
    float* sin_out = cos_out + half;
    for (uint32_t i = 0; i < half; i += 8) {
      const __m512d a = _mm512_mul_pd(p, _mm512_loadu_pd(freq.data() + i));  // as Rope::Angles
      const __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(a, two_over_pi),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __mmask8 reducible = _mm512_cmp_pd_mask(_mm512_abs_pd(k), k_max, _CMP_LT_OQ);
      const __m512d r = _mm512_fnmadd_pd(k, c2, _mm512_fnmadd_pd(k, c1, a));
      __m512d sr, cr;
      SinCosReduced(r, &sr, &cr);
      // a = k pi/2 + r: quadrant q = k mod 4 swaps and negates.
      const __m256i q = _mm512_cvtpd_epi32(_mm512_maskz_mov_pd(reducible, k));
      const __mmask8 odd =
          static_cast<__mmask8>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q, 31))));
      const __mmask8 sin_neg =
          static_cast<__mmask8>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q, 30))));
      const __mmask8 cos_neg = static_cast<__mmask8>(_mm256_movemask_ps(
          _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(q, _mm256_set1_epi32(1)), 30))));
      __m512d s = _mm512_mask_blend_pd(odd, sr, cr);
      __m512d c = _mm512_mask_blend_pd(odd, cr, sr);
      const __m512d zero = _mm512_setzero_pd();
      s = _mm512_mask_sub_pd(s, sin_neg, zero, s);
      c = _mm512_mask_sub_pd(c, cos_neg, zero, c);
      __m256 cf, sf;
      const __mmask8 ok = reducible & RoundSafely(c, &cf) & RoundSafely(s, &sf);
      _mm256_storeu_ps(cos_out + i, cf);
      _mm256_storeu_ps(sin_out + i, sf);
      if (ok != 0xff) {
        for (uint32_t l = 0; l < 8; ++l) {
          if ((ok >> l) & 1u) continue;
          const double angle = static_cast<double>(pos) * freq[i + l];
          cos_out[i + l] = static_cast<float>(std::cos(angle));
          sin_out[i + l] = static_cast<float>(std::sin(angle));
        }
      }
    }
  }
}

void RopeAnglesInto(const Rope& rope, int64_t first, size_t n, float* out) {
  const uint32_t half = rope.rope_dim / 2;
  if (half % 8 == 0 && HaveAvx512()) return RopeAnglesAvx512(rope, first, n, out);
  for (size_t t = 0; t < n; ++t) {
    float* c = out + t * 2 * half;
    rope.Angles(first + static_cast<int64_t>(t), c, c + half);
  }
}

bool HaveAvx2() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return have;
}

bool HaveAvx2Fma() {
  static const bool have = HaveAvx2() && __builtin_cpu_supports("fma") != 0;
  return have;
}

bool HaveAvx512() {
  static const bool have = HaveAvx2Fma() && __builtin_cpu_supports("avx512f") != 0;
  return have;
}

bool HaveAvx2F16c() {
  static const bool have = HaveAvx2() && __builtin_cpu_supports("f16c") != 0;
  return have;
}

namespace {

__attribute__((target("avx2,f16c"))) void SaturateToHalvesF16c(const float* in, size_t n,
                                                               uint16_t* out) {
  const __m256 hi = _mm256_set1_ps(baseline::kHalfMax), lo = _mm256_set1_ps(-baseline::kHalfMax);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(in + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
      for (size_t k = i; k < i + 8; ++k)
        out[k] = baseline::HalfSaturate(in[k]);  // a NaN: as HalfSaturate
      continue;
    }
    const __m256 c = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = baseline::HalfSaturate(in[i]);
}

}  // namespace

void SaturateToHalves(const float* in, size_t n, uint16_t* out) {
  if (HaveAvx2F16c()) return SaturateToHalvesF16c(in, n, out);
  for (size_t i = 0; i < n; ++i) out[i] = baseline::HalfSaturate(in[i]);
}

namespace {

__attribute__((target("avx2,f16c"))) bool HalvesToFloatsFiniteF16c(const uint16_t* in, size_t n,
                                                                   float* out) {
  const __m128i exp_mask = _mm_set1_epi16(0x7c00);
  __m128i all_ones = _mm_setzero_si128();  // lanes whose exponent is all ones (inf, NaN)
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    all_ones = _mm_or_si128(all_ones, _mm_cmpeq_epi16(_mm_and_si128(h, exp_mask), exp_mask));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  HalvesToFloats(in + i, n - i, out + i);  // the tail
  return (_mm_testz_si128(all_ones, all_ones) != 0) &&
         baseline::HalvesFinite(reinterpret_cast<const uint8_t*>(in + i), n - i);
}

}  // namespace

bool HalvesToFloatsFinite(const uint16_t* in, size_t n, float* out) {
  if (HaveAvx2F16c()) return HalvesToFloatsFiniteF16c(in, n, out);
  HalvesToFloats(in, n, out);
  return baseline::HalvesFinite(reinterpret_cast<const uint8_t*>(in), n);
}

__attribute__((target("avx2,f16c"))) bool HalvesFromByteSymbolsF16c(const uint32_t* q, size_t n,
                                                                   float* out) {
  // Symbols 2c and 2c + 1 share a 64-bit lane x = lo + hi * 2^32; x | x >> 24 holds lo | hi << 8,
  // the half, in its low 32 bits (lo < 256, so lo >> 24 adds nothing).
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const __m128i exponent = _mm_set1_epi16(0x7c00);
  __m128i bad = _mm_setzero_si128();
  size_t c = 0;
  for (; c + 8 <= n; c += 8) {
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 2 * c));
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 2 * c + 8));
    a = _mm256_permutevar8x32_epi32(_mm256_or_si256(a, _mm256_srli_epi64(a, 24)), even);
    b = _mm256_permutevar8x32_epi32(_mm256_or_si256(b, _mm256_srli_epi64(b, 24)), even);
    const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(a), _mm256_castsi256_si128(b));
    bad = _mm_or_si128(bad, _mm_cmpeq_epi16(_mm_and_si128(h, exponent), exponent));
    _mm256_storeu_ps(out + c, _mm256_cvtph_ps(h));
  }
  bool finite = _mm_movemask_epi8(bad) == 0;
  for (; c < n; ++c) {
    const uint16_t h = static_cast<uint16_t>(q[2 * c] | q[2 * c + 1] << 8);
    finite = finite && (h & 0x7c00u) != 0x7c00u;
    out[c] = _cvtsh_ss(h);
  }
  return finite;
}

__attribute__((target("avx2"))) void FlattenSymbolsAvx2(const uint16_t* base, const int32_t* off,
                                                        const rans::EncSym* const* enc, size_t n,
                                                        size_t t, const rans::EncSym** out) {
  static_assert(sizeof(rans::EncSym) == 16 && sizeof(void*) == 8);
  const __m256i tv = _mm256_set1_epi32(static_cast<int>(t));
  const __m256i low16 = _mm256_set1_epi32(0xffff);
  size_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256i at =
        _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(off + c)), tv);
    // Four bytes from each symbol's address: the symbol and its neighbour, which the mask drops.
    const __m256i v =
        _mm256_and_si256(_mm256_i32gather_epi32(reinterpret_cast<const int*>(base), at, 2), low16);
    const __m256i bytes = _mm256_slli_epi32(v, 4);  // times sizeof(EncSym)
    const __m256i lo =
        _mm256_add_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(enc + c)),
                         _mm256_cvtepu32_epi64(_mm256_castsi256_si128(bytes)));
    const __m256i hi =
        _mm256_add_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(enc + c + 4)),
                         _mm256_cvtepu32_epi64(_mm256_extracti128_si256(bytes, 1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c + 4), hi);
  }
  for (; c < n; ++c) out[c] = enc[c] + base[static_cast<size_t>(off[c]) + t];
}

namespace {

__attribute__((target("avx2"))) float MaxAbsAvx2(const float* x, size_t n) {
  const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m0 = _mm256_setzero_ps(), m1 = m0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + i), mask));
    m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_loadu_ps(x + i + 8), mask));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + i), mask));
  m0 = _mm256_max_ps(m0, m1);
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  float m = _mm_cvtss_f32(h);
  for (; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

}  // namespace

float MaxAbs(const float* x, size_t n) {
  if (HaveAvx2()) return MaxAbsAvx2(x, n);
  float m = 0.0f;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

namespace {

// Two words of four 16-bit values and the exponent, mixed so that every input bit reaches the
// low bits (the table index) and the high half (the tag).
inline uint64_t MixGridKey(uint64_t w0, uint64_t w1, int32_t e) {
  uint64_t k = (w0 ^ static_cast<uint32_t>(e)) * 0x9e3779b97f4a7c15ull;
  k = (k ^ (k >> 31) ^ w1) * 0xbf58476d1ce4e5b9ull;
  return k ^ (k >> 29);
}

__attribute__((target("avx2"))) uint64_t RowGridKeyAvx2(const float* x, float sc, int32_t e) {
  // cvtps2dq rounds as cvtss2si (nearest, ties to even) and gives INT32_MIN where the product
  // does not fit; packs saturates as the scalar clamp does.
  const __m256i g = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), _mm256_set1_ps(sc)));
  const __m256i p = _mm256_packs_epi32(g, g);  // per 128-bit half: its four values, twice
  const uint64_t w0 = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm256_castsi256_si128(p)));
  const uint64_t w1 = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm256_extracti128_si256(p, 1)));
  return MixGridKey(w0, w1, e);
}

}  // namespace

uint64_t RowGridKeyScalar(const float* x, size_t d, float sc, int32_t e) {
  uint64_t w[2] = {0, 0};
  for (size_t j = 0; j < std::min<size_t>(d, 8); ++j) {
    const int32_t g = std::clamp(_mm_cvtss_si32(_mm_set_ss(x[j] * sc)), -32768, 32767);
    w[j / 4] |= uint64_t{static_cast<uint16_t>(g)} << (16 * (j % 4));
  }
  return MixGridKey(w[0], w[1], e);
}

uint64_t RowGridKey(const float* x, size_t d, float sc, int32_t e) {
  if (d >= 8 && HaveAvx2()) return RowGridKeyAvx2(x, sc, e);
  return RowGridKeyScalar(x, d, sc, e);
}

namespace {

// Eight symbols (each below 2^16) to dst[l * ds].
__attribute__((target("avx2"), always_inline)) inline void StoreSymbols(__m256i v, uint16_t* dst,
                                                                      size_t ds) {
  if (ds == 1) {
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0xd8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
    return;
  }
  alignas(32) uint32_t v8[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(v8), v);
  for (int l = 0; l < 8; ++l) dst[l * ds] = static_cast<uint16_t>(v8[l]);
}

template <int B>
uint64_t PriceColumnB(const float* z, size_t zs, size_t n, const float* th, float sigma,
                      const float* g, size_t gs, uint16_t* dst, size_t ds, const uint32_t* cost,
                      const uint8_t* skip) {
  uint64_t c = 0;
  for (size_t t = 0; t < n; ++t) {
    if (skip && skip[t * gs]) continue;  // a repeat: no symbol
    const float scale = g ? sigma * g[t * gs] : sigma;
    const float u = scale > 0.0f ? z[t * zs] / scale : 0.0f;
    uint32_t v = 0;
#pragma GCC unroll 8
    for (int s = B - 1; s >= 0; --s) {
      const uint32_t step = 1u << s;
      v += th[v + step - 1] < u ? step : 0;
    }
    dst[t * ds] = static_cast<uint16_t>(v);
    c += cost[v];
  }
  return c;
}

// The loop of both AVX2 pricing kernels (no gains, no repeats): u = z / sigma (0 where sigma is
// 0, as the scalar path) eight tokens at a time, their symbols from find.Eight, stored, their
// costs summed in 32-bit lanes (flushed every 1024 groups: a lane sums at most 1024 costs
// below 2^20), then the tail one token at a time through find.One.
__attribute__((target("avx2"), always_inline)) inline uint64_t SumLanes(__m256i a) {
  alignas(32) uint32_t a8[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(a8), a);
  uint64_t c = 0;
  for (uint32_t x : a8) c += x;
  return c;
}

template <typename Find>
__attribute__((target("avx2"), always_inline)) inline uint64_t PriceGroups(
    const float* z, size_t zs, size_t n, float sigma, uint16_t* dst, size_t ds,
    const uint32_t* cost, const Find& find) {
  const __m256i lanes = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32(static_cast<int>(zs)));
  const __m256 sg = _mm256_set1_ps(sigma);
  const __m256 zero = _mm256_setzero_ps();
  __m256i acc = _mm256_setzero_si256();
  uint64_t c = 0;
  size_t t = 0, since = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 zv =
        zs == 1 ? _mm256_loadu_ps(z + t) : _mm256_i32gather_ps(z + t * zs, lanes, 4);
    const __m256 u = sigma > 0.0f ? _mm256_div_ps(zv, sg) : zero;
    const __m256i v = find.Eight(u);
    acc = _mm256_add_epi32(acc, find.Cost(cost, v));
    StoreSymbols(v, dst + t * ds, ds);
    if (++since == 1024) {
      c += SumLanes(acc);
      acc = _mm256_setzero_si256();
      since = 0;
    }
  }
  c += SumLanes(acc);
  for (; t < n; ++t) {
    const float u = sigma > 0.0f ? z[t * zs] / sigma : 0.0f;
    const uint32_t v = find.One(u);
    dst[t * ds] = static_cast<uint16_t>(v);
    c += cost[v];
  }
  return c;
}

// The binary search of PriceColumnB over 2^B - 1 thresholds, its lookups as gathers.
template <int B>
struct SearchFind {
  const float* th;
  __attribute__((target("avx2"), always_inline)) __m256i Eight(__m256 u) const {
    __m256i v = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int s = B - 1; s >= 0; --s) {
      const __m256i at = _mm256_add_epi32(v, _mm256_set1_epi32((1 << s) - 1));
      const __m256i lt =
          _mm256_castps_si256(_mm256_cmp_ps(simd::GatherF32(th, at), u, _CMP_LT_OQ));
      v = _mm256_add_epi32(v, _mm256_and_si256(lt, _mm256_set1_epi32(1 << s)));
    }
    return v;
  }
  __attribute__((target("avx2"), always_inline)) __m256i Cost(const uint32_t* cost,
                                                             __m256i v) const {
    return simd::GatherU32(cost, v);
  }
  uint32_t One(float u) const {
    uint32_t v = 0;
    for (int s = B - 1; s >= 0; --s) {
      const uint32_t step = 1u << s;
      v += th[v + step - 1] < u ? step : 0;
    }
    return v;
  }
};

// A QuantLut: one gather of the bucket's start and `fixups` comparisons instead of B gathers.
struct LutFind {
  const QuantLut& q;
  __attribute__((target("avx2"), always_inline)) __m256i Eight(__m256 u) const {
    // as QuantBucket: min(max((u - lo) * inv_w, 0), top), truncated
    const __m256 bt = _mm256_min_ps(
        _mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(u, _mm256_set1_ps(q.lo)),
                                    _mm256_set1_ps(q.inv_w)),
                      _mm256_setzero_ps()),
        _mm256_set1_ps(q.top));
    __m256i v = simd::GatherU32(q.start.data(), _mm256_cvttps_epi32(bt));
    for (int f = 0; f < q.fixups; ++f) {
      const __m256 thv = simd::GatherF32(q.th.data(), v);
      v = _mm256_add_epi32(v, _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(thv, u, _CMP_LT_OQ)),
                                               _mm256_set1_epi32(1)));
    }
    return v;
  }
  __attribute__((target("avx2"), always_inline)) __m256i Cost(const uint32_t* cost,
                                                             __m256i v) const {
    return simd::GatherU32(cost, v);
  }
  uint32_t One(float u) const {
    uint32_t v = q.start[QuantBucket(q, u)];
    for (int f = 0; f < q.fixups; ++f) v += q.th[v] < u ? 1 : 0;
    return v;
  }
};

// Up to four bits: u against every threshold at once (2^B - 1 broadcast comparisons, each
// adding 1 where the threshold is below u: the threshold count itself, no lookups), and the
// symbols' costs picked from registers by a permute (two and a blend for 16 symbols).
template <int B>
struct CompareFind {
  static_assert(B >= 1 && B <= 4);
  static constexpr int kThresholds = (1 << B) - 1;
  __m256 th[kThresholds];
  __m256i cost_lo, cost_hi;
  const float* th_scalar;
  __attribute__((target("avx2"))) CompareFind(const float* t, const uint32_t* cost)
      : th_scalar(t) {
    for (int i = 0; i < kThresholds; ++i) th[i] = _mm256_set1_ps(t[i]);
    alignas(32) uint32_t c[16] = {};
    for (int i = 0; i < (1 << B); ++i) c[i] = cost[i];
    cost_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(c));
    cost_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 8));
  }
  __attribute__((target("avx2"), always_inline)) __m256i Eight(__m256 u) const {
    __m256i v = _mm256_setzero_si256();
    for (int i = 0; i < kThresholds; ++i) {
      v = _mm256_sub_epi32(v, _mm256_castps_si256(_mm256_cmp_ps(th[i], u, _CMP_LT_OQ)));
    }
    return v;
  }
  __attribute__((target("avx2"), always_inline)) __m256i Cost(const uint32_t*, __m256i v) const {
    const __m256i lo = _mm256_permutevar8x32_epi32(cost_lo, v);
    if constexpr (B < 4) return lo;
    const __m256i hi = _mm256_permutevar8x32_epi32(cost_hi, v);  // the low 3 bits of v pick
    return _mm256_blendv_epi8(lo, hi, _mm256_cmpgt_epi32(v, _mm256_set1_epi32(7)));
  }
  uint32_t One(float u) const {
    uint32_t v = 0;
    for (int i = 0; i < kThresholds; ++i) v += th_scalar[i] < u ? 1 : 0;
    return v;
  }
};

template <int B>
__attribute__((target("avx2"))) uint64_t PriceColumnCompareAvx2(const float* z, size_t zs,
                                                               size_t n, const float* th,
                                                               float sigma, uint16_t* dst,
                                                               size_t ds, const uint32_t* cost) {
  const CompareFind<B> find(th, cost);
  return PriceGroups(z, zs, n, sigma, dst, ds, cost, find);
}

// The sum of 16 lanes in 64 bits (16 lanes of up to 2^30 would overflow 32).
__attribute__((target("avx512f"))) uint64_t SumLanes512(__m512i a) {
  alignas(64) uint32_t a16[16];
  _mm512_store_si512(a16, a);
  uint64_t sum = 0;
  for (uint32_t x : a16) sum += x;
  return sum;
}

// table[idx] of a table of 2^B entries held in 2^B / 16 registers: one two-register permute
// per pair of registers, then blends by the index's higher bits.
template <int B>
__attribute__((target("avx512f"), always_inline)) inline __m512i Lookup512(const __m512i* t,
                                                                        __m512i idx) {
  static_assert(B >= 5 && B <= 7);
  __m512i r[4];
  for (int k = 0; k < (1 << B) / 32; ++k) r[k] = _mm512_permutex2var_epi32(t[2 * k], idx, t[2 * k + 1]);
  if constexpr (B == 5) return r[0];
  const __mmask16 b5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
  r[0] = _mm512_mask_blend_epi32(b5, r[0], r[1]);
  if constexpr (B == 6) return r[0];
  r[2] = _mm512_mask_blend_epi32(b5, r[2], r[3]);
  return _mm512_mask_blend_epi32(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(64)), r[0], r[2]);
}

// The binary search of SearchFind<B> (the same symbols) 16 coefficients at a time, for 5 to 7
// bits with AVX-512: every threshold and every cost sits in registers, so each step is a
// permute instead of a gather. Contiguous coefficients and symbols only (zs = ds = 1, no gains,
// no skipped rows); the last group is masked (no scalar tail).
template <int B>
__attribute__((target("avx512f"))) uint64_t PriceColumnSearch512(const float* z, size_t n,
                                                                const float* th, float sigma,
                                                                uint16_t* dst,
                                                                const uint32_t* cost) {
  constexpr int kRegs = (1 << B) / 16;
  alignas(64) uint32_t tb[1 << B], cb[1 << B];
  std::memcpy(tb, th, sizeof(float) * ((1 << B) - 1));
  tb[(1 << B) - 1] = 0;  // never a search step's threshold
  std::memcpy(cb, cost, sizeof(uint32_t) << B);
  __m512i tv[kRegs], cv[kRegs];
  for (int k = 0; k < kRegs; ++k) {
    tv[k] = _mm512_load_si512(tb + 16 * k);
    cv[k] = _mm512_load_si512(cb + 16 * k);
  }
  const __m512 sg = _mm512_set1_ps(sigma);
  __m512i acc = _mm512_setzero_si512();
  uint64_t total = 0;
  size_t since = 0;
  for (size_t t = 0; t < n; t += 16) {
    const __mmask16 m = n - t >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - t)) - 1);
    const __m512 zv = _mm512_maskz_loadu_ps(m, z + t);
    const __m512 u = sigma > 0.0f ? _mm512_div_ps(zv, sg) : _mm512_setzero_ps();
    __m512i v = _mm512_setzero_si512();
    for (int st = B - 1; st >= 0; --st) {
      const __m512i at = _mm512_add_epi32(v, _mm512_set1_epi32((1 << st) - 1));
      const __m512 thr = _mm512_castsi512_ps(Lookup512<B>(tv, at));
      v = _mm512_mask_add_epi32(v, _mm512_cmp_ps_mask(thr, u, _CMP_LT_OQ), v,
                                _mm512_set1_epi32(1 << st));
    }
    acc = _mm512_mask_add_epi32(acc, m, acc, Lookup512<B>(cv, v));
    _mm512_mask_cvtepi32_storeu_epi16(dst + t, m, v);
    if (++since == 1024) {  // a lane sums at most 1024 costs below 2^20
      total += SumLanes512(acc);
      acc = _mm512_setzero_si512();
      since = 0;
    }
  }
  return total + SumLanes512(acc);
}

template <int B>
__attribute__((target("avx2"))) uint64_t PriceColumnAvx2(const float* z, size_t zs, size_t n,
                                                        const float* th, float sigma,
                                                        uint16_t* dst, size_t ds,
                                                        const uint32_t* cost) {
  return PriceGroups(z, zs, n, sigma, dst, ds, cost, SearchFind<B>{th});
}

__attribute__((target("avx2"))) uint64_t PriceColumnLutAvx2(const float* z, size_t zs, size_t n,
                                                           const QuantLut& q, float sigma,
                                                           uint16_t* dst, size_t ds,
                                                           const uint32_t* cost) {
  return PriceGroups(z, zs, n, sigma, dst, ds, cost, LutFind{q});
}

}  // namespace

QuantLut BuildQuantLut(const std::vector<float>& th, int bits) {
  QuantLut q;
  const size_t m = th.size();
  if (m < 3) return q;
  float gap = std::numeric_limits<float>::infinity();
  for (size_t i = 0; i + 1 < m; ++i) {
    if (!(th[i + 1] > th[i])) return q;  // not strictly ascending: no table
    gap = std::min(gap, th[i + 1] - th[i]);
  }
  const double range = static_cast<double>(th[m - 1]) - th[0];
  // Buckets about half the smallest gap wide, so that one holds at most about two thresholds.
  const double want = std::ceil(2.0 * range / gap) + 2.0;
  if (!(want <= 16384.0)) return q;
  const uint32_t nb = static_cast<uint32_t>(want);
  q.lo = th[0];
  q.inv_w = static_cast<float>(static_cast<double>(nb - 2) / range);
  q.top = static_cast<float>(nb - 1);
  if (!(q.inv_w > 0.0f) || !std::isfinite(q.inv_w)) return QuantLut{};
  std::vector<uint32_t> per(nb, 0);
  for (float t : th) ++per[QuantBucket(q, t)];
  q.start.assign(nb, 0);
  uint32_t below = 0, most = 0;
  for (uint32_t b = 0; b < nb; ++b) {
    q.start[b] = below;
    below += per[b];
    most = std::max(most, per[b]);
  }
  // Worth it when the gathers it takes (start, fixups) are fewer than the search's (bits).
  if (static_cast<int>(most) + 1 >= bits) return QuantLut{};
  q.fixups = static_cast<int>(most);
  q.th = th;
  q.th.resize(m + most + 1, std::numeric_limits<float>::infinity());
  return q;
}

// The symbols (QuantizeFast) of n coefficients z[t * zs] at b bits, scale sigma (times g[t * gs]
// when g is given), written to dst[t * ds]; returns their cost, less that of the rows where
// skip[t * gs] is set (repeats).
uint64_t PriceColumn(int b, const float* z, size_t zs, size_t n, const float* th, float sigma,
                     const float* g, size_t gs, uint16_t* dst, size_t ds, const uint32_t* cost,
                     const uint8_t* skip, const QuantLut* lut) {
  if (!g && !skip && zs == 1 && ds == 1 && b >= 5 && b <= 7 && HaveAvx512()) {
    switch (b) {
      case 5: return PriceColumnSearch512<5>(z, n, th, sigma, dst, cost);
      case 6: return PriceColumnSearch512<6>(z, n, th, sigma, dst, cost);
      default: return PriceColumnSearch512<7>(z, n, th, sigma, dst, cost);
    }
  }
  if (!g && !skip && HaveAvx2() && b <= 4) {
    switch (b) {
      case 1: return PriceColumnCompareAvx2<1>(z, zs, n, th, sigma, dst, ds, cost);
      case 2: return PriceColumnCompareAvx2<2>(z, zs, n, th, sigma, dst, ds, cost);
      case 3: return PriceColumnCompareAvx2<3>(z, zs, n, th, sigma, dst, ds, cost);
      default: return PriceColumnCompareAvx2<4>(z, zs, n, th, sigma, dst, ds, cost);
    }
  }
  if (!g && !skip && HaveAvx2() && lut && lut->fixups >= 0) {
    return PriceColumnLutAvx2(z, zs, n, *lut, sigma, dst, ds, cost);
  }
  if (!g && !skip && HaveAvx2()) {  // 5 bits and more (fewer took the comparisons above)
    switch (b) {
      case 5: return PriceColumnAvx2<5>(z, zs, n, th, sigma, dst, ds, cost);
      case 6: return PriceColumnAvx2<6>(z, zs, n, th, sigma, dst, ds, cost);
      case 7: return PriceColumnAvx2<7>(z, zs, n, th, sigma, dst, ds, cost);
      default: return PriceColumnAvx2<8>(z, zs, n, th, sigma, dst, ds, cost);
    }
  }
  switch (b) {
    case 1: return PriceColumnB<1>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 2: return PriceColumnB<2>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 3: return PriceColumnB<3>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 4: return PriceColumnB<4>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 5: return PriceColumnB<5>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 6: return PriceColumnB<6>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 7: return PriceColumnB<7>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    default: return PriceColumnB<8>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
  }
}


}  // namespace kvwire::fraqtl::internal
