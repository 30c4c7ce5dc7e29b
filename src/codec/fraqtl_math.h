// Building blocks of the fraqtl codec shared with calibration (src/diagnostics): RoPE undo/redo,
// reverse water-filling bit allocation, and a variable-width bit writer/reader.
//
// Variable-width bit stream (docs/FORMAT.md, fraqtl payload): values of b_i bits (0..16) are
// appended LSB-first to one stream: bit j of a value written when the stream holds k bits is
// stream bit k + j, stream bit k is bit (k % 8) of byte k / 8; unused high bits of the last byte
// are zero.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace kvwire::fraqtl {

// ---- RoPE ------------------------------------------------------------------------------------

/// Rotary embedding of a head: pairs (2i, 2i+1) (interleaved) or (i, i + rope_dim/2) (neox) of
/// the first rope_dim channels rotate by angle pos * theta^(-2i / rope_dim).
struct Rope {
  double theta = 0;
  bool neox = false;
  uint32_t rope_dim = 0;

  bool enabled() const { return theta > 0 && rope_dim >= 2; }

  /// theta^(-2i / rope_dim), i < rope_dim / 2; Angles computes it when not cached here
  /// (CacheFrequencies, after theta and rope_dim are set). Same values either way.
  std::vector<double> inv_freq;

  double InvFreq(uint32_t i) const {
    return i < inv_freq.size() ? inv_freq[i]
                               : std::pow(theta, -2.0 * i / static_cast<double>(rope_dim));
  }
  void CacheFrequencies() {
    inv_freq.clear();
    for (uint32_t i = 0; i < rope_dim / 2; ++i) inv_freq.push_back(InvFreq(i));
  }

  /// cos/sin tables [rope_dim / 2] of position `pos` (double precision, then float).
  void Angles(int64_t pos, float* cos_out, float* sin_out) const {
    const uint32_t half = rope_dim / 2;
    for (uint32_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(pos) * InvFreq(i);
      cos_out[i] = static_cast<float>(std::cos(a));
      sin_out[i] = static_cast<float>(std::sin(a));
    }
  }

  /// Rotates one head vector x [>= rope_dim] by +angle (apply) or -angle (undo).
  void Rotate(float* x, const float* c, const float* s, bool undo) const {
    const uint32_t half = rope_dim / 2;
    for (uint32_t i = 0; i < half; ++i) {
      const uint32_t i0 = neox ? i : 2 * i;
      const uint32_t i1 = neox ? i + half : 2 * i + 1;
      const double x0 = x[i0], x1 = x[i1];
      const double si = undo ? -static_cast<double>(s[i]) : static_cast<double>(s[i]);
      x[i0] = static_cast<float>(x0 * c[i] - x1 * si);
      x[i1] = static_cast<float>(x0 * si + x1 * c[i]);
    }
  }

  /// Rotates a double vector (calibration) by angle(offset) without float rounding.
  void RotateExact(double* x, double offset) const {
    const uint32_t half = rope_dim / 2;
    for (uint32_t i = 0; i < half; ++i) {
      const uint32_t i0 = neox ? i : 2 * i;
      const uint32_t i1 = neox ? i + half : 2 * i + 1;
      const double a = offset * std::pow(theta, -2.0 * i / static_cast<double>(rope_dim));
      const double c = std::cos(a), s = std::sin(a);
      const double x0 = x[i0], x1 = x[i1];
      x[i0] = x0 * c - x1 * s;
      x[i1] = x0 * s + x1 * c;
    }
  }
};

// ---- bit allocation --------------------------------------------------------------------------

/// Bits of a protected (fp16) direction in the allocation result.
inline constexpr uint8_t kProtectedBits = 16;
inline constexpr int kMaxCodedBits = 8;

struct AllocationItem {
  double variance = 0;                 // lambda_i (downstream-metric units)
  const double* distortion = nullptr;  // [kMaxCodedBits + 1] unit-variance MSE at 0..8 bits
};

