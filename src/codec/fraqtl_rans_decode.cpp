// fraqtl with entropy=rans: the decoder of payload version 2 (docs/FORMAT.md 6.8.1): checks
// the header, the repeat section and the block table, then decodes up to four blocks side by
// side (rans::BlockDecoder) a run of tokens at a time and rebuilds their rows.
#include <algorithm>
#include <cmath>
#include <optional>

#include "codec/fraqtl_codec_impl.h"
#include "codec/fraqtl_rans_kernels.h"

namespace kvwire::fraqtl::internal {

Status FraqtlCodec::DecodeRans(const ChunkDesc& desc, std::span<const uint8_t> payload,
                               float* out, CodecImpl impl) const {
  KVWIRE_RETURN_IF_ERROR(CheckDesc(desc).WithContext("decode"));
  const ChunkPlan plan = Plan(desc);
  const size_t D = d_, H = kv_heads_, nq = plan.q_tokens.size(), nf = plan.fp_tokens.size();
  const RansLadder& lad = ladders_[size_t{desc.layer} * 2 + static_cast<uint32_t>(desc.kind)];
  const bool fast = impl != CodecImpl::kReference;
  const bool avx2 = fast && HaveAvx2Fma() && D % 8 == 0;
  const size_t gains_at = kRansPayloadHeader + nf * H * D * 2;
  const size_t repeats_at = gains_at + (cfg_.gain ? nq * H * 2 : 0);
  KVWIRE_RETURN_ERROR_IF(payload.size() < repeats_at, kCorrupt,
                         "fraqtl: payload of " + std::to_string(payload.size()) +
                             " bytes, shorter than its fixed part (" +
                             std::to_string(repeats_at) + ")");
  const uint8_t* p = payload.data();
  KVWIRE_RETURN_ERROR_IF(p[0] != kPayloadVersionRans, kCorrupt,
                         "fraqtl: payload version " + std::to_string(p[0]) +
                             ", expected 2 (entropy=rans)");
  KVWIRE_RETURN_ERROR_IF((p[1] & ~kFlagRepeats) != 0 || LoadU16(p + 2) != 0, kCorrupt,
                         "fraqtl: unknown payload flags");
  const bool has_repeats = (p[1] & kFlagRepeats) != 0;
  KVWIRE_RETURN_ERROR_IF(has_repeats && payload.size() < repeats_at + 4, kCorrupt,
                         "fraqtl: payload too short for its repeat section");
  const uint64_t repeat_bytes = has_repeats ? LoadU32(p + repeats_at) : 0;
  const uint64_t fixed = repeats_at + (has_repeats ? 4 + repeat_bytes : 0);
  KVWIRE_RETURN_ERROR_IF(fixed > payload.size(), kCorrupt,
                         "fraqtl: repeat section beyond the payload");
  const uint64_t n_steps = LoadU32(p + 4), extra = LoadU32(p + 8), section_bytes = LoadU32(p + 12);
  KVWIRE_RETURN_ERROR_IF(n_steps > lad.steps.size(), kCorrupt,
                         "fraqtl: " + std::to_string(n_steps) + " allocation steps, the ladder has " +
                             std::to_string(lad.steps.size()));
  KVWIRE_RETURN_ERROR_IF(extra > nq || (extra > 0 && n_steps == lad.steps.size()), kCorrupt,
                         "fraqtl: " + std::to_string(extra) +
                             " tokens of a partial step is impossible here");
  KVWIRE_RETURN_ERROR_IF(fixed + section_bytes != payload.size(), kCorrupt,
                         "fraqtl: payload of " + std::to_string(payload.size()) +
                             " bytes, its fields announce " + std::to_string(fixed + section_bytes));
  const uint8_t* fp = p + kRansPayloadHeader;
  KVWIRE_RETURN_ERROR_IF(!baseline::HalvesFinite(fp, nf * H * D), kCorrupt,
                         "fraqtl: a pass-through value is not finite");
  if (cfg_.gain) {
    KVWIRE_RETURN_ERROR_IF(!baseline::HalvesAreScales(p + gains_at, nq * H), kCorrupt,
                           "fraqtl: a gain is negative or not finite");
  }
  std::vector<uint8_t> bits(H * D, 0);
  for (size_t s = 0; s < n_steps; ++s) bits[lad.steps[s].item] = lad.steps[s].to;
  const bool partial = extra > 0;
  const RansStep part = partial ? lad.steps[n_steps] : RansStep{0, 0, 0};
  bool any = partial;
  for (uint8_t b : bits) any = any || b != 0;
  const size_t block_tokens = RansBlockTokens(H * D);
  const size_t blocks = (nq + block_tokens - 1) / block_tokens;
  std::span<const uint8_t> section = payload.subspan(fixed);
  if (!any) {
    KVWIRE_RETURN_ERROR_IF(!section.empty(), kCorrupt,
                           "fraqtl: index section present where the allocation codes nothing");
  } else {
    KVWIRE_RETURN_ERROR_IF(section.size() < 4 * blocks, kCorrupt,
                           "fraqtl: index section shorter than its block table");
    uint64_t sum = 4 * blocks;
    for (size_t b = 0; b < blocks; ++b) {
      const uint32_t len = LoadU32(section.data() + 4 * b);
      KVWIRE_RETURN_ERROR_IF(len < rans::kBlockStateBytes || (len - rans::kBlockStateBytes) % 2,
                             kCorrupt, "fraqtl: rANS block of impossible length");
      sum += len;
    }
    KVWIRE_RETURN_ERROR_IF(sum != section.size(), kCorrupt,
                           "fraqtl: rANS block lengths do not add up to the index section");
  }
  for (size_t k = 0; k < nf; ++k) {
    float* r = out + size_t{plan.fp_tokens[k]} * H * D;
    fast ? baseline::LoadHalves(fp + k * H * D * 2, H * D, r)
         : baseline::LoadHalvesRef(fp + k * H * D * 2, H * D, r);
  }
  if (nq == 0) return Status::Ok();
  const size_t block_rows = std::min(nq, block_tokens);

  // Per-thread scratch (kScratchKeepBytes): which rows repeat (zeroed here), the row each
  // copies (read only where it repeats), and the symbols of a run of tokens and their
  // slot-table offsets (written before they are read).
  thread_local struct Scratch {
    std::vector<uint8_t> repeat;
    std::vector<uint32_t> ref, offs, syms;
  } scratch;
  Grow(&scratch.repeat, nq * H);
  Grow(&scratch.ref, nq * H);
  struct Trim {  // on every way out of this chunk
    Scratch& sc;
    ~Trim() {
      ShedIfLarge(&sc.repeat);
      ShedIfLarge(&sc.ref);
      ShedIfLarge(&sc.offs);
      ShedIfLarge(&sc.syms);
    }
  } trim{scratch};
  uint8_t* const repeat = scratch.repeat.data();
  uint32_t* const ref = scratch.ref.data();
  std::fill(repeat, repeat + nq * H, 0);
  // Repeats: which (token, head) rows copy which unique row of their (block, head).
  if (has_repeats) {
    BitReader r(payload.subspan(repeats_at + 4, repeat_bytes));
    std::vector<size_t> u(H);
    uint64_t used = 0;
    for (size_t qi = 0; qi < nq; ++qi) {
      if (qi % block_tokens == 0) std::fill(u.begin(), u.end(), 0);
      for (size_t h = 0; h < H; ++h) {
        KVWIRE_RETURN_ERROR_IF(used + 1 > 8 * repeat_bytes, kCorrupt,
                               "fraqtl: repeat section too short");
        repeat[qi * H + h] = static_cast<uint8_t>(r.Get(1));
        ++used;
        if (repeat[qi * H + h]) {
          const int w = RefBits(u[h]);
          KVWIRE_RETURN_ERROR_IF(u[h] == 0 || used + w > 8 * repeat_bytes, kCorrupt,
                                 "fraqtl: a repeat without an earlier row in its block");
          ref[qi * H + h] = w ? r.Get(w) : 0;
          used += w;
          KVWIRE_RETURN_ERROR_IF(ref[qi * H + h] >= u[h], kCorrupt,
                                 "fraqtl: a repeat of a row that does not exist");
        } else {
          ref[qi * H + h] = static_cast<uint32_t>(u[h]++);
        }
      }
    }
    KVWIRE_RETURN_ERROR_IF((used + 7) / 8 != repeat_bytes, kCorrupt,
                           "fraqtl: repeat section of the wrong length");
    KVWIRE_RETURN_ERROR_IF(used % 8 && (payload[repeats_at + 4 + used / 8] >> (used % 8)) != 0,
                           kCorrupt, "fraqtl: padding bits of the repeat section are not zero");
  }

  // Per head, the coded directions (ascending) of a token without (lo) and with (hi) the
  // partial step; per token, the slot-table offsets of its symbols in decoding order.
  struct Coded {
    uint32_t i;
    int b;
    const float* levels;  // the codebook, times sigma_i unless gains scale it per token
  };
  std::vector<std::vector<Coded>> lo(H), hi(H);
  std::vector<std::vector<uint32_t>> pat_lo(H), pat_hi(H);
  std::vector<float> scaled;  // levels * sigma of every coded (direction, bits)
  auto add = [&](std::vector<Coded>* list, std::vector<uint32_t>* pat, uint32_t h, uint32_t i,
                 int b) {
    const uint32_t off = EnsureSlots(desc.layer, desc.kind, h, b);
    pat->push_back(off);
    if (b == kProtectedBits) pat->push_back(off);
    list->push_back({i, b, nullptr});
  };
  for (uint32_t h = 0; h < H; ++h) {
    for (uint32_t i = 0; i < D; ++i) {
      const uint32_t item = static_cast<uint32_t>(h * D + i);
      if (bits[item]) add(&lo[h], &pat_lo[h], h, i, bits[item]);
      const int bh = partial && item == part.item ? part.to : bits[item];
      if (bh) add(&hi[h], &pat_hi[h], h, i, bh);
    }
  }
  // Codebooks: with gains, the profile's (scaled per token); else times sigma_i, computed once
  // here after the lists stopped growing (pointers into `scaled`).
  size_t n_scaled = 0;
  for (auto* lists : {&lo, &hi}) {
    for (const auto& list : *lists) {
      for (const Coded& c : list) {
        n_scaled += c.b == kProtectedBits || cfg_.gain ? 0 : size_t{1} << c.b;
      }
    }
  }
  scaled.resize(n_scaled);
  n_scaled = 0;
  for (auto* lists : {&lo, &hi}) {
    for (size_t h = 0; h < H; ++h) {
      const Prepared& pr = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
      for (Coded& c : (*lists)[h]) {
        if (c.b == kProtectedBits) continue;
        const std::vector<float>& lv = pr.levels[c.b];
        if (cfg_.gain) {
          c.levels = lv.data();
          continue;
        }
        float* dst = scaled.data() + n_scaled;
        const float sigma = pr.sigma[c.i];
        for (size_t v = 0; v < lv.size(); ++v) dst[v] = lv[v] * sigma;
        c.levels = dst;
        n_scaled += lv.size();
      }
    }
  }
  // Lists that are plain codebook lookups (no gains) after a prefix of protected coefficients
  // (protection goes to the strongest directions, which come first: the usual shape) dequantize
  // with vector lookups: the prefix's length, and the offset of each later direction's codebook
  // in `scaled`. Other lists take the scalar loop.
  struct Vectorized {
    bool on = false;
    size_t prefix = 0;
    std::vector<int32_t> offsets;
  };
  std::vector<Vectorized> lv_lo(H), lv_hi(H);
  for (size_t h = 0; h < H; ++h) {
    for (auto [list, lv] : {std::pair{&lo[h], &lv_lo[h]}, std::pair{&hi[h], &lv_hi[h]}}) {
      if (cfg_.gain || !avx2 || !HaveAvx2F16c()) break;
      size_t prefix = 0;
      while (prefix < list->size() && (*list)[prefix].b == kProtectedBits) ++prefix;
      bool plain = true;
      for (size_t c = prefix; c < list->size(); ++c) plain = plain && (*list)[c].b != kProtectedBits;
      if (!plain || prefix == list->size()) continue;
      lv->on = true;
      lv->prefix = prefix;
      for (size_t c = prefix; c < list->size(); ++c) {
        lv->offsets.push_back(static_cast<int32_t>((*list)[c].levels - scaled.data()));
      }
    }
  }
  const bool rot = prerope_ && desc.kind == KvKind::kKey;
  const float* angles =
      rot ? PositionAngles(rope_, desc.positions_start + int64_t{desc.token_begin}, desc.tokens)
          : nullptr;
  std::vector<const float*> rows(D);
  const std::vector<Coded>* rows_of = nullptr;  // the list `rows` was filled for (one per head)
  // The reference inverse: x_j = mean_j + the fused multiply-adds of G[j, i] z_i over the coded
  // directions, ascending.
  auto reference_inverse = [&](const Prepared& pr, const std::vector<Coded>& list,
                               const float* z, float* o) {
    for (size_t j = 0; j < D; ++j) {
      float acc = 0.0f;
      for (size_t c = 0; c < list.size(); ++c) {
        acc = std::fma(pr.inv[j * D + list[c].i], z[c], acc);
      }
      o[j] = pr.mean[j] + acc;
    }
  };
  // Coefficients of each block's unique rows, per stream of DecodeSideBySide: a repeat copies
  // them (and the list of directions they were coded with).
  constexpr int kStreams = rans::BlockDecoder::kMaxStreams;
  std::vector<float> uvals[kStreams];
  std::vector<const std::vector<Coded>*> ulist[kStreams];
  if (has_repeats) {
    for (int s = 0; s < kStreams; ++s) {
      uvals[s].resize(block_rows * H * D);
      ulist[s].resize(block_rows * H);
    }
  }
  // Rows of quantized tokens [r0, r1) from their symbols (stream s), head by head: rows of a
  // head coded with the same directions are rebuilt kMulRows at a time (they share the loads
  // of G). at_sym[i] = where the symbols of row (r0 + i / H, i % H) start.
  std::vector<size_t> at_sym;
  std::vector<float> zbuf(kMulRows * D);
  // With AVX-512 and no repeats (whose copies need the values), coded coefficients are
  // dequantized inside the product instead of in a pass of their own.
  const bool fuse_dequant = avx2 && !has_repeats && HaveAvx512();
  auto rebuild = [&](int s, size_t r0, size_t r1, bool use_hi, const uint32_t* sp) -> Status {
    const std::vector<std::vector<uint32_t>>& pat = use_hi ? pat_hi : pat_lo;
    at_sym.resize((r1 - r0) * H);
    size_t next = 0;
    for (size_t qi = r0; qi < r1; ++qi) {
      for (size_t h = 0; h < H; ++h) {
        at_sym[(qi - r0) * H + h] = next;
        if (!repeat[qi * H + h]) next += pat[h].size();
      }
    }
    for (size_t h = 0; h < H; ++h) {
      const Prepared& pr = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
      const std::vector<Coded>* plist = nullptr;
      const float* zs[kMulRows];
      float* os[kMulRows];
      const float* css[kMulRows];
      // Fused: the pending rows' coefficients past the protected prefix stay symbols (syms), read
      // through the codebooks by the product itself (rows without repeats, whose coefficients
      // nothing else reads).
      const uint32_t* syms[kMulRows];
      const Vectorized* fused = nullptr;
      int pending = 0;
      auto flush = [&] {
        if (pending == 0) return;
        const std::vector<Coded>& list = *plist;
        if (!fast) {
          for (int r = 0; r < pending; ++r) reference_inverse(pr, list, zs[r], os[r]);
        } else {
          if (rows_of != &list) {  // the rows of G this list's coefficients multiply
            for (size_t c = 0; c < list.size(); ++c) {
              rows[c] = pr.inv_t.data() + size_t{list[c].i} * D;
            }
            rows_of = &list;
          }
          if (fused != nullptr) {
            MulRowsDequantAvx512(rows.data(), list.size(), zs, fused->prefix, scaled.data(),
                                 fused->offsets.data(), syms, pending, D, pr.mean.data(), os);
          } else if (avx2) {
            MulRowsSimd(rows.data(), list.size(), zs, pending, D, pr.mean.data(), os);
          } else {
            for (int r = 0; r < pending; ++r) {
              AccumulateScalar(rows.data(), zs[r], list.size(), pr.mean.data(), D, os[r]);
            }
          }
        }
        if (rot) {
          for (int r = 0; r < pending; ++r) {
            RopeRotate(rope_, os[r], css[r], css[r] + rope_.rope_dim / 2, /*undo=*/false);
          }
        }
        pending = 0;
      };
      for (size_t qi = r0; qi < r1; ++qi) {
        const uint32_t t = plan.q_tokens[qi];
        const size_t row = qi * H + h;
        const std::vector<Coded>* list =
            repeat[row] ? ulist[s][size_t{ref[row]} * H + h] : (use_hi ? &hi[h] : &lo[h]);
        const Vectorized* fuse = nullptr;
        if (fuse_dequant && !repeat[row]) {
          const Vectorized& lv = use_hi ? lv_hi[h] : lv_lo[h];
          if (lv.on) fuse = &lv;
        }
        if (list != plist || fuse != fused) flush();
        plist = list;
        fused = fuse;
        const float* z;
        if (repeat[row]) {  // the unique row's coefficients, at this token's position
          z = uvals[s].data() + (size_t{ref[row]} * H + h) * D;
        } else {
          float g = 1.0f;
          if (cfg_.gain) {
            g = baseline::LoadHalf(p + gains_at, row);
            g = g > 0.0f ? g : 1.0f;
          }
          const uint32_t* q = sp + at_sym[(qi - r0) * H + h];
          float* zc = zbuf.data() + pending * D;
          const Vectorized& lv = use_hi ? lv_hi[h] : lv_lo[h];
          if (lv.on) {
            // A protected coefficient is two byte symbols, its fp16 bits little-endian.
            KVWIRE_RETURN_ERROR_IF(!HalvesFromByteSymbolsF16c(q, lv.prefix, zc), kCorrupt,
                                   "fraqtl: a protected coefficient is not finite");
            syms[pending] = q + 2 * lv.prefix;
            if (fuse == nullptr) {
              DequantizeAvx2(scaled.data(), lv.offsets.data(), q + 2 * lv.prefix,
                             list->size() - lv.prefix, zc + lv.prefix);
            }
          } else {
            for (size_t c = 0; c < list->size(); ++c) {
              const Coded& cd = (*list)[c];
              if (cd.b == kProtectedBits) {
                const uint16_t hv = static_cast<uint16_t>(q[0] | q[1] << 8);
                q += 2;
                KVWIRE_RETURN_ERROR_IF(!baseline::HalfIsFinite(hv), kCorrupt,
                                       "fraqtl: a protected coefficient is not finite");
                zc[c] = HalfToFloat(hv);
              } else {
                zc[c] = cfg_.gain ? cd.levels[*q] * (pr.sigma[cd.i] * g) : cd.levels[*q];
                ++q;
              }
            }
          }
          z = zc;
          if (has_repeats) {
            const size_t at = size_t{ref[row]} * H + h;
            std::copy(zc, zc + list->size(), uvals[s].data() + at * D);
            ulist[s][at] = list;
          }
        }
        zs[pending] = z;
        os[pending] = out + (size_t{t} * H + h) * D;
        css[pending] = rot ? angles + size_t{t} * (rope_.rope_dim / 2) * 2 : nullptr;
        if (++pending == kMulRows) flush();
      }
      flush();
    }
    return Status::Ok();
  };
  // Up to kMaxStreams blocks at a time, a run of each block's tokens at a time: the runs'
  // symbols first (side by side), then their rows.
  constexpr size_t kRun = 32;
  size_t per_token = 0;
  for (size_t h = 0; h < H; ++h) per_token += std::max(pat_lo[h].size(), pat_hi[h].size());
  const size_t run_symbols = kRun * per_token;
  Grow(&scratch.offs, kStreams * run_symbols);
  Grow(&scratch.syms, kStreams * run_symbols);
  uint32_t* const offs = scratch.offs.data();
  uint32_t* const syms = scratch.syms.data();
  size_t at = 4 * blocks;
  for (size_t b0 = 0; b0 < blocks; b0 += kStreams) {
    const int streams = static_cast<int>(std::min<size_t>(kStreams, blocks - b0));
    std::optional<rans::BlockDecoder> decs[kStreams];
    size_t cur[kStreams], end[kStreams];
    for (int s = 0; s < streams; ++s) {
      cur[s] = (b0 + s) * block_tokens;
      end[s] = std::min(nq, cur[s] + block_tokens);
      if (any) {
        const uint32_t len = LoadU32(section.data() + 4 * (b0 + s));
        decs[s].emplace(section.subspan(at, len));
        at += len;
      }
    }
    for (;;) {
      rans::BlockDecoder* dp[kStreams];
      const uint32_t* op[kStreams];
      uint32_t* sp[kStreams];
      size_t n[kStreams], r0[kStreams], r1[kStreams];
      int stream[kStreams];
      bool use_hi[kStreams];
      int active = 0;
      for (int s = 0; s < streams; ++s) {
        if (cur[s] >= end[s]) continue;
        const int a = active++;
        use_hi[a] = partial && cur[s] < extra;
        r0[a] = cur[s];
        r1[a] = std::min({end[s], cur[s] + kRun, use_hi[a] ? size_t{extra} : end[s]});
        const std::vector<std::vector<uint32_t>>& pat = use_hi[a] ? pat_hi : pat_lo;
        uint32_t* o = offs + a * run_symbols;
        size_t m = 0;
        for (size_t qi = r0[a]; qi < r1[a]; ++qi) {
          for (size_t h = 0; h < H; ++h) {
            if (repeat[qi * H + h]) continue;
            std::copy(pat[h].begin(), pat[h].end(), o + m);
            m += pat[h].size();
          }
        }
        n[a] = m;
        stream[a] = s;
        op[a] = o;
        sp[a] = syms + a * run_symbols;
        dp[a] = any ? &*decs[s] : nullptr;
        cur[s] = r1[a];
      }
      if (active == 0) break;
      if (any) rans::BlockDecoder::DecodeSideBySide(dp, active, slot_pool_.get(), op, n, sp);
      for (int a = 0; a < active; ++a) {
        KVWIRE_RETURN_IF_ERROR(rebuild(stream[a], r0[a], r1[a], use_hi[a], sp[a]));
      }
    }
    for (int s = 0; s < streams; ++s) {
      KVWIRE_RETURN_ERROR_IF(
          decs[s] && !decs[s]->Ok(), kCorrupt,
          "fraqtl: rANS block " + std::to_string(b0 + s) + " does not decode cleanly");
    }
  }
  return Status::Ok();
}

}  // namespace kvwire::fraqtl::internal
