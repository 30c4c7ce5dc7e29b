// Helpers shared by the baseline codecs: chunk validation, little-endian fields, fp16 rounding
// in a chosen direction, batch fp16 conversion, bit packing.
//
// Bit packing (docs/FORMAT.md): a sequence of n values of b bits (1 <= b <= 8) is one bit
// stream, LSB-first: bit j (0 = least significant) of value i is stream bit i*b + j, and stream
// bit k is bit (k % 8) of byte k / 8. The stream takes ceil(n*b / 8) bytes; unused high bits of
// the last byte are zero. So for b = 4, byte 0 holds value 0 in its low nibble and value 1 in its
// high nibble.
//
// Multi-byte fields are little-endian. "Ref" functions are the scalar definitions; the others
// compute the same bits with loops the compiler can vectorize.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/fp16.h"
#include "kvwire/codec.h"
#include "kvwire/status.h"

namespace kvwire::baseline {

static_assert(std::endian::native == std::endian::little,
              "the optimized paths memcpy little-endian fields");

inline constexpr float kHalfMax = 65504.0f;
inline constexpr uint16_t kHalfMaxBits = 0x7bff;

// ---- validation ------------------------------------------------------------------------------

/// Shape of a chunk against the global bounds (kv_heads, head_dim > 0; tokens may be 0).
inline Status CheckChunkShape(const ChunkDesc& d, std::string_view codec) {
  KVWIRE_RETURN_ERROR_IF(d.kv_heads == 0 || d.kv_heads > kMaxKvHeads || d.head_dim == 0 ||
                             d.head_dim > kMaxHeadDim || d.tokens > kMaxTokens,
                         kInvalidArgument,
                         std::string(codec) + ": chunk shape [" + std::to_string(d.tokens) + ", " +
                             std::to_string(d.kv_heads) + ", " + std::to_string(d.head_dim) +
                             "] outside the supported bounds");
  return Status::Ok();
}

/// kInvalidArgument naming the first non-finite element of `in` ([tokens, kv_heads, head_dim]).
inline Status CheckFinite(const ChunkDesc& d, const float* in, std::string_view codec) {
  const size_t n = d.elements();
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {  // branch-free OR so the common (all finite) case vectorizes
    bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(in[i]) & 0x7f800000u) == 0x7f800000u);
  }
  if (!bad) return Status::Ok();
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(in[i])) {
      const size_t row = i / d.head_dim;
      return Status(StatusCode::kInvalidArgument, std::string(codec) +
                                                      ": non-finite input at token " +
                                                      std::to_string(row / d.kv_heads) + ", head " +
                                                      std::to_string(row % d.kv_heads) + ", dim " +
                                                      std::to_string(i % d.head_dim));
    }
  }
  return Status::Ok();
}

inline Status CheckPayloadSize(size_t got, uint64_t expected, std::string_view codec) {
  KVWIRE_RETURN_ERROR_IF(got != expected, kCorrupt,
                         std::string(codec) + ": payload of " + std::to_string(got) +
                             " bytes, expected " + std::to_string(expected));
  return Status::Ok();
}

// ---- per-thread scratch ---------------------------------------------------------------------

/// A per-thread byte buffer of at least `n` bytes, reused across calls and not zeroed: the index
/// bytes of one chunk, which a codec fully writes before reading. One user at a time per thread
/// (Encode and Decode do not nest). A fresh zero-filled vector per chunk cost the session's
/// sender and receiver a large share of their CPU in page clearing and faults.
inline uint8_t* ThreadScratchBytes(size_t n) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// ---- little-endian fields --------------------------------------------------------------------

inline void StoreU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline void StoreU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint32_t LoadU32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
/// Reads the fp16 at byte offset 2*i of `p`.
inline float LoadHalf(const uint8_t* p, size_t i) { return HalfToFloat(LoadU16(p + 2 * i)); }

// ---- fp16 rounding ---------------------------------------------------------------------------

inline bool HalfIsFinite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }
/// Finite and not negative (a valid scale or norm; -0 is accepted).
inline bool HalfIsScale(uint16_t h) { return HalfIsFinite(h) && (h < 0x8000u || h == 0x8000u); }

/// Nearest fp16, saturating at +-65504 instead of overflowing to infinity.
inline uint16_t HalfSaturate(float v) { return FloatToHalf(std::clamp(v, -kHalfMax, kHalfMax)); }

