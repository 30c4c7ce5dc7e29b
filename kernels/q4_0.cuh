// q4_0 (llama.cpp/ggml): blocks of 32 values along head_dim, BlockQ4_0 of block_formats.h —
// CUDA launchers and their scalar references. Same bytes as src/codec/baseline_ggml_q.cpp:
//   m = the value of largest magnitude (the first one on ties; 0 for an all-zero block),
//   d = clamp(m / -8, -65504, 65504) (float; stored rounded to fp16), id = 1/d (0 when d == 0),
//   q = min(15, trunc(max(x * id + 8.5, 0))); byte j = q[j] | q[j + 16] << 4;
//   decode (q - 8) * fp16(d).
// Payload: the chunk's blocks in element order. head_dim % 32 == 0 (checked at the API edge).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

#include "block_formats.h"
#include "kv_tensor.h"
#include "kvwire/status.h"

namespace kvwire::kern {

inline uint64_t Q4_0PayloadBytes(uint32_t tokens, uint32_t kv_heads, uint32_t head_dim) {
  return uint64_t{tokens} * kv_heads * (head_dim / blocks::kQK) * sizeof(blocks::BlockQ4_0);
}

/// src: KvTensor (device), view tokens `range`; payload: device, Q4_0PayloadBytes bytes.
Status LaunchQ4_0Encode(const KvTensor& src, TokenRange range, uint8_t* payload, uint32_t* errors,
                        cudaStream_t stream);
/// A block whose d is not finite is skipped (kErrBadScale).
Status LaunchQ4_0Decode(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                        uint32_t* errors, cudaStream_t stream);

/// q of one value given the block's id (shared by the reference and the kernel).
KVWIRE_HD inline uint8_t QuantizeQ4_0Value(float x, float id) {
  const float v = kmath::MaxStd(kmath::Add(kmath::Mul(x, id), 8.5f), 0.0f);
  const int32_t q = static_cast<int32_t>(v);
  return static_cast<uint8_t>(q < 15 ? q : 15);
}

/// d (float, before fp16 rounding) and 1/d of a block whose first value of largest magnitude
/// is `max`.
struct Q4_0Scale {
  float d, id;
};
KVWIRE_HD inline Q4_0Scale Q4_0ScaleOf(float max) {
  const float d = kmath::ClampStd(kmath::Div(max, -8.0f), -kmath::kHalfMax, kmath::kHalfMax);
  return {d, d != 0.0f ? kmath::Div(1.0f, d) : 0.0f};
}

/// One block: x[32] -> *b.
inline void QuantizeQ4_0Block_ref(const float* x, blocks::BlockQ4_0* b) {
  float amax = 0.0f, max = 0.0f;
  for (uint32_t j = 0; j < blocks::kQK; ++j) {
    if (amax < kmath::Abs(x[j])) {
      amax = kmath::Abs(x[j]);
      max = x[j];
    }
  }
  const Q4_0Scale s = Q4_0ScaleOf(max);
  b->d = kmath::FloatToHalfBits(s.d);
  uint8_t q[blocks::kQK];
  for (uint32_t j = 0; j < blocks::kQK; ++j) q[j] = QuantizeQ4_0Value(x[j], s.id);
  for (uint32_t j = 0; j < blocks::kQK / 2; ++j)
    b->qs[j] = static_cast<uint8_t>(q[j] | (q[j + blocks::kQK / 2] << 4));
}

inline void Q4_0Encode_ref(const KvTensor& src, TokenRange range, uint8_t* payload,
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
    blocks::BlockQ4_0 b;
    QuantizeQ4_0Block_ref(x, &b);
    uint8_t* p = payload + i * sizeof(blocks::BlockQ4_0);
    kmath::StoreU16(p, b.d);
    std::memcpy(p + 2, b.qs, sizeof(b.qs));
  }
}

inline void Q4_0Decode_ref(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                           uint32_t* errors) {
  const uint32_t per_row = dst.row_elems() / blocks::kQK;
  const uint64_t n = uint64_t{range.tokens} * per_row;
  for (uint64_t i = 0; i < n; ++i) {
    const uint8_t* p = payload + i * sizeof(blocks::BlockQ4_0);
    const uint16_t d_h = kmath::LoadU16(p);
    if (!kmath::HalfIsFinite(d_h)) {
      RaiseError(errors, kErrBadScale);
      continue;
    }
    const float d = kmath::HalfBitsToFloat(d_h);
    const uint32_t t = range.token_begin + static_cast<uint32_t>(i / per_row);
    const uint32_t c0 = static_cast<uint32_t>(i % per_row) * blocks::kQK;
    for (uint32_t j = 0; j < blocks::kQK; ++j) {
      const uint8_t byte = p[2 + j % (blocks::kQK / 2)];
      const int32_t q = j < blocks::kQK / 2 ? (byte & 0x0f) : (byte >> 4);
      StoreAt(dst, t, c0 + j, kmath::Mul(static_cast<float>(q - 8), d), errors);
    }
  }
}

}  // namespace kvwire::kern
