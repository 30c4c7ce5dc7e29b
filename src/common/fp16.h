// Scalar fp16/bf16 <-> fp32 conversions (round to nearest even), shared by every codec and view.
// Header-only so the compiler can vectorize loops over them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kvwire {

// Bit casts through memcpy (also C++17: nvcc compiles this header for kernels/); compilers turn
// them into plain register moves, so the loops below still vectorize.
inline uint32_t FloatBits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline float BitsFloat(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

inline uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {  // subnormal half or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t mant = (abs & 0x007fffffu) | 0x00800000u;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14..24
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half_point = 1u << (shift - 1);
    if (rem > half_point || (rem == half_point && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = (uint32_t{h} & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: value = mant * 2^-24
      x = FloatBits(static_cast<float>(mant) * 5.9604644775390625e-8f) | sign;
    }
  } else if (exp == 31) {
    x = sign | 0x7f800000u | (mant << 13);
  } else {
    x = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  return BitsFloat(x);
}

inline uint16_t FloatToBf16(float f) {
  uint32_t x = FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // nan
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

inline float Bf16ToFloat(uint16_t b) { return BitsFloat(uint32_t{b} << 16); }

// Branch-free versions (GCC vectorizes loops over them), bit-identical to the above.

/// Branch-free float -> fp16, round to nearest even; equals FloatToHalf for every input.
inline uint16_t FloatToHalfFast(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  // Normal range: rebias the exponent and round the 13 dropped bits to nearest even.
  const uint32_t normal = (abs + 0xc8000fffu + ((abs >> 13) & 1u)) >> 13;
  // Subnormal range: the hardware adder rounds abs to a multiple of 2^-24 when adding 0.5.
  const uint32_t sub = FloatBits(BitsFloat(abs) + 0.5f) - 0x3f000000u;
  // Selects by all-ones/all-zero masks: GCC vectorizes these, not the equivalent ?: chain.
  const uint32_t is_sub = 0u - static_cast<uint32_t>(abs < 0x38800000u);
  const uint32_t is_inf = 0u - static_cast<uint32_t>(abs >= 0x477ff000u);  // rounds to infinity
  const uint32_t is_nan = 0u - static_cast<uint32_t>(abs > 0x7f800000u);
  uint32_t h = (sub & is_sub) | (normal & ~is_sub);
  h = (0x7c00u & is_inf) | (h & ~is_inf);
  h = (0x7e00u & is_nan) | (h & ~is_nan);
  return static_cast<uint16_t>(sign | h);
}

/// Branch-free fp16 -> float; equals HalfToFloat for every input.
inline float HalfToFloatFast(uint16_t h) {
  const uint32_t sign = (uint32_t{h} & 0x8000u) << 16;
  const uint32_t o = ((uint32_t{h} & 0x7fffu) << 13) + 0x38000000u;
  const uint32_t exp = (uint32_t{h} & 0x7c00u);
  // Subnormal: 2^-14 * (1 + m/1024) - 2^-14 = m * 2^-24, exactly.
  const uint32_t sub = FloatBits(BitsFloat(o + 0x00800000u) - BitsFloat(0x38800000u));
  const uint32_t is_inf = 0u - static_cast<uint32_t>(exp == 0x7c00u);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(exp == 0);
  uint32_t r = o + (0x38000000u & is_inf);
  r = (sub & is_sub) | (r & ~is_sub);
  return BitsFloat(r | sign);
}

/// Rounds a float through fp16 and back (what storing it at fp16 does to it).
inline float RoundToHalf(float f) { return HalfToFloat(FloatToHalf(f)); }

/// n values at once, F16C where the CPU has it (kv_view.cpp): HalfToFloatFast / FloatToHalfFast
/// of each value (NaN payloads aside).
void HalvesToFloats(const uint16_t* in, size_t n, float* out);
void FloatsToHalves(const float* in, size_t n, uint16_t* out);

}  // namespace kvwire