/// Smallest fp16 >= v for 0 <= v (saturates at 65504).
inline uint16_t HalfRoundUp(float v) {
  if (!(v < kHalfMax)) return kHalfMaxBits;
  uint16_t h = FloatToHalf(v);
  if (HalfToFloat(h) < v) ++h;  // v >= 0: the next larger half is the next bit pattern
  return h;
}

/// Largest fp16 <= v for |v| <= 65504.
inline uint16_t HalfRoundDown(float v) {
  uint16_t h = FloatToHalf(v);
  if (HalfToFloat(h) > v) {
    if (h == 0x0000u) return 0x8001u;   // +0 > v: step to the smallest negative subnormal
    h = (h & 0x8000u) ? h + 1 : h - 1;  // away from zero when negative, toward when positive
  }
  return h;
}

// ---- batch fp16 conversion (FloatToHalfFast / HalfToFloatFast live in common/fp16.h) ----------

/// Writes n fp16 (little-endian) of `in` to `out` (2n bytes). Reference: one value at a time.
inline void StoreHalvesRef(const float* in, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) StoreU16(out + 2 * i, FloatToHalf(in[i]));
}
inline void LoadHalvesRef(const uint8_t* in, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = LoadHalf(in, i);
}

/// Same bytes as StoreHalvesRef, vectorizable.
inline void StoreHalves(const float* in, size_t n, uint8_t* out) {
  constexpr size_t kBlock = 256;
  uint16_t buf[kBlock];
  for (size_t i = 0; i < n; i += kBlock) {
    const size_t m = std::min(kBlock, n - i);
    for (size_t j = 0; j < m; ++j) buf[j] = FloatToHalfFast(in[i + j]);
    std::memcpy(out + 2 * i, buf, 2 * m);
  }
}
inline void LoadHalves(const uint8_t* in, size_t n, float* out) {
  constexpr size_t kBlock = 256;
  uint16_t buf[kBlock];
  for (size_t i = 0; i < n; i += kBlock) {
    const size_t m = std::min(kBlock, n - i);
    std::memcpy(buf, in + 2 * i, 2 * m);
    for (size_t j = 0; j < m; ++j) out[i + j] = HalfToFloatFast(buf[j]);
  }
}

/// True when all n fp16 at `p` (little-endian) are finite: no exponent field of all ones.
/// HalvesFiniteRef is the scalar definition, HalvesFinite the fast one.
inline bool HalvesFiniteRef(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if ((p[2 * i + 1] & 0x7cu) == 0x7cu) return false;
  }
  return true;
}
inline bool HalvesFinite(const uint8_t* p, size_t n) {
  size_t i = 0;
  bool finite = true;
#if defined(__SSE2__)
  // Eight halves per 16 bytes, four vectors per step: a lane is non-finite when its exponent
  // bits, masked, equal the mask. About 3x the word loop below on L2-resident payloads
  // (bench/stream_passes_bench.cpp).
  const __m128i exp = _mm_set1_epi16(0x7c00);
  __m128i hit = _mm_setzero_si128();
  for (; i + 32 <= n; i += 32) {
    const auto* v = reinterpret_cast<const __m128i*>(p + 2 * i);
    const __m128i a = _mm_and_si128(_mm_loadu_si128(v), exp);
    const __m128i b = _mm_and_si128(_mm_loadu_si128(v + 1), exp);
    const __m128i c = _mm_and_si128(_mm_loadu_si128(v + 2), exp);
    const __m128i d = _mm_and_si128(_mm_loadu_si128(v + 3), exp);
    hit = _mm_or_si128(hit, _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi16(a, exp),
                                                      _mm_cmpeq_epi16(b, exp)),
                                         _mm_or_si128(_mm_cmpeq_epi16(c, exp),
                                                      _mm_cmpeq_epi16(d, exp))));
  }
  finite = _mm_movemask_epi8(hit) == 0;
