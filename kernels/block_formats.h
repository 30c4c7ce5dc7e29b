// The baseline block formats, defined once for CPU and CUDA code (ggml style): byte layouts,
// sizes checked by static_assert, and a traits table. Plain C++ (no CUDA headers), so host
// code — including src/codec/baseline_ggml_q.cpp, which should include this header instead of
// defining its own copies of BlockQ8_0/BlockQ4_0 — and device code read the same definitions.
//
// Every multi-byte field is little-endian; the structs hold no padding, so an array of blocks
// is exactly the payload the CPU codecs write (see the size asserts).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define KVWIRE_HD __host__ __device__
#else
#define KVWIRE_HD
#endif

namespace kvwire::blocks {

/// Values per q8_0 / q4_0 block (ggml's QK8_0 / QK4_0). Blocks run along head_dim, so
/// head_dim % kQK == 0.
inline constexpr uint32_t kQK = 32;

/// q8_0: d = amax / 127 (fp16), qs = round-half-away(x / d) in [-127, 127].   8.5 bits/element
struct BlockQ8_0 {
  uint16_t d;      // fp16 bits of the scale
  int8_t qs[kQK];  // quants, element j at qs[j]
};
static_assert(sizeof(BlockQ8_0) == 2 + kQK, "q8_0 block must be 34 bytes, no padding");
static_assert(alignof(BlockQ8_0) == 2, "q8_0 blocks are 2-byte aligned in a payload");

/// q4_0: d = m / -8 (fp16; m = the value of largest magnitude, first on ties),
/// q = min(15, trunc(x / d + 8.5)); byte j holds element j (low nibble) and j + 16 (high).
/// Decode (q - 8) * d.                                                         4.5 bits/element
struct BlockQ4_0 {
  uint16_t d;           // fp16 bits of the scale
  uint8_t qs[kQK / 2];  // nibbles
};
static_assert(sizeof(BlockQ4_0) == 2 + kQK / 2, "q4_0 block must be 18 bytes, no padding");
static_assert(alignof(BlockQ4_0) == 2, "q4_0 blocks are 2-byte aligned in a payload");

/// int8 (per (token, head) row): fp16 scales[rows], then int8 q[rows * head_dim].
/// scale = amax / 127 rounded up to the next fp16, q = round-to-nearest-even(x / scale).
inline constexpr uint32_t kInt8ScaleBytes = 2;

/// kivi<b> payload header: u32 Tq (quantized tokens of the chunk), then fp16 scales[groups],
/// fp16 mins[groups], b-bit indices (LSB-first bit stream), fp16 window.
inline constexpr uint32_t kKiviHeaderBytes = 4;

/// Per-format facts (ggml's type-traits table).
struct BlockTraits {
  const char* name;
  uint32_t values_per_block;  // 1 for row formats
  uint32_t bytes_per_block;   // 0 when not a fixed-block format
  uint16_t codec_id;          // src/codec/codec_ids.h
};

inline constexpr BlockTraits kQ8_0Traits{"q8_0", kQK, sizeof(BlockQ8_0), 3};
inline constexpr BlockTraits kQ4_0Traits{"q4_0", kQK, sizeof(BlockQ4_0), 4};

/// Bytes of n values packed at b bits (the LSB-first bit stream of quant_common.h).
KVWIRE_HD inline uint64_t PackedBytes(uint64_t n, uint32_t bits) { return (n * bits + 7) / 8; }

}  // namespace kvwire::blocks
