// q8_0 (llama.cpp/ggml): blocks of 32 values along head_dim, BlockQ8_0 of block_formats.h —
// CUDA launchers and their scalar references. Same bytes as src/codec/baseline_ggml_q.cpp:
//   d = min(amax / 127, 65504) (float; stored rounded to fp16), id = 1/d (0 when d == 0),
//   q = clamp(round-half-away(x * id), -127, 127); decode q * fp16(d).
// Payload: the chunk's blocks in element order ([tokens, kv_heads, head_dim / 32] blocks).
// head_dim % 32 == 0 (checked at the API edge).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

#include "block_formats.h"
#include "kv_tensor.h"
#include "kvwire/status.h"

namespace kvwire::kern {

inline uint64_t Q8_0PayloadBytes(uint32_t tokens, uint32_t kv_heads, uint32_t head_dim) {
  return uint64_t{tokens} * kv_heads * (head_dim / blocks::kQK) * sizeof(blocks::BlockQ8_0);
}

/// src: KvTensor (device), view tokens `range`; payload: device, Q8_0PayloadBytes bytes.
Status LaunchQ8_0Encode(const KvTensor& src, TokenRange range, uint8_t* payload, uint32_t* errors,
                        cudaStream_t stream);
/// A block whose d is not finite is skipped (kErrBadScale).
Status LaunchQ8_0Decode(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                        uint32_t* errors, cudaStream_t stream);

/// d (float, before fp16 rounding) and 1/d of a block whose largest |x| is `amax`.
struct Q8_0Scale {
  float d, id;
};
KVWIRE_HD inline Q8_0Scale Q8_0ScaleOf(float amax) {
  const float d = kmath::MinStd(kmath::Div(amax, 127.0f), kmath::kHalfMax);
  return {d, d != 0.0f ? kmath::Div(1.0f, d) : 0.0f};
}
KVWIRE_HD inline int8_t QuantizeQ8_0Value(float x, float id) {
  return static_cast<int8_t>(kmath::ClampStd(kmath::RoundAway(kmath::Mul(x, id)), -127.0f, 127.0f));
}

/// One block: x[32] -> *b (the per-block math the kernel runs one lane per value).
inline void QuantizeQ8_0Block_ref(const float* x, blocks::BlockQ8_0* b) {
  float amax = 0.0f;
  for (uint32_t j = 0; j < blocks::kQK; ++j) amax = kmath::MaxStd(amax, kmath::Abs(x[j]));
  const Q8_0Scale s = Q8_0ScaleOf(amax);
  b->d = kmath::FloatToHalfBits(s.d);
  for (uint32_t j = 0; j < blocks::kQK; ++j) b->qs[j] = QuantizeQ8_0Value(x[j], s.id);
}

inline void Q8_0Encode_ref(const KvTensor& src, TokenRange range, uint8_t* payload,
                           uint32_t* errors) {
  const uint32_t per_row = src.row_elems() / blocks::kQK;
  const uint64_t n = uint64_t{range.tokens} * per_row;
  for (uint64_t i = 0; i < n; ++i) {
    const uint32_t t = range.token_begin + static_cast<uint32_t>(i / per_row);
    const uint32_t c0 = static_cast<uint32_t>(i % per_row) * blocks::kQK;
    float x[blocks::kQK];
    for (uint32_t j = 0; j < blocks::kQK; ++j) {
      x[j] = LoadAt(src, t, c0 + j, errors);
      if (!kmath::IsFiniteFloat(x[j])) RaiseError(errors, kErrNonFinite);
    }
    blocks::BlockQ8_0 b;
    QuantizeQ8_0Block_ref(x, &b);
    uint8_t* p = payload + i * sizeof(blocks::BlockQ8_0);
    kmath::StoreU16(p, b.d);
    std::memcpy(p + 2, b.qs, sizeof(b.qs));
  }
}

inline void Q8_0Decode_ref(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                           uint32_t* errors) {
  const uint32_t per_row = dst.row_elems() / blocks::kQK;
  const uint64_t n = uint64_t{range.tokens} * per_row;
  for (uint64_t i = 0; i < n; ++i) {
    const uint8_t* p = payload + i * sizeof(blocks::BlockQ8_0);
    const uint16_t d_h = kmath::LoadU16(p);
    if (!kmath::HalfIsFinite(d_h)) {
      RaiseError(errors, kErrBadScale);
      continue;
    }
    const float d = kmath::HalfBitsToFloat(d_h);
    const uint32_t t = range.token_begin + static_cast<uint32_t>(i / per_row);
    const uint32_t c0 = static_cast<uint32_t>(i % per_row) * blocks::kQK;
    for (uint32_t j = 0; j < blocks::kQK; ++j) {
      const float q = static_cast<float>(static_cast<int8_t>(p[2 + j]));
      StoreAt(dst, t, c0 + j, kmath::Mul(q, d), errors);
    }
  }
}

}  // namespace kvwire::kern