#endif
  // Four halves per 64-bit word. In each 16-bit lane, t = (exponent bits) ^ (all ones) is 0 for
  // a non-finite value and at least 0x0400 (0x0004 big-endian) otherwise, so t - 1 sets the
  // lane's top bit exactly when t is 0 (a lower lane's borrow takes at most 1 more).
  constexpr bool kLittle = std::endian::native == std::endian::little;
  constexpr uint64_t kExp = kLittle ? 0x7c007c007c007c00ull : 0x007c007c007c007cull;
  uint64_t hit64 = 0;
  for (; i + 4 <= n; i += 4) {
    uint64_t w;
    std::memcpy(&w, p + 2 * i, 8);
    const uint64_t t = (w & kExp) ^ kExp;
    hit64 |= (t - 0x0001000100010001ull) & 0x8000800080008000ull;
  }
  for (; i < n; ++i) hit64 |= static_cast<uint64_t>((p[2 * i + 1] & 0x7cu) == 0x7cu);
  return finite && hit64 == 0;
}
/// CheckFinite for n = d.elements() fp16 values at `p` (little-endian), with its message.
inline Status CheckFiniteHalves(const ChunkDesc& d, const uint8_t* p, std::string_view codec) {
  const size_t n = d.elements();
  if (HalvesFinite(p, n)) return Status::Ok();
  size_t i = 0;
  while ((p[2 * i + 1] & 0x7cu) != 0x7cu) ++i;
  const size_t row = i / d.head_dim;
  return Status(StatusCode::kInvalidArgument,
                std::string(codec) + ": non-finite input at token " +
                    std::to_string(row / d.kv_heads) + ", head " +
                    std::to_string(row % d.kv_heads) + ", dim " + std::to_string(i % d.head_dim));
}
/// True when all n fp16 at `p` are valid scales (HalfIsScale).
inline bool HalvesAreScales(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!HalfIsScale(LoadU16(p + 2 * i))) return false;
  }
  return true;
}

// ---- bit packing (layout at the top of this file) --------------------------------------------

inline uint64_t PackedBytes(uint64_t count, int bits) { return (count * bits + 7) / 8; }

inline void PackBitsRef(const uint8_t* idx, size_t n, int bits, uint8_t* out) {
  std::memset(out, 0, PackedBytes(n, bits));
  for (size_t i = 0; i < n; ++i) {
    for (int j = 0; j < bits; ++j) {
      const uint64_t k = uint64_t{i} * bits + j;
      if ((idx[i] >> j) & 1u) out[k / 8] |= static_cast<uint8_t>(1u << (k % 8));
    }
  }
}

inline void UnpackBitsRef(const uint8_t* in, size_t n, int bits, uint8_t* idx) {
  for (size_t i = 0; i < n; ++i) {
    uint8_t v = 0;
    for (int j = 0; j < bits; ++j) {
      const uint64_t k = uint64_t{i} * bits + j;
      v |= static_cast<uint8_t>(((in[k / 8] >> (k % 8)) & 1u) << j);
    }
    idx[i] = v;
  }
}

/// Same bytes as PackBitsRef; values must be < 2^bits. Eight values make exactly `bits` bytes.
inline void PackBits(const uint8_t* idx, size_t n, int bits, uint8_t* out) {
  if (bits == 8) {
    if (n != 0) std::memcpy(out, idx, n);  // empty chunks may pass null pointers
    return;
  }
  const size_t full = n / 8;
  for (size_t g = 0; g < full; ++g) {
    uint64_t acc = 0;
    for (int k = 0; k < 8; ++k) acc |= uint64_t{idx[8 * g + k]} << (k * bits);
    std::memcpy(out + g * bits, &acc, bits);
  }
  uint64_t acc = 0;
  int used = 0;
  for (size_t i = full * 8; i < n; ++i, used += bits) acc |= uint64_t{idx[i]} << used;
  for (size_t o = full * bits; used > 0; ++o, used -= 8, acc >>= 8)
    out[o] = static_cast<uint8_t>(acc);
}

inline void UnpackBits(const uint8_t* in, size_t n, int bits, uint8_t* idx) {
  if (bits == 8) {
    if (n != 0) std::memcpy(idx, in, n);  // empty chunks may pass null pointers
    return;
  }
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  const size_t full = n / 8;
  for (size_t g = 0; g < full; ++g) {
    uint64_t acc = 0;
    std::memcpy(&acc, in + g * bits, bits);
    for (int k = 0; k < 8; ++k) idx[8 * g + k] = static_cast<uint8_t>((acc >> (k * bits)) & mask);
  }
  const size_t rest = n - full * 8;
  if (rest == 0) return;
  uint64_t acc = 0;
  std::memcpy(&acc, in + full * bits, PackedBytes(rest, bits));
  for (size_t k = 0; k < rest; ++k)
    idx[full * 8 + k] = static_cast<uint8_t>((acc >> (k * bits)) & mask);
}

