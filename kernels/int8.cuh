// int8: symmetric 8-bit per (token, head) row — CUDA launchers and their scalar references.
// Same payload, bit for bit, as the CPU codec (src/codec/baseline_int8.cpp):
//   fp16 scales[tokens * kv_heads]                 scale = amax / 127 rounded up to an fp16
//   int8 q[tokens, kv_heads, head_dim]             q = round-half-even(x / scale), |q| <= 127
// Decode: x = q * scale, rounded to the destination type.
//
// Launchers take a stream, allocate nothing, validate nothing (the API edge, cuda_codec.cpp,
// does); `errors` is a device word the kernels OR kErr* bits into (may be null).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "kv_tensor.h"
#include "kvwire/status.h"

namespace kvwire::kern {

inline uint64_t Int8PayloadBytes(uint32_t tokens, uint32_t kv_heads, uint32_t head_dim) {
  const uint64_t rows = uint64_t{tokens} * kv_heads;
  return rows * blocks::kInt8ScaleBytes + rows * head_dim;
}

/// src: KvTensor (device), chunk rows = view tokens `range`;
/// payload: device, Int8PayloadBytes(range.tokens, ...) bytes.
Status LaunchInt8Encode(const KvTensor& src, TokenRange range, uint8_t* payload, uint32_t* errors,
                        cudaStream_t stream);
/// payload: device, Int8PayloadBytes bytes; dst: KvTensor (device), written at view tokens
/// `range`. A row whose scale is not a finite non-negative fp16 is skipped (kErrBadScale).
Status LaunchInt8Decode(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                        uint32_t* errors, cudaStream_t stream);

/// fp16 scale of a row whose largest |x| is `amax`: amax / 127 rounded up to an fp16.
KVWIRE_HD inline uint16_t Int8ScaleOf(float amax) {
  return kmath::HalfRoundUp(kmath::Div(amax, 127.0f));
}

// ---- scalar references (host memory) ------------------------------------------------------

inline void Int8Encode_ref(const KvTensor& src, TokenRange range, uint8_t* payload,
                           uint32_t* errors) {
  const uint32_t d = src.head_dim;
  const uint64_t rows = uint64_t{range.tokens} * src.kv_heads;
  uint8_t* scales = payload;
  auto* q = reinterpret_cast<int8_t*>(payload + 2 * rows);
  for (uint64_t r = 0; r < rows; ++r) {
    const uint32_t t = range.token_begin + static_cast<uint32_t>(r / src.kv_heads);
    const uint32_t h0 = static_cast<uint32_t>(r % src.kv_heads) * d;
    float amax = 0.0f;
    for (uint32_t j = 0; j < d; ++j) {
      const float x = LoadAt(src, t, h0 + j, errors);
      if (!kmath::IsFiniteFloat(x)) RaiseError(errors, kErrNonFinite);
      amax = std::max(amax, kmath::Abs(x));
    }
    const uint16_t scale_h = Int8ScaleOf(amax);
    kmath::StoreU16(scales + 2 * r, scale_h);
    const float scale = kmath::HalfBitsToFloat(scale_h);
    const float div = scale > 0.0f ? scale : 1.0f;
    for (uint32_t j = 0; j < d; ++j) {
      q[r * d + j] = kmath::QuantizeSymmetric127(LoadAt(src, t, h0 + j, nullptr), div);
    }
  }
}

inline void Int8Decode_ref(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                           uint32_t* errors) {
  const uint32_t d = dst.head_dim;
  const uint64_t rows = uint64_t{range.tokens} * dst.kv_heads;
  const auto* q = reinterpret_cast<const int8_t*>(payload + 2 * rows);
  for (uint64_t r = 0; r < rows; ++r) {
    const uint16_t scale_h = kmath::LoadU16(payload + 2 * r);
    if (!kmath::HalfIsScale(scale_h)) {
      RaiseError(errors, kErrBadScale);
      continue;
    }
    const float scale = kmath::HalfBitsToFloat(scale_h);
    const uint32_t t = range.token_begin + static_cast<uint32_t>(r / dst.kv_heads);
    const uint32_t h0 = static_cast<uint32_t>(r % dst.kv_heads) * d;
    for (uint32_t j = 0; j < d; ++j) {
      StoreAt(dst, t, h0 + j, kmath::Mul(static_cast<float>(q[r * d + j]), scale), errors);
    }
  }
}

}  // namespace kvwire::kern
