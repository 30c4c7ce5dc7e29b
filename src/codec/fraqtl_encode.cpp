// fraqtl encoder: per chunk, the transform, the budget search over index-bit totals, packing,
// the sign sketch and the payload (layout in fraqtl_codec.h).
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "codec/fraqtl_codec_impl.h"

namespace kvwire::fraqtl::internal {

constexpr int kZstdLevel = 3;
// Budget search (Encode): stop once the index section is within this fraction of what the
// budget allows; give up improving after this many zstd passes.
constexpr double kSearchTolerance = 0.004;
constexpr int kMaxSearchPasses = 16;
constexpr int kMaxReprobes = 2;

// Where the indices of (h, i) at b bits start in cache->pool, computing them the first time.
// Pointers into the pool are only valid until the next call (the pool may grow).
size_t FraqtlCodec::EnsureColumn(const ChunkDesc& desc, const std::vector<float>& z,
                    const std::vector<float>& gains, uint32_t h, uint32_t i, int b,
                    IndexCache* cache) const {
  const int slot = b == kProtectedBits ? 0 : b;
  const size_t column = (size_t{h} * d_ + i) * IndexCache::kSlots + slot;
  if (cache->offset[column] != IndexCache::kNone) return cache->offset[column];
  const size_t at = cache->used;
  cache->used += cache->tokens;
  if (cache->pool.size() < cache->used) {
    cache->pool.resize(std::max(cache->used, cache->pool.size() * 2));
  }
  cache->offset[column] = at;
  uint16_t* col = cache->pool.data() + at;
  const Prepared& p = prep(desc.layer, desc.kind, h);
  const float* th = p.thresholds[slot].data();  // 2^b - 1 ascending midpoints
  for (size_t t = 0; t < cache->tokens; ++t) {
    const float zi = z[(t * kv_heads_ + h) * d_ + i];
    if (b == kProtectedBits) {
      col[t] = HalfSaturate(zi);
      continue;
    }
    const float scale = p.sigma[i] * (cfg_.gain ? gains[t * kv_heads_ + h] : 1.0f);
    const float u = scale > 0.0f ? zi / scale : 0.0f;
    // The number of thresholds strictly below u (as the reference's scan), by a branchless
    // b-step binary search over the 2^b - 1 midpoints.
    uint32_t v = 0;
    for (uint32_t step = 1u << (b - 1); step > 0; step >>= 1) v += th[v + step - 1] < u ? step : 0;
    col[t] = static_cast<uint16_t>(v);
  }
  return at;
}

// Packs the indices of all quantized tokens for `alloc` (z: [q_tokens, kv_heads, D]).
// Tokens [0, extra) use `hi` (one more bit per token), the others `lo`. The reference
// quantizes every coefficient by a linear scan, bit by bit; the fast path reads the
// indices from `cache` and packs them through a 64-bit accumulator (same bytes).
void FraqtlCodec::PackIndices(const ChunkDesc& desc, const std::vector<float>& z,
                 const std::vector<float>& gains, size_t q_count, const Allocation& al,
                 std::vector<uint8_t>* out, CodecImpl impl, IndexCache* cache) const {
  if (impl != CodecImpl::kReference) {
    struct Active {
      const uint16_t* column;
      uint32_t bits;
    };
    std::vector<Active> active;  // the directions with bits, in stream order
    std::vector<size_t> offsets;
    uint64_t bits_lo = 0, bits_hi = 0;
    for (size_t k = 0; k < al.lo.size(); ++k) bits_lo += al.lo[k];
    for (size_t k = 0; k < al.hi.size(); ++k) bits_hi += al.hi[k];
    const uint64_t extra = std::min<uint64_t>(al.extra, q_count);
    const uint64_t total_bits = bits_hi * extra + bits_lo * (q_count - extra);
    const size_t base = out->size();
    out->resize(base + (total_bits + 7) / 8 + 8);  // + 8: the accumulator stores 8 bytes
    uint8_t* dst = out->data() + base;
    uint64_t acc = 0;
    uint32_t used = 0;
    const std::vector<uint8_t>* bound = nullptr;
    for (size_t t = 0; t < q_count; ++t) {
      const std::vector<uint8_t>& alloc = t < al.extra ? al.hi : al.lo;
      if (&alloc != bound) {  // (re)bind the columns of this allocation
        active.clear();
        offsets.clear();
        for (uint32_t h = 0; h < kv_heads_; ++h) {
          for (uint32_t i = 0; i < d_; ++i) {
            const int b = alloc[size_t{h} * d_ + i];
            if (b == 0) continue;
            offsets.push_back(EnsureColumn(desc, z, gains, h, i, b, cache));
            active.push_back({nullptr, static_cast<uint32_t>(b)});
          }
        }
        for (size_t k = 0; k < active.size(); ++k) {  // the pool no longer moves
          active[k].column = cache->pool.data() + offsets[k];
        }
        bound = &alloc;
      }
      for (const Active& a : active) {
        acc |= uint64_t{a.column[t]} << used;
        used += a.bits;
        if (used >= 32) {  // flush 4 bytes, little-endian bit order as BitWriter
          StoreU32(dst, static_cast<uint32_t>(acc));
          dst += 4;
          acc >>= 32;
          used -= 32;
        }
      }
    }
    while (used > 0) {
      *dst++ = static_cast<uint8_t>(acc);
      acc >>= 8;
      used = used > 8 ? used - 8 : 0;
    }
    out->resize(static_cast<size_t>(dst - out->data()));
    return;
  }
  BitWriter w(out);
  for (size_t t = 0; t < q_count; ++t) {
    const std::vector<uint8_t>& alloc = t < al.extra ? al.hi : al.lo;
    for (uint32_t h = 0; h < kv_heads_; ++h) {
      const Prepared& p = prep(desc.layer, desc.kind, h);
      const float* zr = z.data() + (t * kv_heads_ + h) * d_;
      const float g = cfg_.gain ? gains[t * kv_heads_ + h] : 1.0f;
      const uint8_t* a = alloc.data() + size_t{h} * d_;
      for (uint32_t i = 0; i < d_; ++i) {
        const int b = a[i];
        if (b == 0) continue;
        uint32_t v;
        if (b == kProtectedBits) {
          v = HalfSaturate(zr[i]);
        } else {
          const float scale = p.sigma[i] * g;
          const float u = scale > 0.0f ? zr[i] / scale : 0.0f;
          const std::vector<float>& th = p.thresholds[b];
          v = 0;
          while (v < th.size() && u > th[v]) ++v;
        }
        w.PutRef(v, b);
      }
    }
  }
  w.Finish();
}

// The general coder of steps 5 and 7 for any allocation, with or without delta groups: what
// delta streams pack on both paths, and the decoded z^ [nq, H, D] the sign sketch needs.
// Appends the indices to `out` and writes z^ to `zhat` (each when given). A delta token codes
// v = z - z^_anchor (or v = z where ds.direct) with scale ds.scale[h * D + i], any other token
// v = z with scale sigma_i g; the index is the number of thresholds strictly below v / scale
// (0 when scale = 0), as in PackIndices, and z^ is what the decoder computes from it.
void FraqtlCodec::QuantizeChunk(const ChunkDesc& desc, const std::vector<float>& z,
                   const std::vector<float>& gains, const DeltaSide& ds, size_t nq,
                   const Allocation& al, std::vector<uint8_t>* out, std::vector<float>* zhat,
                   CodecImpl impl) const {
  const size_t d = d_, H = kv_heads_;
  std::vector<float> anchor(al.group ? H * d : 0, 0.0f);
  std::vector<uint8_t> discard;
  BitWriter w(out != nullptr ? out : &discard);
  for (size_t qi = 0; qi < nq; ++qi) {
    const bool is_delta = al.UsesHi(qi) && al.group != 0;
    const std::vector<uint8_t>& alloc = al.For(qi);
    for (uint32_t h = 0; h < H; ++h) {
      const Prepared& p = prep(desc.layer, desc.kind, h);
      const float* zr = z.data() + (qi * H + h) * d;
      const float g = cfg_.gain ? gains[qi * H + h] : 1.0f;
      const uint8_t* a = alloc.data() + size_t{h} * d;
      float* base = al.group ? anchor.data() + size_t{h} * d : nullptr;
      for (size_t i = 0; i < d; ++i) {
        const int b = a[i];
        const bool pred = is_delta && !ds.direct[size_t{h} * d + i];
        const float v = pred ? zr[i] - base[i] : zr[i];
        float q = 0.0f;
        if (b == kProtectedBits) {
          const uint16_t hv = HalfSaturate(v);
          if (out) impl == CodecImpl::kReference ? w.PutRef(hv, b) : w.Put(hv, b);
          q = HalfToFloat(hv);
        } else if (b > 0) {
          const float scale = is_delta ? ds.scale[size_t{h} * d + i] : p.sigma[i] * g;
          const float u = scale > 0.0f ? v / scale : 0.0f;
          const std::vector<float>& th = p.thresholds[b];
          uint32_t idx = 0;
          while (idx < th.size() && u > th[idx]) ++idx;
          if (out) impl == CodecImpl::kReference ? w.PutRef(idx, b) : w.Put(idx, b);
          q = p.levels[b][idx] * scale;
        }
        const float rec = pred ? base[i] + q : q;
        if (zhat) (*zhat)[(qi * H + h) * d + i] = rec;
        if (base != nullptr && !is_delta) base[i] = rec;
      }
    }
  }
  w.Finish();
}

Status FraqtlCodec::EncodeHalves(const ChunkDesc& desc, const uint16_t* in,
                                 std::vector<uint8_t>* out, CodecImpl impl) const {
  if (cfg_.entropy == Entropy::kRans) return EncodeRans(desc, nullptr, in, out, impl);
  return Codec::EncodeHalves(desc, in, out, impl);
}

Status FraqtlCodec::Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                           CodecImpl impl) const {
  if (cfg_.entropy == Entropy::kRans) return EncodeRans(desc, in, nullptr, out, impl);
  KVWIRE_RETURN_IF_ERROR(CheckDesc(desc));
  KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, "fraqtl"));
  ChunkPlan plan = Plan(desc);
  const size_t d = d_, H = kv_heads_, nq = plan.q_tokens.size(), nf = plan.fp_tokens.size();
  const size_t fixed = FixedBytes(plan);
  const double avail = TargetPayloadBytes(desc) - static_cast<double>(fixed);
  const uint64_t max_total = uint64_t{kProtectedBits} * H * d * nq;
  uint64_t total = 0;
  if (nq > 0 && avail > 0) {
    total = std::min<uint64_t>(max_total, static_cast<uint64_t>(std::floor(avail * 8.0)));
  }

  // Coefficients (and gains) of the quantized tokens.
  // z is kept per thread across chunks (a fresh multi-MiB buffer per chunk costs its page faults);
  // the end of Encode drops it (and the index columns) when a chunk made it larger than kKeepBytes.
  thread_local std::vector<float> z;
  z.resize(nq * H * d);
  std::vector<float> gains(cfg_.gain ? nq * H : 0), row(d), tmp(d);
  const bool rot = prerope_ && desc.kind == KvKind::kKey;
  const float* angles =
      rot ? PositionAngles(rope_, desc.positions_start + int64_t{desc.token_begin}, desc.tokens)
          : nullptr;
  for (size_t qi = 0; qi < nq; ++qi) {
    const uint32_t t = plan.q_tokens[qi];
    const float* cs = rot ? angles + size_t{t} * (rope_.rope_dim / 2) * 2 : nullptr;
    for (uint32_t h = 0; h < H; ++h) {
      const Prepared& p = prep(desc.layer, desc.kind, h);
      LoadRow(desc, in, t, h, row.data(), cs);
      float* zr = z.data() + (qi * H + h) * d;
      Transform(p, row.data(), zr, tmp.data(), impl);
      if (cfg_.gain) {
        double ss = 0;
        for (size_t i = 0; i < d; ++i) {
          if (p.variance[i] > 0) ss += static_cast<double>(zr[i]) * zr[i] / p.variance[i];
        }
        const float g = HalfToFloat(HalfSaturate(static_cast<float>(std::sqrt(ss / d))));
        gains[qi * H + h] = g > 0.0f ? g : 1.0f;  // fp16-exact; a zero gain codes as 1
      }
    }
  }

  // Delta side (step 7), per (head, direction): predict from the decoded anchor, or not (when
  // that leaves a larger mean square than z itself: tokens that do not follow their anchor);
  // the scale is the RMS over the chunk's delta tokens of what is then coded. Measured closed
  // loop: the anchors decoded with a first allocation that priced the delta tokens open loop
  // (differences to the exact anchors). Sent as fp16, used as sent.
  const Layout layout = LayoutOf(plan);
  DeltaSide ds;
  if (layout.has_delta_scales) {
    const size_t G = cfg_.delta, hd = H * d;
    auto measure = [&](const std::vector<float>& ref) {
      std::vector<double> pred(hd, 0.0), direct(hd, 0.0);
      for (size_t qi = 0; qi < nq; ++qi) {
        if (qi % G == 0) continue;
        const size_t anchor = qi - qi % G;
        for (size_t k = 0; k < hd; ++k) {
          const double zk = z[qi * hd + k];
          const double v = zk - ref[anchor * hd + k];
          pred[k] += v * v;
          direct[k] += zk * zk;
        }
      }
      const double n = static_cast<double>(DeltaTokens(nq));
      for (size_t k = 0; k < hd; ++k) {
        ds.direct[k] = direct[k] <= pred[k] ? 1 : 0;
        const double ms = std::min(direct[k], pred[k]) / n;
        ds.scale[k] = HalfToFloat(HalfSaturate(static_cast<float>(std::sqrt(ms))));
        ds.var[k] = double{ds.scale[k]} * ds.scale[k];
      }
    };
    ds.scale.assign(hd, 0.0f);
    ds.var.assign(hd, 0.0);
    ds.direct.assign(hd, 0);
    measure(z);  // open loop
    std::vector<float> zhat(nq * hd);
    QuantizeChunk(desc, z, gains, ds, nq, AllocateDelta(desc, total, nq, ds.var), nullptr, &zhat,
                  impl);
    measure(zhat);  // closed loop
  }

  // Packs the indices for an index-bit total.
  std::vector<uint8_t> packed;
  thread_local IndexCache cache;
  cache.Reset(cfg_.delta ? 0 : H * d * IndexCache::kSlots, nq);
  auto pack = [&](uint64_t bits, std::vector<uint8_t>* dst) {
    if (cfg_.delta) {
      Allocation a = AllocateDelta(desc, bits, nq, ds.var);
      QuantizeChunk(desc, z, gains, ds, nq, a, dst, nullptr, impl);
      return a;
    }
    Allocation a = AllocateChunk(desc, bits, nq);
    PackIndices(desc, z, gains, nq, a, dst, impl, &cache);
    return a;
  };
  Allocation alloc = pack(total, &packed);
  bool zstd = false;
  std::vector<uint8_t> section = packed;
  if (cfg_.entropy == Entropy::kZstd && nq > 0) {
    // Largest index-bit total whose compressed section still fits the budget.
    auto compress = [&](const std::vector<uint8_t>& raw, std::vector<uint8_t>* dst) {
      dst->resize(ZSTD_compressBound(raw.size()));
      const size_t n = ZSTD_compress(dst->data(), dst->size(), raw.data(), raw.size(), kZstdLevel);
      dst->resize(ZSTD_isError(n) ? 0 : n);
    };
    std::vector<uint8_t> best_comp, trial, comp;
    compress(packed, &best_comp);
    // The largest index-bit total whose section still fits `avail`, within kSearchTolerance.
    // The compressed size grows about linearly with the total but not monotonically: how a
    // token's bits fall on byte boundaries changes what zstd finds, and zstd level 3 now and
    // then leaves a block uncompressed where one index bit less compressed by 9 % (measured
    // on a 4,096-token chunk of real KV; levels >= 4 are smoother but 5x slower and gained
    // <= 3 % KL on the eval windows). So the search keeps a
    // bracket [lo fits, hi does not] and guesses by the secant through the sizes measured at
    // its ends, aiming a little below the budget; a guess that lands on the same side twice in
    // a row is replaced by the midpoint, so a stalled secant still halves the bracket. It stops
    // once the fitting size is within the tolerance of `avail` (typically 2-4 zstd passes on
    // real KV, where bisection to the last bit took ~20). Without a measured upper end the
    // guess extrapolates from lo's compression ratio, so a chunk that compresses far more than
    // its bits (a byte-level model's first layer, whose K/V depend on the token alone) gets
    // there in a few passes too. Only the encoder searches; the decoder reads the total from
    // the payload.
    uint64_t lo = total, hi = max_total + 1;  // hi: smallest total known not to fit
    double lo_size = static_cast<double>(best_comp.empty() ? packed.size()
                                                           : std::min(best_comp.size(),
                                                                      packed.size()));
    double hi_size = 0;
    int same_side = 0;  // consecutive results on one side (> 0: fits, < 0: does not)
    const double aim = avail * (1.0 - kSearchTolerance / 2);
    int reprobes = 0;
    for (int pass = 0; pass < kMaxSearchPasses; ++pass) {
      if (avail - lo_size <= avail * kSearchTolerance) break;
      if (lo + 1 >= hi) {
        // Collapsed short of the budget: the size is periodic in the bits per token (when it
        // is a multiple of 8, equal tokens pack to equal bytes, which zstd matches), so a total
        // further up may fit again. Forget the upper end and extrapolate once more.
        if (hi > max_total || reprobes == kMaxReprobes) break;
        ++reprobes;
        hi = max_total + 1;
        same_side = 0;
      }
      double guess;
      if (hi > max_total) {  // no upper end yet: extrapolate lo's bits per byte
        guess = lo_size > 0 ? static_cast<double>(lo) * aim / lo_size : 2.0 * lo + 8.0;
      } else if (hi_size > lo_size) {
        guess = static_cast<double>(lo) + (aim - lo_size) / (hi_size - lo_size) *
                                              static_cast<double>(hi - lo);
      } else {  // not monotone between the ends: bisect
        guess = static_cast<double>(lo + (hi - lo) / 2);
      }
      uint64_t mid = guess >= static_cast<double>(hi) ? hi - 1
                     : guess <= static_cast<double>(lo) ? lo + 1
                                                        : static_cast<uint64_t>(guess);
      if (same_side >= 2 || same_side <= -2) mid = lo + (hi - lo) / 2;
      mid = std::clamp<uint64_t>(mid, lo + 1, std::min(hi - 1, max_total));
      trial.clear();
      Allocation a = pack(mid, &trial);
      compress(trial, &comp);
      const size_t size = comp.empty() ? trial.size() : std::min(comp.size(), trial.size());
      if (static_cast<double>(size) <= avail) {
        lo = mid;
        lo_size = static_cast<double>(size);
        packed.swap(trial);
        best_comp.swap(comp);
        alloc = std::move(a);
        same_side = same_side > 0 ? same_side + 1 : 1;
      } else {
        hi = mid;
        hi_size = static_cast<double>(size);
        same_side = same_side < 0 ? same_side - 1 : -1;
      }
    }
    total = lo;
    zstd = !best_comp.empty() && best_comp.size() < packed.size();
    section = zstd ? std::move(best_comp) : packed;
  }

  // Sign sketch (step 6) of the residual left by the chosen allocation.
  std::vector<uint16_t> norms;
  std::vector<uint8_t> signs;
  if (cfg_.sign) {
    const uint32_t m = cfg_.sign;
    std::vector<float> zhat(nq * H * d), r(d);
    QuantizeChunk(desc, z, gains, ds, nq, alloc, nullptr, &zhat, impl);
    norms.resize(nq * H);
    std::vector<uint8_t> bits(m);
    BitWriter w(&signs);
    for (size_t k = 0; k < nq * H; ++k) {
      double ss = 0;
      for (size_t j = 0; j < d; ++j) {
        r[j] = z[k * d + j] - zhat[k * d + j];
        ss += double{r[j]} * r[j];
      }
      norms[k] = HalfSaturate(static_cast<float>(std::sqrt(ss)));
      const Prepared& p = prep(desc.layer, desc.kind, static_cast<uint32_t>(k % H));
      SketchSigns(p.sketch.data(), m, d_, r.data(), bits.data());
      for (uint32_t b = 0; b < m; ++b) w.PutRef(bits[b], 1);
    }
    w.Finish();
  }

  if (cfg_.delta) total = alloc.total;  // the bits spent (AllocateDelta)

  const size_t base = out->size();
  out->resize(base + fixed + section.size());
  uint8_t* o = out->data() + base;
  o[0] = kPayloadVersion;
  o[1] = zstd ? kFlagZstd : 0;
  StoreU16(o + 2, 0);
  StoreU32(o + 4, static_cast<uint32_t>(total));
  StoreU32(o + 8, static_cast<uint32_t>(section.size()));
  uint8_t* fp = o + kPayloadHeader;
  for (size_t k = 0; k < nf; ++k) {
    const float* r = in + size_t{plan.fp_tokens[k]} * H * d;
    impl == CodecImpl::kReference ? baseline::StoreHalvesRef(r, H * d, fp + k * H * d * 2)
                                  : baseline::StoreHalves(r, H * d, fp + k * H * d * 2);
  }
  uint8_t* g = fp + nf * H * d * 2;
  for (size_t i = 0; i < gains.size(); ++i) StoreU16(g + 2 * i, FloatToHalf(gains[i]));
  for (size_t i = 0; i < ds.scale.size(); ++i) {
    StoreU16(o + layout.delta_scales + 2 * i, FloatToHalf(ds.scale[i]));
    if (ds.direct[i]) o[layout.delta_modes + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
  for (size_t i = 0; i < norms.size(); ++i) StoreU16(o + layout.norms + 2 * i, norms[i]);
  if (!signs.empty()) std::memcpy(o + layout.signs, signs.data(), signs.size());
  if (!section.empty()) std::memcpy(o + fixed, section.data(), section.size());
  // Per-thread scratch above kKeepBytes (an unusually large chunk) is not kept.
  if (z.capacity() * sizeof(float) > IndexCache::kKeepBytes) std::vector<float>().swap(z);
  if (cache.pool.capacity() * sizeof(uint16_t) > IndexCache::kKeepBytes) {
    std::vector<uint16_t>().swap(cache.pool);
  }
  return Status::Ok();
}

}  // namespace kvwire::fraqtl::internal
