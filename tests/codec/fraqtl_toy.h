// Toy profile and data shared by the fraqtl tests: identity basis, geometric variances.
#pragma once

#include <cmath>
#include <random>
#include <vector>

#include "codec/lloyd_max.h"
#include "kvwire/codec.h"
#include "kvwire/profile.h"

namespace kvwire::fraqtl_toy {

constexpr uint32_t kLayers = 2, kHeads = 2, kDim = 16;

inline double Lambda(uint32_t i, uint32_t h) { return std::pow(2.0, -double(i) / 3.0) * (h + 1); }

// A profile with an identity basis, zero mean and geometric variances; Gaussian codebooks.
inline Profile ToyProfile(bool with_rope) {
  Profile p;
  p.layers = kLayers;
  p.kv_heads = kHeads;
  p.heads = 2 * kHeads;
  p.head_dim = kDim;
  p.basis_kind = "pca";
  if (with_rope) {
    p.rope_theta = 10000;
    p.rope_style = "interleaved";
    p.rope_dim = kDim;
  }
  p.bases.resize(size_t{kLayers} * kProfileSlots * kHeads);
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (uint32_t s = 0; s < kProfileSlots; ++s) {
      for (uint32_t h = 0; h < kHeads; ++h) {
        if (s == 1 && !with_rope) continue;
        ProfileBasis& b = p.basis(l, static_cast<ProfileSlot>(s), h);
        b.mean.assign(kDim, 0.0f);
        b.forward.assign(kDim * kDim, 0.0f);
        for (uint32_t i = 0; i < kDim; ++i) b.forward[i * kDim + i] = 1.0f;
        b.inverse = b.forward;
        for (uint32_t i = 0; i < kDim; ++i) b.variance.push_back(Lambda(i, h));
        b.distortion.push_back(1.0);
        for (int k = 1; k <= 8; ++k)
          b.distortion.push_back(baseline::GaussianLloydMax(k).distortion);
      }
    }
  }
  ProfileLevel lv;
  lv.name = "2";
  lv.bits = 2;
  lv.budgets = {3, 1, 2, 2};
  p.levels.push_back(lv);
  return p;
}

inline std::vector<float> ToyData(uint32_t tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0, 1);
  std::vector<float> x(size_t{tokens} * kHeads * kDim);
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t h = 0; h < kHeads; ++h) {
      for (uint32_t i = 0; i < kDim; ++i) {
        x[(size_t{t} * kHeads + h) * kDim + i] =
            static_cast<float>(n(rng) * std::sqrt(Lambda(i, h)));
      }
    }
  }
  return x;
}

inline ChunkDesc Desc(uint32_t layer, KvKind kind, uint32_t tokens) {
  ChunkDesc d;
  d.layer = layer;
  d.kind = kind;
  d.tokens = d.seq_tokens = tokens;
  d.kv_heads = kHeads;
  d.head_dim = kDim;
  d.positions_start = 3;
  return d;
}

}  // namespace kvwire::fraqtl_toy
