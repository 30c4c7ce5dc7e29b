// Inputs and helpers shared by the baseline codec tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvwire/codec.h"

namespace kvwire::testing_util {

inline ChunkDesc MakeDesc(uint32_t tokens, uint32_t heads, uint32_t dim, KvKind kind,
                          uint32_t token_begin = 0, uint32_t seq_tokens = 0) {
  ChunkDesc d;
  d.kind = kind;
  d.tokens = tokens;
  d.kv_heads = heads;
  d.head_dim = dim;
  d.token_begin = token_begin;
  d.seq_tokens = seq_tokens ? seq_tokens : token_begin + tokens;
  return d;
}

/// i.i.d. N(0, sigma^2), [tokens, heads, dim].
inline std::vector<float> GaussianInput(const ChunkDesc& d, uint64_t seed, float sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(d.elements());
  for (float& v : x) v = dist(rng);
  return x;
}

/// Like a real post-RoPE key: a few dominant directions per head, a per-channel offset, two
/// outlier channels 20x larger, plus small isotropic noise.
inline std::vector<float> StructuredInput(const ChunkDesc& d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const uint32_t rank = 4;
  std::vector<float> x(d.elements());
  for (uint32_t h = 0; h < d.kv_heads; ++h) {
    std::vector<float> basis(rank * d.head_dim), offset(d.head_dim);
    for (float& v : basis) v = n01(rng);
    for (float& v : offset) v = 0.5f * n01(rng);
    for (uint32_t t = 0; t < d.tokens; ++t) {
      float a[rank];
      for (uint32_t k = 0; k < rank; ++k) a[k] = n01(rng) * static_cast<float>(4 >> k);
      for (uint32_t i = 0; i < d.head_dim; ++i) {
        float v = offset[i] + 0.05f * n01(rng);
        for (uint32_t k = 0; k < rank; ++k) v += a[k] * basis[k * d.head_dim + i];
        if (i == 3 || i == d.head_dim / 2 + 1) v = 20.0f * v + 10.0f;
        x[(size_t{t} * d.kv_heads + h) * d.head_dim + i] = v;
      }
    }
  }
  return x;
}

inline std::unique_ptr<Codec> MustCreate(const std::string& spec) {
  auto codec = CreateCodec(spec);
  EXPECT_TRUE(codec.ok()) << spec << ": " << codec.status().ToString();
  return codec.ok() ? std::move(codec).value() : nullptr;
}

// Eigenvalues by cyclic Jacobi, an independent check of the Householder + QR solver.
inline std::vector<double> JacobiEigenvalues(size_t n, std::vector<double> a) {
  double frobenius = 0.0;
  for (double v : a) frobenius += v * v;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0.0;
    for (size_t p = 0; p < n; ++p) {
      for (size_t q = p + 1; q < n; ++q) off += a[p * n + q] * a[p * n + q];
    }
    if (off <= 1e-28 * frobenius) break;
    for (size_t p = 0; p < n; ++p) {
      for (size_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (apq == 0.0) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
        const double t =
            (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1.0 / std::sqrt(t * t + 1), s = t * c;
        for (size_t k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (size_t k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
      }
    }
  }
  std::vector<double> ev(n);
  for (size_t i = 0; i < n; ++i) ev[i] = a[i * n + i];
  std::sort(ev.rbegin(), ev.rend());
  return ev;
}

}  // namespace kvwire::testing_util