inline void PackBits(const uint8_t* idx, size_t n, int bits, uint8_t* out, CodecImpl impl) {
  impl == CodecImpl::kReference ? PackBitsRef(idx, n, bits, out) : PackBits(idx, n, bits, out);
}
inline void UnpackBits(const uint8_t* in, size_t n, int bits, uint8_t* idx, CodecImpl impl) {
  impl == CodecImpl::kReference ? UnpackBitsRef(in, n, bits, idx) : UnpackBits(in, n, bits, idx);
}

// ---- order-preserving integer keys of floats (exact min/max reductions that vectorize) -------

/// Monotone map of a non-NaN float to int32 (-0 sorts just below +0).
inline int32_t FloatKey(float f) {
  const int32_t b = std::bit_cast<int32_t>(f);
  return b ^ ((b >> 31) & 0x7fffffff);
}
inline float KeyFloat(int32_t k) { return std::bit_cast<float>(k ^ ((k >> 31) & 0x7fffffff)); }

/// Largest |x| of n >= 1 finite floats (bit patterns of |x| order like the values).
inline float AbsMaxFast(const float* x, size_t n) {
  uint32_t m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::bit_cast<uint32_t>(x[i]) & 0x7fffffffu);
  return std::bit_cast<float>(m);
}

/// Minimum and maximum of n >= 1 finite floats (zeros of either sign may come back as -0/+0).
inline void MinMaxFast(const float* x, size_t n, float* lo, float* hi) {
  int32_t kmin = INT32_MAX, kmax = INT32_MIN;
  for (size_t i = 0; i < n; ++i) {
    const int32_t k = FloatKey(x[i]);
    kmin = std::min(kmin, k);
    kmax = std::max(kmax, k);
  }
  *lo = KeyFloat(kmin);
  *hi = KeyFloat(kmax);
}

// ---- asymmetric uniform b-bit quantization with fp16 scale and min ---------------------------
//
// A group with values in [lo, hi] stores min_h = the largest fp16 <= lo and scale_h = the
// smallest fp16 >= (hi - min_h) / (2^b - 1), so every value lies in [min_h, min_h + L*scale_h]
// and |x - decode(x)| <= scale_h / 2 (up to float rounding). Values beyond the fp16 range
// saturate. q = nearest integer (ties to even) of (x - min_h) / scale_h, clamped to [0, L];
// decode = q * scale_h + min_h.

struct UniformParams {
  uint16_t scale_h = 0;
  uint16_t min_h = 0;
  float scale = 0;  // HalfToFloat(scale_h)
  float min = 0;    // HalfToFloat(min_h)
  float div = 1;    // divisor used when quantizing (scale, or 1 for an all-equal group)
};

inline UniformParams ChooseUniform(float lo, float hi, int levels_minus_1) {
  // "+ 0.0f" turns -0 into +0, so reductions that see zeros in another order agree.
  lo = std::clamp(lo, -kHalfMax, kHalfMax) + 0.0f;
  hi = std::clamp(hi, -kHalfMax, kHalfMax) + 0.0f;
  UniformParams p;
  p.min_h = HalfRoundDown(lo);
  p.min = HalfToFloat(p.min_h);
  p.scale_h = HalfRoundUp((hi - p.min) / static_cast<float>(levels_minus_1));
  p.scale = HalfToFloat(p.scale_h);
  p.div = p.scale > 0.0f ? p.scale : 1.0f;
  return p;
}

/// The parameters encoded in a payload (min_h and scale_h already validated as finite).
inline UniformParams UniformFromHalves(uint16_t scale_h, uint16_t min_h) {
  UniformParams p;
  p.scale_h = scale_h;
  p.min_h = min_h;
  p.scale = HalfToFloat(scale_h);
  p.min = HalfToFloat(min_h);
  p.div = p.scale > 0.0f ? p.scale : 1.0f;
  return p;
}

inline uint8_t QuantizeUniform(float x, float min, float div, float levels_minus_1) {
  float q = std::nearbyint((x - min) / div);
  q = q < 0.0f ? 0.0f : q;
  q = q > levels_minus_1 ? levels_minus_1 : q;
  return static_cast<uint8_t>(static_cast<int32_t>(q));
}

inline float DequantizeUniform(uint8_t q, float scale, float min) {
  return static_cast<float>(q) * scale + min;
}

}  // namespace kvwire::baseline
