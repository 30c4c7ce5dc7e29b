// Scalar arithmetic shared by the CUDA kernels and their host `_ref` references, written so that
// both produce the CPU codecs' exact bits:
//  - every float operation is a separately rounded IEEE op (no FMA contraction: nvcc contracts
//    a*b+c by default, the CPU build (x86-64-v2, no FMA) never does), hence Mul/Add/Sub/Div;
//  - fp16/bf16 conversions round to nearest even (src/common/fp16.h on the host, the cuda_fp16
//    intrinsics on the device; both are IEEE RNE, overflow to infinity);
//  - the rounding-direction helpers mirror src/codec/quant_common.h bit for bit.
// Include from .cu files (device + host) and from plain C++ (host only; needs src/ on the
// include path for common/fp16.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "block_formats.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#if !defined(__CUDA_ARCH__)
#include "common/fp16.h"
#endif

namespace kvwire::kmath {

inline constexpr float kHalfMax = 65504.0f;
inline constexpr uint16_t kHalfMaxBits = 0x7bff;

// ---- separately rounded float ops ---------------------------------------------------------

KVWIRE_HD inline float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KVWIRE_HD inline float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
KVWIRE_HD inline float Sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
KVWIRE_HD inline float Div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
/// Nearest integer, ties to even (std::nearbyint in the default rounding mode).
KVWIRE_HD inline float RoundEven(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}
/// Nearest integer, ties away from zero (std::round, ggml's roundf).
KVWIRE_HD inline float RoundAway(float x) {
#if defined(__CUDA_ARCH__)
  return roundf(x);
#else
  return std::round(x);
#endif
}
KVWIRE_HD inline float Abs(float x) {
#if defined(__CUDA_ARCH__)
  return fabsf(x);
#else
  return std::fabs(x);
#endif
}

// std::min / std::max / std::clamp exactly (argument order matters for +-0).
KVWIRE_HD inline float MinStd(float a, float b) { return b < a ? b : a; }
KVWIRE_HD inline float MaxStd(float a, float b) { return a < b ? b : a; }
KVWIRE_HD inline float ClampStd(float v, float lo, float hi) {
  return v < lo ? lo : (hi < v ? hi : v);
}

// ---- conversions --------------------------------------------------------------------------

KVWIRE_HD inline uint16_t FloatToHalfBits(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  return FloatToHalf(f);
#endif
}
KVWIRE_HD inline float HalfBitsToFloat(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  return HalfToFloat(h);
#endif
}
KVWIRE_HD inline uint16_t FloatToBf16Bits(float f) {
#if defined(__CUDA_ARCH__)
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
  return FloatToBf16(f);
#endif
}
KVWIRE_HD inline float Bf16BitsToFloat(uint16_t b) {
#if defined(__CUDA_ARCH__)
  return __bfloat162float(__ushort_as_bfloat16(b));
#else
  return Bf16ToFloat(b);
#endif
}

KVWIRE_HD inline bool IsFiniteFloat(float f) {
#if defined(__CUDA_ARCH__)
  return isfinite(f);
#else
  return std::isfinite(f);
#endif
}

// ---- fp16 rounding in a chosen direction (quant_common.h) ---------------------------------

KVWIRE_HD inline bool HalfIsFinite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }
/// Finite and not negative (-0 accepted): a valid scale.
KVWIRE_HD inline bool HalfIsScale(uint16_t h) {
  return HalfIsFinite(h) && (h < 0x8000u || h == 0x8000u);
}

/// Smallest fp16 >= v for v >= 0, saturating at 65504.
KVWIRE_HD inline uint16_t HalfRoundUp(float v) {
  if (!(v < kHalfMax)) return kHalfMaxBits;
  uint16_t h = FloatToHalfBits(v);
  if (HalfBitsToFloat(h) < v) ++h;
  return h;
}

/// Largest fp16 <= v for |v| <= 65504.
KVWIRE_HD inline uint16_t HalfRoundDown(float v) {
  uint16_t h = FloatToHalfBits(v);
  if (HalfBitsToFloat(h) > v) {
    if (h == 0x0000u) return 0x8001u;
    h = (h & 0x8000u) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h - 1);
  }
  return h;
}

// ---- asymmetric uniform b-bit (kivi): the recipe of quant_common.h ------------------------

struct Uniform {
  uint16_t scale_h;
  uint16_t min_h;
  float scale;  // HalfBitsToFloat(scale_h)
  float min;    // HalfBitsToFloat(min_h)
  float div;    // scale, or 1 for an all-equal group
};

/// Parameters of a group with values in [lo, hi] (finite), levels_minus_1 = 2^b - 1.
KVWIRE_HD inline Uniform ChooseUniform(float lo, float hi, uint32_t levels_minus_1) {
  lo = Add(ClampStd(lo, -kHalfMax, kHalfMax), 0.0f);  // + 0 turns -0 into +0
  hi = Add(ClampStd(hi, -kHalfMax, kHalfMax), 0.0f);
  Uniform p;
  p.min_h = HalfRoundDown(lo);
  p.min = HalfBitsToFloat(p.min_h);
  p.scale_h = HalfRoundUp(Div(Sub(hi, p.min), static_cast<float>(levels_minus_1)));
  p.scale = HalfBitsToFloat(p.scale_h);
  p.div = p.scale > 0.0f ? p.scale : 1.0f;
  return p;
}

/// The parameters stored in a payload (validity checked by the caller).
KVWIRE_HD inline Uniform UniformFromHalves(uint16_t scale_h, uint16_t min_h) {
  Uniform p;
  p.scale_h = scale_h;
  p.min_h = min_h;
  p.scale = HalfBitsToFloat(scale_h);
  p.min = HalfBitsToFloat(min_h);
  p.div = p.scale > 0.0f ? p.scale : 1.0f;
  return p;
}

KVWIRE_HD inline uint32_t QuantizeUniform(float x, float min, float div, float levels_minus_1) {
  float q = RoundEven(Div(Sub(x, min), div));
  q = q < 0.0f ? 0.0f : q;
  q = q > levels_minus_1 ? levels_minus_1 : q;
  return static_cast<uint32_t>(static_cast<int32_t>(q));
}

KVWIRE_HD inline float DequantizeUniform(uint32_t q, float scale, float min) {
  return Add(Mul(static_cast<float>(q), scale), min);
}

// ---- int8 (symmetric, per row) ------------------------------------------------------------

KVWIRE_HD inline int8_t QuantizeSymmetric127(float x, float div) {
  float q = RoundEven(Div(x, div));
  q = q < -127.0f ? -127.0f : q;
  q = q > 127.0f ? 127.0f : q;
  return static_cast<int8_t>(static_cast<int32_t>(q));
}

// ---- little-endian fields of a byte payload ----------------------------------------------

KVWIRE_HD inline void StoreU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
KVWIRE_HD inline uint16_t LoadU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
KVWIRE_HD inline void StoreU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
KVWIRE_HD inline uint32_t LoadU32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

}  // namespace kvwire::kmath
