// fraqtl with entropy=rans: the encoder of payload version 2 (docs/FORMAT.md 6.8.1).
//
// One pass. The rate allocation of a (layer, K|V) is a fixed ladder of steps computed from the
// profile (RansLadder); a chunk takes its first N steps, and the first `extra`
// quantized tokens take step N + 1 as well. Every symbol's cost is a table lookup, so the
// encoder prices the ladder on the chunk's own coefficients, picks N and extra that fill the
// budget, and then codes each symbol once with static rANS (rans.h).
//
// Only the directions that receive bits are rotated: the encoder projects each row onto the
// kept rows of F (one pass over the row per token, all kept outputs accumulated together), the
// decoder accumulates the coded columns of G. Every output is one chain of fused multiply-adds
// in ascending order (docs/FORMAT.md 6.8.1), which the reference computes output by output with
// std::fma, so the two paths give identical bytes and identical decoded values.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "codec/fraqtl_codec_impl.h"
#include "codec/fraqtl_rans_kernels.h"

namespace kvwire::fraqtl::internal {
namespace {

// The encoder's per-thread scratch (kScratchKeepBytes).
struct Scratch {
  std::vector<float> rows;       // [nq][H][D] the rows, RoPE undone for pre-RoPE K
  std::vector<float> z;          // [H][nq][Kp_h] coefficients of the kept directions
  std::vector<uint16_t> idx;     // [H][nq][Kp_h] their symbols at the current allocation
  std::vector<uint16_t> column;  // [nq] a column priced at another width
  std::vector<uint8_t> section;
  std::vector<const rans::EncSym*> sym;  // a block's symbols, in decoding order
  void Trim() {
    ShedIfLarge(&rows);
    ShedIfLarge(&z);
    ShedIfLarge(&idx);
    ShedIfLarge(&section);
    ShedIfLarge(&sym);
  }
};

}  // namespace

Status FraqtlCodec::EncodeRans(const ChunkDesc& desc, const float* in, const uint16_t* halves,
                               std::vector<uint8_t>* out, CodecImpl impl) const {
  KVWIRE_RETURN_IF_ERROR(CheckDesc(desc));
  // fp16 input is checked as it is converted (rows below, pass-through tokens at the end); a
  // non-finite value is then reported as CheckFinite reports it (the first one in the chunk).
  if (in != nullptr) KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, "fraqtl"));
  auto non_finite = [&] {
    return baseline::CheckFiniteHalves(desc, reinterpret_cast<const uint8_t*>(halves), "fraqtl");
  };
  const ChunkPlan plan = Plan(desc);
  const size_t D = d_, H = kv_heads_, nq = plan.q_tokens.size(), nf = plan.fp_tokens.size();
  const RansLadder& lad = ladders_[size_t{desc.layer} * 2 + static_cast<uint32_t>(desc.kind)];
  const bool fast = impl != CodecImpl::kReference;
  const bool avx2 = fast && HaveAvx2Fma();
  const size_t gains_at = kRansPayloadHeader + nf * H * D * 2;
  const size_t repeats_at = gains_at + (cfg_.gain ? nq * H * 2 : 0);
  const size_t block_tokens = RansBlockTokens(H * D);
  const size_t blocks = (nq + block_tokens - 1) / block_tokens;
  const bool rot = prerope_ && desc.kind == KvKind::kKey;
  const float* angles =
      rot ? PositionAngles(rope_, desc.positions_start + int64_t{desc.token_begin}, desc.tokens)
          : nullptr;
  auto angles_of = [&](uint32_t t) {
    return rot ? angles + size_t{t} * (rope_.rope_dim / 2) * 2 : nullptr;
  };

  // Rows of the quantized tokens, RoPE undone for pre-RoPE K: rows[(qi * H + h) * D]. Without
  // RoPE to undo, and when the quantized tokens are one run (no sink or window tokens between
  // them), they are the input itself.
  thread_local Scratch scratch;
  const bool in_place =
      in != nullptr && !rot && nq > 0 && plan.q_tokens.back() - plan.q_tokens.front() + 1 == nq;
  const float* rows = nullptr;
  if (in_place) {
    rows = in + size_t{plan.q_tokens.front()} * H * D;
  } else if (in == nullptr) {
    // fp16: each token's row is converted (and checked) and RoPE undone a rANS block of tokens
    // at a time, just before the repeat search reads that block (convert_block below), so the
    // search finds its rows in the cache.
    Grow(&scratch.rows, nq * H * D);
    bool finite = true;
    for (const uint32_t t : plan.fp_tokens) {  // the tokens that pass through as they are
      finite &= baseline::HalvesFinite(reinterpret_cast<const uint8_t*>(halves + size_t{t} * H * D),
                                       H * D);
    }
    if (!finite) return non_finite();
    rows = scratch.rows.data();
  } else {
    Grow(&scratch.rows, nq * H * D);
    float* r = scratch.rows.data();
    for (size_t qi = 0; qi < nq; ++qi) {
      const uint32_t t = plan.q_tokens[qi];
      for (size_t h = 0; h < H; ++h) {
        LoadRow(desc, in, t, static_cast<uint32_t>(h), r + (qi * H + h) * D, angles_of(t));
      }
    }
    rows = r;
  }

  // Converts the quantized tokens [t0, t1) of fp16 input into `rows`; false if one of them is
  // not finite. Float input was loaded above.
  auto convert_block = [&](size_t t0, size_t t1) {
    if (in != nullptr) return true;
    float* r = scratch.rows.data();
    bool finite = true;
    for (size_t qi = t0; qi < t1; ++qi) {
      const uint32_t t = plan.q_tokens[qi];
      float* row = r + qi * H * D;
      finite &= HalvesToFloatsFinite(halves + size_t{t} * H * D, H * D, row);
      if (rot) {
        const float* cs = angles_of(t);
        for (size_t h = 0; h < H; ++h) {
          RopeRotate(rope_, row + h * D, cs, cs + rope_.rope_dim / 2, /*undo=*/true);
        }
      }
    }
    return finite;
  };

  // Repeats: within a block, a (token, head) row whose values round to the same grid as an
  // earlier row's (multiples of 2^(e - 14), e the exponent of the row's largest magnitude) codes
  // as that row: the decoder copies its coefficients. A key of the first eight rounded values
  // (RowGridKey) finds candidates in an open-addressed table; the whole rows decide.
  // repeat[qi * H + h] = 1 for a repeat; ref = the unique row it copies (repeats) or its own
  // number (unique rows), counted within (block, head).
  std::vector<uint8_t> repeat(nq * H, 0);
  std::vector<uint32_t> ref(nq * H, 0);
  std::vector<uint8_t> repeat_bits;  // the repeat section (after its u32 length)
  size_t n_unique = nq * H;
  {
    const size_t rows_per_block = std::min(nq, block_tokens);
    size_t cap = 16;
    while (cap < 2 * rows_per_block) cap *= 2;
    // Table per head: a row's qi + 1 in the low half, the high half of its key above (a tag that
    // rules out most candidates without reading them); 0 = empty.
    std::vector<uint64_t> slot(cap * H);
    std::vector<uint32_t> count(H);
    std::vector<int32_t> scale_exp(nq * H);    // the grid's exponent per row
    auto exponent = [&](const float* r) {
      const float m = MaxAbs(r, D);
      if (!(m > 0.0f)) return INT32_MIN;
      uint32_t bits;
      std::memcpy(&bits, &m, 4);
      int e = static_cast<int>(bits >> 23);  // frexp's exponent of a normal float: field - 126
      if (e != 0) return e - 126;
      std::frexp(m, &e);
      return e;
    };
    // 2^(14 - e) (e of a finite float: at most 128, so 14 - e >= -114, a normal float)
    auto scale_of = [](int e) {
      if (e == INT32_MIN) return 0.0f;
      const int field = 14 - e + 127;
      if (field < 1 || field > 254) return std::ldexp(1.0f, 14 - e);
      const uint32_t bits = static_cast<uint32_t>(field) << 23;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    };
    // v * sc rounded to the nearest integer (sc a power of two; |v * sc| <= 2^14)
    auto grid = [](float v, float sc) { return _mm_cvtss_si32(_mm_set_ss(v * sc)); };
    for (size_t blk = 0; blk < blocks; ++blk) {
      const size_t t0 = blk * block_tokens, t1 = std::min(nq, t0 + block_tokens);
      if (!convert_block(t0, t1)) return non_finite();
      std::fill(slot.begin(), slot.end(), 0);
      std::fill(count.begin(), count.end(), 0);
      for (size_t qi = t0; qi < t1; ++qi) {
        for (size_t h = 0; h < H; ++h) {
          const size_t row = qi * H + h;
          const float* x = rows + row * D;
          const int e = exponent(x);
          const float sc = scale_of(e);
          scale_exp[row] = e;
          const uint64_t key = fast ? RowGridKey(x, D, sc, e) : RowGridKeyScalar(x, D, sc, e);
          const uint64_t tag = key & 0xffffffff00000000ull;
          uint64_t* table = slot.data() + h * cap;
          size_t at = static_cast<size_t>(key) & (cap - 1);
          bool found = false;
          for (; table[at] != 0; at = (at + 1) & (cap - 1)) {
            if ((table[at] & 0xffffffff00000000ull) != tag) continue;
            const size_t other = static_cast<size_t>((table[at] & 0xffffffffu) - 1) * H + h;
            if (scale_exp[other] != e) continue;
            const float* y = rows + other * D;
            size_t j = 0;
            while (j < D && grid(x[j], sc) == grid(y[j], sc)) ++j;
            if (j == D) {
              repeat[row] = 1;
              ref[row] = ref[other];
              found = true;
              break;
            }
          }
          if (!found) {
            table[at] = tag | (uint64_t{qi} + 1);
            ref[row] = count[h]++;
          }
        }
      }
    }
    n_unique = 0;
    for (uint8_t r : repeat) n_unique += r == 0;
    // Section: per block, per token, per head: 1 = repeat, then the unique row it copies,
    // numbered within (block, head) from 0, in RefBits(unique rows so far) bits.
    if (n_unique < nq * H) {
      BitWriter w(&repeat_bits);
      std::vector<size_t> u(H);
      for (size_t qi = 0; qi < nq; ++qi) {
        if (qi % block_tokens == 0) std::fill(u.begin(), u.end(), 0);
        for (size_t h = 0; h < H; ++h) {
          w.Put(repeat[qi * H + h], 1);
          if (repeat[qi * H + h]) {
            w.Put(ref[qi * H + h], RefBits(u[h]));
          } else {
            ++u[h];
          }
        }
      }
      w.Finish();
    }
  }
  // Bytes the budget leaves beyond the blocks' lengths and states. A block's words carry about
  // 8 bits per lane less than its symbols cost (what the final states hold beyond their
  // initial 16 bits), hence 24 bytes of states.
  const double target = TargetPayloadBytes(desc) -
                        static_cast<double>(blocks) * (4 + rans::kBlockStateBytes - 8);
  // The repeat section pays when the rows it spares would have cost more than it does: each row
  // of the chunk would get an equal share of what the budget leaves for symbols.
  const double sym_bytes = target - static_cast<double>(repeats_at);
  const bool has_repeats =
      n_unique < nq * H && sym_bytes > 0 &&
      sym_bytes * static_cast<double>(nq * H - n_unique) / static_cast<double>(nq * H) >
          static_cast<double>(4 + repeat_bits.size());
  if (!has_repeats) {
    std::fill(repeat.begin(), repeat.end(), 0);
    n_unique = nq * H;
  }
  const size_t fixed = repeats_at + (has_repeats ? 4 + repeat_bits.size() : 0);
  // Budget of the symbols, in cost units: what the payload may hold beyond its fixed part and
  // the blocks' lengths and states.
  const double avail = target - static_cast<double>(fixed);
  const double budget =
      nq > 0 && avail > 0 ? avail * 8.0 * rans::kCostOne : 0.0;  // whole chunk
  // The model's guess of the steps that fit (cost per token x tokens), and a margin beyond it
  // for a chunk that codes cheaper than the model: directions of those steps are rotated too.
  auto model_steps = [&](double b) -> size_t {
    if (n_unique == 0) return 0;
    const double per_token = b * static_cast<double>(H) / static_cast<double>(n_unique);
    return static_cast<size_t>(std::upper_bound(lad.cum.begin(), lad.cum.end(), per_token,
                                                [](double v, uint64_t c) {
                                                  return v < static_cast<double>(c);
                                                }) -
                               lad.cum.begin()) -
           1;
  };
  size_t n_steps = model_steps(budget);
  const size_t n_reach = cfg_.gain ? lad.steps.size()
                                   : std::min(lad.steps.size(), model_steps(budget * 1.1) + 8);

  // Kept directions per head: those with bits within reach, ascending.
  std::vector<uint8_t> bits(H * D, 0), reach(H * D, 0);
  for (size_t s = 0; s < n_steps; ++s) bits[lad.steps[s].item] = lad.steps[s].to;
  for (size_t s = 0; s < n_reach; ++s) reach[lad.steps[s].item] = 1;
  std::vector<std::vector<uint32_t>> kept(H);
  std::vector<int32_t> col(H * D, -1);
  std::vector<size_t> width(H), base(H);
  // Column stride: a multiple of 16 values plus 16, never a power of two, so that the columns
  // of one token do not all fall into the same cache sets.
  const size_t ld = (nq + 15) / 16 * 16 + 16;
  size_t total_cols = 0;
  for (size_t h = 0; h < H; ++h) {
    for (uint32_t i = 0; i < D; ++i) {
      if (reach[h * D + i] || cfg_.gain) {
        col[h * D + i] = static_cast<int32_t>(kept[h].size());
        kept[h].push_back(i);
      }
    }
    width[h] = RoundUp8(kept[h].size());
    base[h] = total_cols * ld;
    total_cols += width[h];
  }

  // Coefficients of the kept directions, a column per direction: z[base[h] + c * ld + qi]
  // (pricing reads and writes whole columns).
  std::vector<float>& z = scratch.z;
  Grow(&z, total_cols * ld);  // every value that is read is written first (repeats are not read)
  std::vector<float> gains(cfg_.gain ? nq * H : 0);
  {
    std::vector<std::vector<float>> ft(H);  // [D][width]: the kept rows of F, transposed
    for (size_t h = 0; h < H; ++h) {
      const Prepared& p = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
      ft[h].assign(D * width[h], 0.0f);
      for (size_t c = 0; c < kept[h].size(); ++c) {
        for (size_t j = 0; j < D; ++j) ft[h][j * width[h] + c] = p.fwd[kept[h][c] * D + j];
      }
    }
    // Per head, the rows to project (not repeats) kMulRows at a time: they share the loads of F.
    // The product centres them as it reads them where it can; otherwise each goes through xc.
    const bool centered = avx2 && HaveAvx512();
    std::vector<float> xc(kMulRows * D), zrow(kMulRows * D);
    std::vector<const float*> ft_rows(D);
    for (size_t h = 0; h < H; ++h) {
      const Prepared& p = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
      for (size_t j = 0; j < D; ++j) ft_rows[j] = ft[h].data() + j * width[h];
      const float* xs[kMulRows];
      float* zs[kMulRows];
      size_t rs[kMulRows], qs[kMulRows];
      int pending = 0;
      auto flush = [&] {
        if (pending == 0) return;
        if (centered) {
          MulRowsCenteredAvx512(ft_rows.data(), D, xs, p.mean.data(), pending, width[h], zs);
        } else if (avx2) {
          MulRowsSimd(ft_rows.data(), D, xs, pending, width[h], nullptr, zs);
        } else if (fast) {
          for (int r = 0; r < pending; ++r) ProjectScalar(ft[h].data(), xs[r], D, width[h], zs[r]);
        } else {  // the reference: each kept coefficient its own chain of fused multiply-adds
          for (int r = 0; r < pending; ++r) {
            for (size_t c = 0; c < width[h]; ++c) {
              float acc = 0.0f;
              if (c < kept[h].size()) {
                const float* f = p.fwd.data() + size_t{kept[h][c]} * D;
                for (size_t j = 0; j < D; ++j) acc = std::fma(f[j], xs[r][j], acc);
              }
              zs[r][c] = acc;
            }
          }
        }
        if (pending == 4 && qs[3] == qs[0] + 3) {
          // Four consecutive tokens: each column takes four adjacent values, transposed four
          // columns at a time in registers (a quarter of the stores of the loop below).
          float* col0 = z.data() + base[h] + qs[0];
          for (size_t c = 0; c < width[h]; c += 4) {  // width is a multiple of 8
            __m128 a = _mm_loadu_ps(zs[0] + c), b = _mm_loadu_ps(zs[1] + c);
            __m128 e = _mm_loadu_ps(zs[2] + c), f = _mm_loadu_ps(zs[3] + c);
            _MM_TRANSPOSE4_PS(a, b, e, f);
            _mm_storeu_ps(col0 + c * ld, a);
            _mm_storeu_ps(col0 + (c + 1) * ld, b);
            _mm_storeu_ps(col0 + (c + 2) * ld, e);
            _mm_storeu_ps(col0 + (c + 3) * ld, f);
          }
        } else {
          for (int r = 0; r < pending; ++r) {  // into the columns
            float* col0 = z.data() + base[h] + qs[r];
            for (size_t c = 0; c < width[h]; ++c) col0[c * ld] = zs[r][c];
          }
        }
        if (cfg_.gain) {  // kept = every direction, in order
          for (int r = 0; r < pending; ++r) {
            double ss = 0;
            for (size_t i = 0; i < D; ++i) {
              if (p.variance[i] > 0) ss += static_cast<double>(zs[r][i]) * zs[r][i] / p.variance[i];
            }
            const float g = HalfToFloat(HalfSaturate(static_cast<float>(std::sqrt(ss / D))));
            gains[rs[r]] = g > 0.0f ? g : 1.0f;
          }
        }
        pending = 0;
      };
      for (size_t qi = 0; qi < nq; ++qi) {
        const size_t row = qi * H + h;
        if (repeat[row]) {
          if (cfg_.gain) gains[row] = 1.0f;
          continue;
        }
        const float* x = rows + row * D;
        if (centered) {
          xs[pending] = x;
        } else {
          float* xr = xc.data() + pending * D;
          for (size_t j = 0; j < D; ++j) xr[j] = x[j] - p.mean[j];
          xs[pending] = xr;
        }
        zs[pending] = zrow.data() + pending * width[h];
        rs[pending] = row;
        qs[pending] = qi;
        if (++pending == kMulRows) flush();
      }
      flush();
    }
  }

  // Prices a column (item at b bits) over quantized tokens [t0, t1): writes its symbols to
  // dst[qi * stride] and returns their cost.
  auto price = [&](uint32_t item, int b, size_t t0, size_t t1, uint16_t* dst,
                   size_t stride) -> uint64_t {
    if (b == 0) return 0;
    const size_t h = item / D;
    const uint32_t i = item % D;
    const float* zc = z.data() + base[h] + static_cast<size_t>(col[item]) * ld;
    const float* g = cfg_.gain ? gains.data() + h : nullptr;
    const uint8_t* skip = has_repeats ? repeat.data() + h : nullptr;
    if (b == kProtectedBits) {
      if (fast && !skip && stride == 1) {
        SaturateToHalves(zc + t0, t1 - t0, dst + t0);
        return kProtectedCost * (t1 - t0);
      }
      uint64_t n = 0;
      for (size_t qi = t0; qi < t1; ++qi) {
        if (skip && skip[qi * H]) continue;
        dst[qi * stride] = HalfSaturate(zc[qi]);
        ++n;
      }
      return kProtectedCost * n;
    }
    const Prepared& p = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
    const uint32_t* cost = Table(desc.layer, desc.kind, static_cast<uint32_t>(h), b).cost.data();
    if (!fast) {
      uint64_t c = 0;
      for (size_t qi = t0; qi < t1; ++qi) {
        if (skip && skip[qi * H]) continue;
        const float scale = p.sigma[i] * (g ? g[qi * H] : 1.0f);
        const float u = scale > 0.0f ? zc[qi] / scale : 0.0f;
        const uint32_t v = QuantizeRef(p.thresholds[b], u);
        dst[qi * stride] = static_cast<uint16_t>(v);
        c += cost[v];
      }
      return c;
    }
    return PriceColumn(b, zc + t0, 1, t1 - t0, p.thresholds[b].data(),
                       p.sigma[i], g ? g + t0 * H : nullptr, H, dst + t0 * stride, stride, cost,
                       skip ? skip + t0 * H : nullptr, &p.quant[b]);
  };
  auto cost_of = [&](size_t h, int b, uint32_t v) -> uint64_t {
    if (b == kProtectedBits) return kProtectedCost;
    return Table(desc.layer, desc.kind, static_cast<uint32_t>(h), b).cost[v];
  };

  // Symbols and exact cost of the model's guess, column by column; symbols are stored like
  // the coefficients: idx[base[h] + c * ld + qi].
  std::vector<uint16_t>& idx = scratch.idx;
  Grow(&idx, total_cols * ld);
  auto column_ptr = [&](uint32_t item) {
    const size_t h = item / D;
    return idx.data() + base[h] + static_cast<size_t>(col[item]) * ld;
  };
  std::vector<uint64_t> col_cost(H * D, 0);
  uint64_t total = 0;
  for (size_t h = 0; h < H; ++h) {
    for (size_t c = 0; c < kept[h].size(); ++c) {
      const uint32_t item = static_cast<uint32_t>(h * D + kept[h][c]);
      if (bits[item] == 0) continue;
      col_cost[item] = price(item, bits[item], 0, nq, column_ptr(item), 1);
      total += col_cost[item];
    }
  }
  std::vector<uint16_t>& tmp = scratch.column;
  Grow(&tmp, nq);
  // Down while over budget, then up while the next step fits.
  while (n_steps > 0 && static_cast<double>(total) > budget) {
    const RansStep& s = lad.steps[--n_steps];
    total -= col_cost[s.item];
    col_cost[s.item] = price(s.item, s.from, 0, nq, column_ptr(s.item), 1);
    total += col_cost[s.item];
    bits[s.item] = s.from;
  }
  size_t extra = 0;
  for (; n_steps < lad.steps.size(); ++n_steps) {
    const RansStep& s = lad.steps[n_steps];
    if (col[s.item] < 0) break;  // beyond what was rotated: stop here
    const uint64_t c = price(s.item, s.to, 0, nq, tmp.data(), 1);
    const uint64_t next = total - col_cost[s.item] + c;
    if (static_cast<double>(next) <= budget) {
      std::copy(tmp.begin(), tmp.begin() + static_cast<long>(nq), column_ptr(s.item));
      total = next;
      col_cost[s.item] = c;
      bits[s.item] = s.to;
      continue;
    }
    // The step does not fit whole: the first `extra` tokens take it.
    const size_t h = s.item / D;
    const uint16_t* cur = column_ptr(s.item);
    double left = budget - static_cast<double>(total);
    for (size_t qi = 0; qi < nq; ++qi) {
      if (repeat[qi * H + h]) {
        extra = qi + 1;
        continue;
      }
      const double delta = static_cast<double>(cost_of(h, s.to, tmp[qi])) -
                           (s.from ? static_cast<double>(cost_of(h, s.from, cur[qi]))
                                   : 0.0);
      if (delta > left) break;
      left -= delta;
      extra = qi + 1;
    }
    break;
  }
  const bool partial = extra > 0;
  const RansStep part = partial ? lad.steps[n_steps] : RansStep{0, 0, 0};

  // Code: per block of tokens, symbols in reverse decoding order. Per head, the coded columns
  // of a token without (lo) and with (hi) the partial step; column -1 reads the partial
  // step's symbols.
  struct Coded {
    int32_t c;
    int b;
    const rans::Table* table;
  };
  std::vector<std::vector<Coded>> lo(H), hi(H);
  std::vector<uint32_t> lo_count(H, 0), hi_count(H, 0);  // symbols per (token, head)
  for (size_t h = 0; h < H; ++h) {
    for (size_t c = 0; c < kept[h].size(); ++c) {
      const uint32_t item = static_cast<uint32_t>(h * D + kept[h][c]);
      const uint32_t hh = static_cast<uint32_t>(h);
      if (bits[item]) {
        lo[h].push_back({static_cast<int32_t>(c), bits[item],
                         &Table(desc.layer, desc.kind, hh, bits[item])});
        lo_count[h] += bits[item] == kProtectedBits ? 2 : 1;
      }
      if (partial && item == part.item) {
        hi[h].push_back({-1, part.to, &Table(desc.layer, desc.kind, hh, part.to)});
        hi_count[h] += part.to == kProtectedBits ? 2 : 1;
      } else if (bits[item]) {
        hi[h].push_back(lo[h].back());
        hi_count[h] += bits[item] == kProtectedBits ? 2 : 1;
      }
    }
  }
  std::vector<uint8_t>& section = scratch.section;
  section.clear();
  bool codes = partial;
  for (size_t h = 0; h < H; ++h) codes = codes || lo_count[h] > 0;
  if (codes) {
    section.resize(4 * blocks);
    thread_local rans::BlockEncoder enc;
    // Per block: the table entry of every symbol in decoding order (token, head, coded column;
    // a protected coefficient as its low then its high byte), then all of them coded at once.
    std::vector<const rans::EncSym*>& sym = scratch.sym;
    // Per head, lo and hi: each coded column's symbols and its table's entries.
    struct Flat {
      const uint16_t* column;  // symbol of token qi: column[qi]
      const rans::EncSym* enc;
      bool fp16;
    };
    std::vector<std::vector<Flat>> flat_lo(H), flat_hi(H);
    // Per list: how many of its first columns are protected (protection goes to the strongest
    // directions, which come first); when no protected column follows that prefix, the rest
    // take a loop without the per-column test.
    std::vector<size_t> prefix_lo(H), prefix_hi(H);
    // Per list whose columns after the prefix are all in `idx` (FlattenSymbolsAvx2): their
    // offsets in idx and their tables' entries; empty where the list takes the scalar loop.
    struct Gathered {
      std::vector<int32_t> off;
      std::vector<const rans::EncSym*> enc;
    };
    std::vector<Gathered> gath_lo(H), gath_hi(H);
    const bool gather = avx2 && total_cols * ld < (size_t{1} << 31);
    for (size_t h = 0; h < H; ++h) {
      for (auto [list, flat, prefix, g] :
           {std::tuple{&lo[h], &flat_lo[h], &prefix_lo[h], &gath_lo[h]},
            std::tuple{&hi[h], &flat_hi[h], &prefix_hi[h], &gath_hi[h]}}) {
        for (const Coded& cd : *list) {
          flat->push_back({cd.c < 0 ? tmp.data() : idx.data() + base[h] + size_t(cd.c) * ld,
                           cd.table->enc.data(), cd.b == kProtectedBits});
        }
        size_t n = 0;
        while (n < flat->size() && (*flat)[n].fp16) ++n;
        bool plain = true;
        for (size_t c = n; c < flat->size(); ++c) plain = plain && !(*flat)[c].fp16;
        *prefix = plain ? n : SIZE_MAX;  // SIZE_MAX: the general loop
        bool in_idx = gather && plain && flat->size() - n >= 8;
        for (size_t c = n; in_idx && c < list->size(); ++c) in_idx = (*list)[c].c >= 0;
        for (size_t c = n; in_idx && c < list->size(); ++c) {
          g->off.push_back(static_cast<int32_t>(base[h] + size_t((*list)[c].c) * ld));
          g->enc.push_back((*flat)[c].enc);
        }
      }
    }
    for (size_t blk = 0; blk < blocks; ++blk) {
      const size_t t0 = blk * block_tokens, t1 = std::min(nq, t0 + block_tokens);
      size_t k = 0;
      for (size_t qi = t0; qi < t1; ++qi) {
        for (size_t h = 0; h < H; ++h) {
          if (!repeat[qi * H + h]) k += partial && qi < extra ? hi_count[h] : lo_count[h];
        }
      }
      Grow(&sym, k);
      k = 0;
      const rans::EncSym** out_sym = sym.data();
      for (size_t qi = t0; qi < t1; ++qi) {
        const bool use_hi = partial && qi < extra;
        for (size_t h = 0; h < H; ++h) {
          if (repeat[qi * H + h]) continue;
          const std::vector<Flat>& list = use_hi ? flat_hi[h] : flat_lo[h];
          const size_t prefix = use_hi ? prefix_hi[h] : prefix_lo[h];
          if (prefix != SIZE_MAX) {
            const Flat* f = list.data();
            for (size_t c = 0; c < prefix; ++c) {
              const uint32_t v = f[c].column[qi];
              out_sym[k] = f[c].enc + (v & 0xffu);
              out_sym[k + 1] = f[c].enc + (v >> 8);
              k += 2;
            }
            const Gathered& g = use_hi ? gath_hi[h] : gath_lo[h];
            if (!g.off.empty()) {
              FlattenSymbolsAvx2(idx.data(), g.off.data(), g.enc.data(), g.off.size(), qi,
                                 out_sym + k);
              k += g.off.size();
              continue;
            }
            for (size_t c = prefix; c < list.size(); ++c) out_sym[k++] = f[c].enc + f[c].column[qi];
            continue;
          }
          for (const Flat& f : list) {
            const uint32_t v = f.column[qi];
            if (f.fp16) {
              out_sym[k++] = f.enc + (v & 0xffu);
              out_sym[k++] = f.enc + (v >> 8);
            } else {
              out_sym[k++] = f.enc + v;
            }
          }
        }
      }
      enc.PutAll(sym.data(), k);
      StoreU32(section.data() + 4 * blk, static_cast<uint32_t>(enc.Bytes()));
      enc.Finish(&section);
    }
  }

  const size_t start = out->size();
  out->resize(start + fixed + section.size());
  uint8_t* o = out->data() + start;
  o[0] = kPayloadVersionRans;
  o[1] = has_repeats ? kFlagRepeats : 0;
  StoreU16(o + 2, 0);
  StoreU32(o + 4, static_cast<uint32_t>(n_steps));
  StoreU32(o + 8, static_cast<uint32_t>(extra));
  StoreU32(o + 12, static_cast<uint32_t>(section.size()));
  uint8_t* fp = o + kRansPayloadHeader;
  for (size_t k = 0; k < nf; ++k) {
    if (in == nullptr) {  // already fp16 (and checked): the bytes as they are
      const uint16_t* r = halves + size_t{plan.fp_tokens[k]} * H * D;
      for (size_t i = 0; i < H * D; ++i) StoreU16(fp + (k * H * D + i) * 2, r[i]);
      continue;
    }
    const float* r = in + size_t{plan.fp_tokens[k]} * H * D;
    fast ? baseline::StoreHalves(r, H * D, fp + k * H * D * 2)
         : baseline::StoreHalvesRef(r, H * D, fp + k * H * D * 2);
  }
  for (size_t i = 0; i < gains.size(); ++i) StoreU16(o + gains_at + 2 * i, FloatToHalf(gains[i]));
  if (has_repeats) {
    StoreU32(o + repeats_at, static_cast<uint32_t>(repeat_bits.size()));
    std::memcpy(o + repeats_at + 4, repeat_bits.data(), repeat_bits.size());
  }
  if (!section.empty()) std::memcpy(o + fixed, section.data(), section.size());
  scratch.Trim();
  return Status::Ok();
}

}  // namespace kvwire::fraqtl::internal
