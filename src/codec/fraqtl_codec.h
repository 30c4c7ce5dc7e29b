// The fraqtl codec: configuration and factory.
//
// Per chunk (one layer, K|V, token range), per kv_head:
//   1. sequence tokens [0, sink) and [seq_tokens - window, seq_tokens) pass through as fp16;
//   2. K (prerope=1, profile with pre-RoPE bases): RoPE is undone at position
//      positions_start + token, coded, and re-applied after decoding;
//   3. z = F (x - mu) with the profile's forward transform (metric-whitened eigenbasis, PCA or
//      random rotation, whatever the profile was calibrated with);
//   4. bits per direction: reverse water-filling over all (kv_head, direction) of the chunk on
//      lambda_i D(b) under the chunk's index-bit budget; optional 1-bit floor; a direction
//      that would get more than `protect` bits is kept fp16;
//   5. u = z_i / (sqrt(lambda_i) g) (g: optional fp16 per-(token, head) gain, else 1) is
//      quantized with the Lloyd-Max codebook of its bit-width (calibrated or Gaussian);
//   6. sign=M (optional): per quantized (token, head) the signs of S r, r = z - z^ the
//      residual, with a seeded +-1 matrix S [M, D], and ||r|| (fp16); the decoder adds a
//      shrunk QJL estimate of r to z^ before the inverse transform (fraqtl_sketch.h);
//   7. delta=G (optional): quantized tokens in groups of G (chunk order, per chunk); the first
//      of a group (anchor) is coded as in 5; the others code d = z - z^_anchor (the decoded
//      anchor: closed loop), or z itself in the (head, direction)s where that is smaller on
//      the chunk ("direct", one bit each), normalized by per-(head, direction) delta scales
//      measured on the chunk and sent as fp16. Anchors and deltas share one water-filling
//      (anchor items with lambda_i, delta items with the squared delta scales, each bit
//      costing its token count);
//   8. zstd over the packed indices (default; entropy=none turns it off); the budget then buys
//      more index bits: the largest allocation whose compressed section fits is chosen.
// Sign sketch bits, norms and delta scales are paid from the budget before water-filling, like
// fp16 tokens and gains. entropy=rans replaces steps 4 and 8 with a one-pass, table-driven
// payload (version 2, fraqtl_rans_*.cpp; docs/FORMAT.md 6.8.1) without steps 6 and 7.
//
// Budget: `fraqtl@B` targets B bits/element all-in for the stream: the chunk's payload is sized
// so that payload + its 40-byte chunk header + its share of the stream header and trailer
// (estimated) equal B * elements / 8 bytes; fp16 tokens, gains and the payload header come out
// of that budget first. With level=NAME the per-(layer, K|V) budgets of that profile level,
// scaled by B / level.bits, replace the uniform B.
//
// Payload (little-endian):
//   u8  version (1)     u8 flags (bit 0: index section is a zstd frame)     u16 zero
//   u32 index bits of the chunk: total = bpt * quantized tokens + extra, the first `extra`
//       tokens use the allocation of bpt + 1 bits per token (the decoder re-derives both)
//   u32 bytes of the index section
//   fp16 [fp16 tokens, kv_heads, head_dim]     the pass-through tokens in chunk order
//   fp16 [quantized tokens, kv_heads]          gains (gain=1 only)
//   fp16 [kv_heads, head_dim]                  delta scales (delta=G and a delta token only)
//   bits [kv_heads, head_dim]                  delta modes, 1 = direct, LSB-first (ditto)
//   fp16 [quantized tokens, kv_heads]          residual norms (sign=M only)
//   bits [quantized tokens, kv_heads, M]       residual signs, LSB-first (sign=M only)
//   index section: per quantized token, per head, per direction with b > 0: b bits (b = 16:
//   the fp16 bits of z_i), one variable-width LSB-first bit stream (fraqtl_math.h).
// Without sign and delta the payload is exactly that of earlier builds (same version, 1).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kvwire/codec.h"
#include "kvwire/profile.h"

namespace kvwire::fraqtl {

enum class Entropy : uint8_t { kNone = 0, kZstd = 1, kRans = 2 };

struct Config {
  double bits = 2.0;    // target bits/element, all-in
  std::string level;    // profile level whose per-(layer, K|V) budgets are used; "" = uniform
  uint32_t sink = 0;    // leading fp16 tokens
  uint32_t window = 0;  // trailing fp16 tokens
  bool prerope = true;  // code K pre-RoPE (when the profile has pre-RoPE bases)
  std::string basis;    // must equal the profile's basis kind when given
  bool floor = false;   // 1-bit floor (no deletion)
  int protect = 8;      // 0 = off; else a direction that would get more than `protect` bits
                        // is kept fp16 (measured: 8 pays at 2-3 b/e, is inert below)
  bool gain = false;    // per-(token, head) fp16 gain
  uint32_t sign = 0;    // sign sketch rows M per (token, head); 0 = off; the spec's sign=1
                        // means M = max(1, D / 2) (resolved by MakeFraqtlCodec)
  uint32_t delta = 0;   // delta group size G (>= 2); 0 = off
  // Write sign= and delta= into the canonical spec even when 0: set when the profile carries
  // fraqtl defaults, so that a stream's spec never depends on them.
  bool spell_steps = false;
  Entropy entropy = Entropy::kRans;  // the registry's default unless sign or delta is set
  bool calibrated_books = true;      // use the profile's codebooks when it has them
};

/// Canonical spec string of `config`.
std::string CanonicalSpec(const Config& config);

/// The codec; `profile` is copied from (not kept).
Result<std::unique_ptr<Codec>> MakeFraqtlCodec(const Config& config, const Profile& profile);

}  // namespace kvwire::fraqtl