struct AllocationOptions {
  bool floor_one_bit = false;  // every direction gets >= 1 bit (when the budget allows)
  int protect = 0;             // 0: off; else a direction that would get more than `protect`
                               // bits (1..8) is kept fp16 instead
};

/// Reverse water-filling by greedy marginal gains: starting from 0 bits (or 1 with the floor),
/// repeatedly give the next bit to the direction with the largest distortion reduction per bit
/// lambda_i (D(b) - D(b + 1)) (ties: lowest index), until `total_bits` are spent or no step
/// reduces distortion. Optimal for convex D (integer separable resource allocation).
/// Deterministic: plain double comparisons in a fixed order. Returns bits per item (0..8 or 16).
std::vector<uint8_t> AllocateBits(std::span<const AllocationItem> items, uint64_t total_bits,
                                  const AllocationOptions& options);

/// AllocateBits where a bit of item i costs costs[i] bits of `total_bits` (an item that codes
/// costs[i] tokens: delta encoding's anchor and delta classes). The gain per bit of a step is
/// the same lambda_i (D(b) - D(b + 1)) (per token, and per bit of that token), a step costs
/// costs[i] (or (16 - b) costs[i] for the fp16 jump), items with costs[i] = 0 stay at 0 bits.
/// The floor is not offered. Same order and tie rule as AllocateBits.
std::vector<uint8_t> AllocateBitsWeighted(std::span<const AllocationItem> items,
                                          std::span<const uint64_t> costs, uint64_t total_bits,
                                          int protect);

/// Total distortion sum_i lambda_i D_i(b_i) of an allocation (protected: 0).
double AllocationDistortion(std::span<const AllocationItem> items, std::span<const uint8_t> bits);

// ---- variable-width bit stream ----------------------------------------------------------------

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>* out) : out_(out) {}
  /// Appends the low `bits` (0..16) of v. Reference: one bit at a time.
  void PutRef(uint32_t v, int bits) {
    for (int j = 0; j < bits; ++j) {
      if ((bit_ & 7) == 0) out_->push_back(0);
      if ((v >> j) & 1u) out_->back() |= static_cast<uint8_t>(1u << (bit_ & 7));
      ++bit_;
    }
  }
  /// Same stream as PutRef, through a 64-bit accumulator.
  void Put(uint32_t v, int bits) {
    acc_ |= static_cast<uint64_t>(v) << used_;
    used_ += bits;
    while (used_ >= 8) {
      out_->push_back(static_cast<uint8_t>(acc_));
      acc_ >>= 8;
      used_ -= 8;
    }
  }
  /// Flushes the accumulator of Put (no-op after PutRef only).
  void Finish() {
    if (used_ > 0) out_->push_back(static_cast<uint8_t>(acc_));
    acc_ = 0;
    used_ = 0;
  }

 private:
  std::vector<uint8_t>* out_;
  uint64_t bit_ = 0;  // PutRef position
  uint64_t acc_ = 0;
  int used_ = 0;
};

class BitReader {
 public:
  explicit BitReader(std::span<const uint8_t> in) : in_(in) {}
  /// Reads `bits` (0..16); the caller checked that the stream holds enough bits.
  uint32_t GetRef(int bits) {
    uint32_t v = 0;
    for (int j = 0; j < bits; ++j, ++bit_) v |= ((in_[bit_ >> 3] >> (bit_ & 7)) & 1u) << j;
    return v;
  }
  uint32_t Get(int bits) {
    while (used_ < bits) {
      acc_ |= static_cast<uint64_t>(pos_ < in_.size() ? in_[pos_] : 0) << used_;
      ++pos_;
      used_ += 8;
    }
    const uint32_t v = static_cast<uint32_t>(acc_ & ((uint64_t{1} << bits) - 1));
    acc_ >>= bits;
    used_ -= bits;
    return v;
  }

 private:
  std::span<const uint8_t> in_;
  uint64_t bit_ = 0;
  size_t pos_ = 0;
  uint64_t acc_ = 0;
  int used_ = 0;
};

}  // namespace kvwire::fraqtl
