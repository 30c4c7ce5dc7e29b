// kivi<b> (KIVI, Liu et al. 2024): asymmetric uniform b-bit with an fp16 scale and min per group
// of G, keys per channel (G consecutive tokens of one (head, channel)), values per token (G
// consecutive channels of one (token, head) row); the chunk's other tokens stay fp16: its first L
// (a chunk that starts mid-group keeps the tokens before its first group boundary) and its last
// tokens - L - Tq.
// CUDA launchers and their scalar references; same bytes as src/codec/baseline_kivi.cpp.
//
// Payload (little-endian), with HD = kv_heads * head_dim, Q = Tq * HD, groups = Q / G:
//   u32 Tq
//   fp16 scales[groups]   K: [Tq / G, kv_heads, head_dim]   V: [Tq, kv_heads, head_dim / G]
//   fp16 mins[groups]     same layout
//   b-bit indices of the Q quantized values (chunk tokens [L, L + Tq)) in [Tq, kv_heads,
//     head_dim] order, one LSB-first bit stream: bit j of value i is stream bit i*b + j
//     (byte-padded)
//   fp16 window [tokens - Tq, kv_heads, head_dim]: the L lead tokens, then the last ones,
//     clamped to +-65504
// Group recipe (quant_common.h): min_h = largest fp16 <= lo, scale_h = smallest fp16 >=
// (hi - min) / (2^b - 1), q = round-half-even((x - min) / scale) clamped to [0, 2^b - 1]
// (scale 0: divide by 1); decode q * scale + min (two roundings, no FMA).
//
// Tq follows the window rule of the CPU codec (KiviQuantTokens); the decoder is given the Tq it
// expects and checks the payload's header against it (kErrBadHeader).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "block_formats.h"
#include "kv_tensor.h"
#include "kvwire/status.h"

