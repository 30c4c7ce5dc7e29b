// Asymmetric uniform b-bit quantization of groups (quant_common.h has the per-group recipe),
// shared by kivi<b> and int<b>-token / int<b>-channel. Scales and mins are written as arrays of
// little-endian fp16; indices come out unpacked (one byte each) in the input's order, for the
// caller to bit-pack.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvwire/codec.h"

namespace kvwire::baseline {

/// Row groups: `in` is [groups, g] contiguous, one group per row.
/// Writes scales[groups] and mins[groups] (fp16, 2 bytes each) and idx[groups * g].
void QuantizeRowGroups(const float* in, size_t groups, size_t g, int bits, uint8_t* scales,
                       uint8_t* mins, uint8_t* idx, CodecImpl impl);

/// Inverse of QuantizeRowGroups. Returns false (writing nothing useful) when a scale is not a
/// finite non-negative fp16 or a min is not finite.
bool DequantizeRowGroups(const uint8_t* scales, const uint8_t* mins, const uint8_t* idx,
                         size_t groups, size_t g, float* out, CodecImpl impl);

/// Column groups: `in` is [rows, cols] contiguous, one group per column over all rows.
/// Writes scales[cols], mins[cols] (fp16) and idx[rows * cols] (row-major, like `in`).
void QuantizeColumnGroups(const float* in, size_t rows, size_t cols, int bits, uint8_t* scales,
                          uint8_t* mins, uint8_t* idx, CodecImpl impl);

/// Inverse of QuantizeColumnGroups; false on an invalid scale or min.
bool DequantizeColumnGroups(const uint8_t* scales, const uint8_t* mins, const uint8_t* idx,
                            size_t rows, size_t cols, float* out, CodecImpl impl);

}  // namespace kvwire::baseline
