// Step 6 of fraqtl: a 1-bit sign sketch of the quantization residual (QJL-style).
//
// Per (layer, K|V, kv_head) a fixed +-1 matrix S [m, D] is derived from a seed (below); per
// quantized (token, head) the encoder sends the signs of S r, r = z - z^ the residual in the
// coding domain, and ||r|| (fp16). The decoder adds  c(m, D) ||r|| S^T sign(S r)  to z^.
//
// The scale. For one row s (entries +-1, ||s||^2 = D) and D not tiny, s.r is close to
// N(0, ||r||^2), so E[s sign(s.r)] = sqrt(2/pi) r / ||r||: the QJL scale sqrt(pi/2) / m makes
// the estimate unbiased. Its variance is large, though: E||r^ - r||^2 is about
// (pi D / (2 m) - 1) ||r||^2, more than the residual itself whenever m < pi D / 4, so the
// unbiased estimate makes the coded vector worse on average. The decoder instead uses the
// scale that minimizes E||r - c ||r|| S^T sign(S r)||^2 under the same Gaussian model:
// E[r.S^T sign] = m sqrt(2/pi) ||r|| and E||S^T sign||^2 = m D + m (m - 1) 2/pi, so
//   c(m, D) = sqrt(2/pi) / (D + (m - 1) 2/pi),
// leaving a residual energy of 1 - (2/pi) m / (D + (m - 1) 2/pi) of ||r||^2 (0.76 at m = D/2).
// tests/codec/fraqtl_sketch_test.cpp checks both scales numerically.
//
// The matrix: state = kSketchSeed ^ (layer << 17) ^ (kind << 16) ^ head (kind 0 = K, 1 = V),
// outputs o_0, o_1, ... of splitmix64 from that state; with w = ceil(D / 64) words per row,
// S[k, j] = +1 when bit (j mod 64) of o_(k w + j / 64) is set, else -1.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace kvwire::fraqtl {

inline constexpr uint64_t kSketchSeed = 0x6b76776972655331ull;  // "kvwireS1"

inline uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// The sketch matrix of (layer, kind, head): [m, d] row-major, entries +-1.
inline std::vector<float> SketchMatrix(uint32_t layer, uint32_t kind, uint32_t head, uint32_t m,
                                       uint32_t d) {
  uint64_t state = kSketchSeed ^ (uint64_t{layer} << 17) ^ (uint64_t{kind} << 16) ^ head;
  std::vector<float> s(size_t{m} * d);
  for (uint32_t k = 0; k < m; ++k) {
    uint64_t word = 0;
    for (uint32_t j = 0; j < d; ++j) {
      if (j % 64 == 0) word = SplitMix64(&state);
      s[size_t{k} * d + j] = (word >> (j % 64)) & 1u ? 1.0f : -1.0f;
    }
  }
  return s;
}

/// MSE-optimal scale of the estimate (header comment).
inline double SketchShrink(uint32_t m, uint32_t d) {
  const double two_over_pi = 2.0 / 3.14159265358979323846;
  return std::sqrt(two_over_pi) / (static_cast<double>(d) + (m - 1.0) * two_over_pi);
}

/// Unbiased (QJL) scale, for comparison in tests.
inline double SketchUnbiased(uint32_t m) {
  return std::sqrt(3.14159265358979323846 / 2.0) / static_cast<double>(m);
}

/// sign bits of S r: bit k = 1 when sum_j S[k, j] r_j (float, j ascending) >= 0.
inline void SketchSigns(const float* s, uint32_t m, uint32_t d, const float* r, uint8_t* bits) {
  for (uint32_t k = 0; k < m; ++k) {
    float acc = 0.0f;
    const float* row = s + size_t{k} * d;
    for (uint32_t j = 0; j < d; ++j) acc += row[j] * r[j];
    bits[k] = acc >= 0.0f ? 1 : 0;
  }
}

/// z_j += scale * sum_k (bit_k ? S[k, j] : -S[k, j]), the sum over k ascending (exact: small
/// integers in float).
inline void SketchAdd(const float* s, uint32_t m, uint32_t d, const uint8_t* bits, float scale,
                      float* z, float* tmp /* [d] */) {
  for (uint32_t j = 0; j < d; ++j) tmp[j] = 0.0f;
  for (uint32_t k = 0; k < m; ++k) {
    const float* row = s + size_t{k} * d;
    if (bits[k]) {
      for (uint32_t j = 0; j < d; ++j) tmp[j] += row[j];
    } else {
      for (uint32_t j = 0; j < d; ++j) tmp[j] -= row[j];
    }
  }
  for (uint32_t j = 0; j < d; ++j) z[j] += scale * tmp[j];
}

}  // namespace kvwire::fraqtl