namespace kvwire::kern {

struct KiviParams {
  uint32_t bits = 2;          // b, 2..8
  uint32_t group = 32;        // G
  bool key = true;            // K (per channel) or V (per token; head_dim % G == 0)
  uint32_t quant_tokens = 0;  // Tq: a multiple of G, <= the chunk's tokens - L
  uint32_t lead_tokens = 0;   // L: fp16 tokens before the chunk's first group boundary
};

/// Byte offsets of the payload sections.
struct KiviLayout {
  uint64_t quant_elems = 0;  // Q
  uint64_t lead_elems = 0;   // L * HD: the window's values that precede the quantized ones
  uint64_t groups = 0;
  uint64_t scales = 0, mins = 0, packed = 0, window = 0;
  uint64_t bytes = 0;  // whole payload
};

KVWIRE_HD inline KiviLayout KiviLayoutOf(uint32_t tokens, uint32_t row_elems, const KiviParams& k) {
  KiviLayout l;
  l.quant_elems = uint64_t{k.quant_tokens} * row_elems;
  l.lead_elems = uint64_t{k.lead_tokens} * row_elems;
  l.groups = l.quant_elems / k.group;
  l.scales = blocks::kKiviHeaderBytes;
  l.mins = l.scales + 2 * l.groups;
  l.packed = l.mins + 2 * l.groups;
  l.window = l.packed + blocks::PackedBytes(l.quant_elems, k.bits);
  l.bytes = l.window + 2 * (uint64_t{tokens} - k.quant_tokens) * row_elems;
  return l;
}

/// The CPU codec's lead rule: a chunk that starts off a multiple of G keeps its tokens up to the
/// next multiple fp16.
inline uint32_t KiviLeadTokens(uint32_t token_begin, uint32_t tokens, uint32_t group) {
  const uint32_t off = token_begin % group;
  return off == 0 ? 0 : std::min(tokens, group - off);
}

/// The CPU codec's window rule: the sequence's first floor(max(0, S - R) / G) * G tokens are
/// quantized; a chunk quantizes those of its tokens after the lead, from the lead on.
inline uint32_t KiviQuantTokens(uint32_t seq_tokens, uint32_t token_begin, uint32_t tokens,
                                uint32_t group, uint32_t window) {
  const uint32_t first = token_begin + KiviLeadTokens(token_begin, tokens, group);
  const uint32_t n_quant = seq_tokens > window ? (seq_tokens - window) / group * group : 0;
  return n_quant > first ? std::min(n_quant - first, token_begin + tokens - first) : 0;
}

/// Group of quantized element e (in [Tq, kv_heads, head_dim] order).
KVWIRE_HD inline uint64_t KiviGroupOf(uint64_t e, uint32_t row_elems, const KiviParams& k) {
  if (k.key) return (e / row_elems) / k.group * row_elems + e % row_elems;
  return e / k.group;
}

/// src: KvTensor (device), view tokens `range`; payload: device, KiviLayoutOf(...).bytes bytes.
/// Three kernels on `stream`: group parameters, indices, window + header.
Status LaunchKiviEncode(const KvTensor& src, TokenRange range, const KiviParams& k,
                        uint8_t* payload, uint32_t* errors, cudaStream_t stream);
/// payload: device, KiviLayoutOf(...).bytes bytes. Values of a group whose scale or min is
/// invalid, and window values that are not finite, are skipped (kErrBadScale); a Tq header other
/// than k.quant_tokens skips everything (kErrBadHeader).
Status LaunchKiviDecode(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                        const KiviParams& k, uint32_t* errors, cudaStream_t stream);

// ---- per-thread bodies of the kernels (kivi.cu) ---------------------------------------------
// Host+device, so the reference tests also run them on the CPU, one "thread" at a time in any
// order, and check the bytes they produce: the indexing of the kernels is validated without a
// GPU. (Only the grid-stride loops around them live in kivi.cu.)

inline constexpr uint32_t kKiviUnit = 8;  // values per packing thread: 8 values x b bits = b bytes

KVWIRE_HD inline uint64_t KiviUnits(const KiviLayout& l) {
  return (l.quant_elems + kKiviUnit - 1) / kKiviUnit;
}

/// Encode phase 1, thread `g` < l.groups: min/max of group g -> fp16 scale and min.
KVWIRE_HD inline void KiviGroupParamsThread(const KvTensor& src, TokenRange range,
                                            const KiviParams& k, const KiviLayout& l, uint64_t g,
                                            uint8_t* payload, uint32_t* errors) {
  const uint32_t hd = src.row_elems();
  float lo = 0.0f, hi = 0.0f;
  bool bad = false;
  auto take = [&](uint32_t j, float x) {
    bad |= !kmath::IsFiniteFloat(x);
    if (j == 0 || x < lo) lo = x;  // the reference's comparisons; +-0 is settled by ChooseUniform
    if (j == 0 || x > hi) hi = x;
  };
  if (k.key) {  // G tokens down column g % hd: adjacent threads read adjacent channels
    const uint32_t c = static_cast<uint32_t>(g % hd);
    const uint32_t t0 =
        range.token_begin + k.lead_tokens + static_cast<uint32_t>(g / hd) * k.group;
    for (uint32_t j = 0; j < k.group; ++j) take(j, LoadAt(src, t0 + j, c, errors));
  } else {  // G channels along one row (head_dim % G == 0: a group never crosses rows)
    const uint64_t e0 = g * k.group;
    const int64_t row =
        RowOffset(src, range.token_begin + k.lead_tokens + static_cast<uint32_t>(e0 / hd));
    if (row < 0) RaiseError(errors, kErrBadBlock);
    const int64_t base = row + static_cast<int64_t>(e0 % hd);
    for (uint32_t j = 0; j < k.group; ++j) take(j, row < 0 ? 0.0f : LoadElem(src, base + j));
  }
  if (bad) RaiseError(errors, kErrNonFinite);
  const kmath::Uniform p = kmath::ChooseUniform(lo, hi, (1u << k.bits) - 1);
  kmath::StoreU16(payload + l.scales + 2 * g, p.scale_h);
  kmath::StoreU16(payload + l.mins + 2 * g, p.min_h);
}

/// Encode phase 2, thread `u` < KiviUnits(l): quantizes values [8u, 8u + 8) with the parameters
/// phase 1 stored and writes their b bytes [u*b, u*b + b) of the bit stream (fewer at the end).
/// Threads never share a byte, so nothing needs zeroing or atomics.
KVWIRE_HD inline void KiviPackThread(const KvTensor& src, TokenRange range, const KiviParams& k,
                                     const KiviLayout& l, uint64_t u, uint8_t* payload) {
  const uint32_t hd = src.row_elems();
  const float levels = static_cast<float>((1u << k.bits) - 1);
  const uint64_t e0 = u * kKiviUnit;
  uint32_t t = static_cast<uint32_t>(e0 / hd), c = static_cast<uint32_t>(e0 % hd);
  const uint32_t first = range.token_begin + k.lead_tokens;
  int64_t row = RowOffset(src, first + t);  // bad blocks were flagged in phase 1
  uint64_t acc = 0;
  for (uint32_t i = 0; i < kKiviUnit && e0 + i < l.quant_elems; ++i) {
    const uint64_t g = k.key ? uint64_t{t / k.group} * hd + c : (e0 + i) / k.group;
    const kmath::Uniform p = kmath::UniformFromHalves(kmath::LoadU16(payload + l.scales + 2 * g),
                                                      kmath::LoadU16(payload + l.mins + 2 * g));
    const float x = row < 0 ? 0.0f : LoadElem(src, row + c);
    acc |= uint64_t{kmath::QuantizeUniform(x, p.min, p.div, levels)} << (i * k.bits);
    if (++c == hd && e0 + i + 1 < l.quant_elems) {
      c = 0;
      row = RowOffset(src, first + ++t);
    }
  }
  uint8_t* out = payload + l.packed + u * k.bits;
  const uint64_t room = (l.window - l.packed) - u * k.bits;
  for (uint32_t b = 0; b < k.bits && b < room; ++b) out[b] = static_cast<uint8_t>(acc >> (8 * b));
}

/// Encode phase 3, thread `i` < window values: one fp16 window value; thread 0 also writes Tq.
KVWIRE_HD inline void KiviWindowEncodeThread(const KvTensor& src, TokenRange range,
                                             const KiviParams& k, const KiviLayout& l, uint64_t i,
                                             uint8_t* payload, uint32_t* errors) {
  const uint32_t hd = src.row_elems();
  if (i == 0) kmath::StoreU32(payload, k.quant_tokens);
  const uint64_t e = i < l.lead_elems ? i : l.quant_elems + i;  // the chunk's element
  if (e >= uint64_t{range.tokens} * hd) return;
  float x = LoadAt(src, range.token_begin + static_cast<uint32_t>(e / hd),
                   static_cast<uint32_t>(e % hd), errors);
  if (!kmath::IsFiniteFloat(x)) RaiseError(errors, kErrNonFinite);
  x = kmath::ClampStd(x, -kmath::kHalfMax, kmath::kHalfMax);
  kmath::StoreU16(payload + l.window + 2 * i, kmath::FloatToHalfBits(x));
}

/// Decode, thread `u` < KiviUnits(l): values [8u, 8u + 8) from their b bytes into dst.
KVWIRE_HD inline void KiviUnpackThread(const uint8_t* payload, const KvTensor& dst,
                                       TokenRange range, const KiviParams& k, const KiviLayout& l,
                                       uint64_t u, uint32_t* errors) {
  const uint32_t hd = dst.row_elems();
  const uint8_t* in = payload + l.packed + u * k.bits;
  const uint64_t room = (l.window - l.packed) - u * k.bits;
  uint64_t acc = 0;
  for (uint32_t b = 0; b < k.bits && b < room; ++b) acc |= uint64_t{in[b]} << (8 * b);
  const uint64_t mask = (uint64_t{1} << k.bits) - 1;
  const uint64_t e0 = u * kKiviUnit;
  uint32_t t = static_cast<uint32_t>(e0 / hd), c = static_cast<uint32_t>(e0 % hd);
  const uint32_t first = range.token_begin + k.lead_tokens;
  int64_t row = RowOffset(dst, first + t);
  for (uint32_t i = 0; i < kKiviUnit && e0 + i < l.quant_elems; ++i) {
    const uint64_t g = k.key ? uint64_t{t / k.group} * hd + c : (e0 + i) / k.group;
    const uint16_t scale_h = kmath::LoadU16(payload + l.scales + 2 * g);
    const uint16_t min_h = kmath::LoadU16(payload + l.mins + 2 * g);
    if (!kmath::HalfIsScale(scale_h) || !kmath::HalfIsFinite(min_h)) {
      RaiseError(errors, kErrBadScale);
    } else if (row < 0) {
      RaiseError(errors, kErrBadBlock);
    } else {
      const kmath::Uniform p = kmath::UniformFromHalves(scale_h, min_h);
      const uint32_t q = static_cast<uint32_t>((acc >> (i * k.bits)) & mask);
      StoreElem(dst, row + c, kmath::DequantizeUniform(q, p.scale, p.min));
    }
    if (++c == hd && e0 + i + 1 < l.quant_elems) {
      c = 0;
      row = RowOffset(dst, first + ++t);
    }
  }
}

/// Decode, thread `i` < window values: one fp16 window value into dst.
KVWIRE_HD inline void KiviWindowDecodeThread(const uint8_t* payload, const KvTensor& dst,
                                             TokenRange range, const KiviLayout& l, uint64_t i,
                                             uint32_t* errors) {
  const uint32_t hd = dst.row_elems();
  const uint16_t h = kmath::LoadU16(payload + l.window + 2 * i);
  if (!kmath::HalfIsFinite(h)) {
    RaiseError(errors, kErrBadScale);
    return;
  }
  const uint64_t e = i < l.lead_elems ? i : l.quant_elems + i;  // the chunk's element
  StoreAt(dst, range.token_begin + static_cast<uint32_t>(e / hd), static_cast<uint32_t>(e % hd),
          kmath::HalfBitsToFloat(h), errors);
}

// ---- scalar references (host memory) ------------------------------------------------------

inline void KiviEncode_ref(const KvTensor& src, TokenRange range, const KiviParams& k,
                           uint8_t* payload, uint32_t* errors) {
  const uint32_t hd = src.row_elems();
  const KiviLayout l = KiviLayoutOf(range.tokens, hd, k);
  const uint32_t levels = (1u << k.bits) - 1;
  auto x_at = [&](uint64_t e) {  // element e of the chunk, [tokens, kv_heads, head_dim] order
    const float x = LoadAt(src, range.token_begin + static_cast<uint32_t>(e / hd),
                           static_cast<uint32_t>(e % hd), errors);
    if (!kmath::IsFiniteFloat(x)) RaiseError(errors, kErrNonFinite);
    return x;
  };
  kmath::StoreU32(payload, k.quant_tokens);
  // Elements of each group: K walks G tokens down one column, V G channels along one row.
  auto element_of = [&](uint64_t group, uint32_t j) -> uint64_t {
    if (k.key) return ((group / hd) * k.group + j) * hd + group % hd;
    return group * k.group + j;
  };
  std::vector<kmath::Uniform> params(l.groups);
  for (uint64_t g = 0; g < l.groups; ++g) {
    float lo = x_at(l.lead_elems + element_of(g, 0)), hi = lo;
    for (uint32_t j = 1; j < k.group; ++j) {
      const float x = x_at(l.lead_elems + element_of(g, j));
      if (x < lo) lo = x;
      if (x > hi) hi = x;
    }
    params[g] = kmath::ChooseUniform(lo, hi, levels);
    kmath::StoreU16(payload + l.scales + 2 * g, params[g].scale_h);
    kmath::StoreU16(payload + l.mins + 2 * g, params[g].min_h);
  }
  uint8_t* packed = payload + l.packed;
  std::fill(packed, packed + (l.window - l.packed), uint8_t{0});
  for (uint64_t e = 0; e < l.quant_elems; ++e) {
    const kmath::Uniform& p = params[KiviGroupOf(e, hd, k)];
    const uint32_t q =
        kmath::QuantizeUniform(x_at(l.lead_elems + e), p.min, p.div, static_cast<float>(levels));
    for (uint32_t j = 0; j < k.bits; ++j) {
      const uint64_t bit = e * k.bits + j;
      if ((q >> j) & 1u) packed[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
    }
  }
  const uint64_t total = uint64_t{range.tokens} * hd;
  for (uint64_t w = 0; w < total - l.quant_elems; ++w) {  // the lead, then the last tokens
    const uint64_t e = w < l.lead_elems ? w : l.quant_elems + w;
    const float x = kmath::ClampStd(x_at(e), -kmath::kHalfMax, kmath::kHalfMax);
    kmath::StoreU16(payload + l.window + 2 * w, kmath::FloatToHalfBits(x));
  }
}

inline void KiviDecode_ref(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                           const KiviParams& k, uint32_t* errors) {
  const uint32_t hd = dst.row_elems();
  const KiviLayout l = KiviLayoutOf(range.tokens, hd, k);
  if (kmath::LoadU32(payload) != k.quant_tokens) {
    RaiseError(errors, kErrBadHeader);
    return;
  }
  auto store = [&](uint64_t e, float v) {
    StoreAt(dst, range.token_begin + static_cast<uint32_t>(e / hd), static_cast<uint32_t>(e % hd),
            v, errors);
  };
  const uint8_t* packed = payload + l.packed;
  for (uint64_t e = 0; e < l.quant_elems; ++e) {
    const uint64_t g = KiviGroupOf(e, hd, k);
    const uint16_t scale_h = kmath::LoadU16(payload + l.scales + 2 * g);
    const uint16_t min_h = kmath::LoadU16(payload + l.mins + 2 * g);
    if (!kmath::HalfIsScale(scale_h) || !kmath::HalfIsFinite(min_h)) {
      RaiseError(errors, kErrBadScale);
      continue;
    }
    uint32_t q = 0;
    for (uint32_t j = 0; j < k.bits; ++j) {
      const uint64_t bit = e * k.bits + j;
      q |= ((packed[bit / 8] >> (bit % 8)) & 1u) << j;
    }
    const kmath::Uniform p = kmath::UniformFromHalves(scale_h, min_h);
    store(l.lead_elems + e, kmath::DequantizeUniform(q, p.scale, p.min));
  }
  const uint64_t total = uint64_t{range.tokens} * hd;
  for (uint64_t w = 0; w < total - l.quant_elems; ++w) {  // the lead, then the last tokens
    const uint64_t e = w < l.lead_elems ? w : l.quant_elems + w;
    const uint16_t h = kmath::LoadU16(payload + l.window + 2 * w);
    if (!kmath::HalfIsFinite(h)) {
      RaiseError(errors, kErrBadScale);
      continue;
    }
    store(e, kmath::HalfBitsToFloat(h));
  }
}

}  // namespace kvwire::kern
