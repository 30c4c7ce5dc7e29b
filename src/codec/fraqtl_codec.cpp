// The fraqtl codec: encode/decode of one chunk (layout in fraqtl_codec.h).
//
// Reference and optimized paths compute every float with the same operations in the same order
// (dot products as ascending sums; the optimized path walks transposed matrices as axpy
// updates, which adds the same terms in the same order, and skips exact zeros, which does not
// change a float sum), so they give identical bytes and identical decoded values.
#include "codec/fraqtl_codec.h"

#include <zstd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include "codec/codec_ids.h"
#include "codec/fraqtl_math.h"
#include "codec/fraqtl_sketch.h"
#include "codec/lloyd_max.h"
#include "codec/quant_common.h"

namespace kvwire::fraqtl {
namespace {

using baseline::CheckChunkShape;
using baseline::CheckFinite;
using baseline::HalfSaturate;
using baseline::LoadU16;
using baseline::LoadU32;
using baseline::StoreU16;
using baseline::StoreU32;

constexpr uint8_t kPayloadVersion = 1;
constexpr uint8_t kFlagZstd = 1;
constexpr size_t kPayloadHeader = 12;
constexpr size_t kChunkHeaderBytes = 40;
constexpr int kZstdLevel = 3;
// Budget search (Encode): stop once the index section is within this fraction of what the
// budget allows; give up improving after this many zstd passes.
constexpr double kSearchTolerance = 0.004;
constexpr int kMaxSearchPasses = 16;
constexpr int kMaxReprobes = 2;

// z[0, d) += sum over j of mt[j * d, + d) * x[j], column by column in ascending j, skipping
// x[j] == 0: every z[i] receives the same products in the same order as the reference's dot
// products, so any vector width gives identical floats. An AVX2 clone is picked at load time
// where the CPU has it (no FMA: a fused multiply-add would round differently).
__attribute__((target_clones("avx2", "default"))) void AxpyColumns(
    const float* __restrict mt, const float* __restrict x, float* __restrict z, size_t d) {
  for (size_t j = 0; j < d; ++j) {
    const float xj = x[j];
    if (xj == 0.0f) continue;
    const float* col = mt + j * d;
    for (size_t i = 0; i < d; ++i) z[i] += col[i] * xj;
  }
}

// cos/sin of RoPE at positions [first, first + tokens), token t at [t * 2 * half, + 2 * half)
// (cos half, then sin half), computed by Rope::Angles (the same floats) and kept per thread:
// the K chunks of every layer of a request share their positions, and sincos was 7-11 % of
// fraqtl's CPU time. A table over kMaxAngleBytes is rebuilt per call instead of kept.
const float* PositionAngles(const Rope& rope, int64_t first, uint32_t tokens) {
  constexpr size_t kMaxAngleBytes = size_t{64} << 20;
  struct Table {
    double theta = 0;
    uint32_t rope_dim = 0;
    int64_t first = 0;
    uint32_t tokens = 0;
    std::vector<float> cs;
  };
  thread_local Table table;
  const uint32_t half = rope.rope_dim / 2;
  if (table.cs.empty() || table.theta != rope.theta || table.rope_dim != rope.rope_dim ||
      table.first != first || table.tokens != tokens) {
    table.theta = rope.theta;
    table.rope_dim = rope.rope_dim;
    table.first = first;
    table.tokens = tokens;
    if (table.cs.capacity() * sizeof(float) > kMaxAngleBytes) std::vector<float>().swap(table.cs);
    table.cs.resize(size_t{tokens} * 2 * half + 1);  // + 1: never empty once built
    for (uint32_t t = 0; t < tokens; ++t) {
      float* c = table.cs.data() + size_t{t} * 2 * half;
      rope.Angles(first + t, c, c + half);
    }
  }
  return table.cs.data();
}

// One (layer, slot, head) basis, prepared for coding.
struct Prepared {
  std::vector<float> mean;        // [D]
  std::vector<float> fwd, fwd_t;  // F and F^T, [D, D]
  std::vector<float> inv, inv_t;  // G and G^T, [D, D]
  std::vector<float> sigma;       // sqrt(lambda_i)
  std::vector<double> variance;
  std::vector<double> distortion;                    // [9]
  std::vector<float> levels[kMaxCodedBits + 1];      // [b]: 2^b levels
  std::vector<float> thresholds[kMaxCodedBits + 1];  // [b]: 2^b - 1 midpoints
  std::vector<float> sketch;                         // [m, D] +-1 (sign=M only)
};

// Index bits of a chunk: `total` = bpt * quantized tokens + extra; the first `extra` tokens
// get the allocation of bpt + 1 bits, the others that of bpt bits. With delta groups
// (group > 0) `lo` is the anchors' allocation and `hi` the delta tokens', both from one
// water-filling of `total`.
struct Allocation {
  uint64_t total = 0, extra = 0;
  std::vector<uint8_t> lo, hi;
  uint64_t bits_lo = 0, bits_hi = 0;  // sums of lo and hi
  uint32_t group = 0;
  bool UsesHi(size_t qi) const { return group ? qi % group != 0 : qi < extra; }
  const std::vector<uint8_t>& For(size_t qi) const { return UsesHi(qi) ? hi : lo; }
  uint64_t PackedBytes(uint64_t nq) const {
    const uint64_t n_hi = group ? nq - (nq + group - 1) / group : extra;
    return (bits_hi * n_hi + bits_lo * (nq - n_hi) + 7) / 8;
  }
};

// Byte offsets of the payload's fields before the index section (fraqtl_codec.h).
struct Layout {
  size_t gains = 0, delta_scales = 0, delta_modes = 0, norms = 0, signs = 0, fixed = 0;
  bool has_delta_scales = false;
};

// Delta tokens' side information per (head, direction), [H * D].
struct DeltaSide {
  std::vector<float> scale;     // fp16-exact
  std::vector<double> var;      // scale^2, the delta items' variances in the allocation
  std::vector<uint8_t> direct;  // 1: coded without the anchor's prediction (v = z)
};

struct ChunkPlan {
  std::vector<uint32_t> fp_tokens, q_tokens;  // chunk-relative token indices
  std::vector<uint8_t> alloc;                 // [kv_heads * D]
};

class FraqtlCodec final : public Codec {
 public:
  FraqtlCodec(const Config& config, const Profile& p)
      : cfg_(config),
        spec_(CanonicalSpec(config)),
        layers_(p.layers),
        kv_heads_(p.kv_heads),
        d_(p.head_dim) {
    rope_.theta = p.rope_theta;
    rope_.neox = p.rope_style == "neox";
    rope_.rope_dim = p.rope_dim;
    rope_.CacheFrequencies();
    prerope_ = cfg_.prerope && p.has_prerope();
    budgets_.assign(size_t{layers_} * 2, cfg_.bits);
    if (const ProfileLevel* lv = cfg_.level.empty() ? nullptr : p.FindLevel(cfg_.level)) {
      for (size_t i = 0; i < budgets_.size(); ++i)
        budgets_[i] = lv->budgets[i] * cfg_.bits / lv->bits;
    }
    // Stream header + trailer, shared by all chunks: preamble/CRC 16, trailer 24, fixed proto
    // fields ~60, fingerprint and profile id ~73 each, the level spec.
    stream_overhead_ = 16 + 24 + 60 + 2 * 73 + static_cast<double>(spec_.size());
    prepared_.resize(size_t{layers_} * 2 * kv_heads_);
    for (uint32_t l = 0; l < layers_; ++l) {
      for (uint32_t k = 0; k < 2; ++k) {
        const ProfileSlot slot = k == 1 ? ProfileSlot::kValue
                                        : (prerope_ ? ProfileSlot::kKeyPreRope : ProfileSlot::kKey);
        for (uint32_t h = 0; h < kv_heads_; ++h) {
          Prepared& o = prepared_[(size_t{l} * 2 + k) * kv_heads_ + h];
          Prepare(p.basis(l, slot, h), &o);
          if (cfg_.sign) o.sketch = SketchMatrix(l, k, h, cfg_.sign, d_);
        }
      }
    }
  }

  std::string Spec() const override { return spec_; }
  uint16_t Id() const override { return baseline::kIdFraqtl; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override;
  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl impl) const override;

 private:
  void Prepare(const ProfileBasis& b, Prepared* o) const {
    const size_t d = d_;
    o->mean = b.mean;
    o->fwd = b.forward;
    o->inv = b.inverse;
    o->fwd_t.resize(d * d);
    o->inv_t.resize(d * d);
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = 0; j < d; ++j) {
        o->fwd_t[j * d + i] = b.forward[i * d + j];
        o->inv_t[j * d + i] = b.inverse[i * d + j];
      }
    }
    o->variance = b.variance;
    o->sigma.resize(d);
    for (size_t i = 0; i < d; ++i) o->sigma[i] = static_cast<float>(std::sqrt(b.variance[i]));
    const bool calib = cfg_.calibrated_books && b.has_codebooks();
    o->distortion.assign(kMaxCodedBits + 1, 1.0);
    for (int bits = 1; bits <= kMaxCodedBits; ++bits) {
      if (calib) {
        const auto lv = b.levels(bits);
        o->levels[bits].assign(lv.begin(), lv.end());
        o->distortion[bits] = b.distortion[bits];
      } else {
        const auto& g = baseline::GaussianLloydMax(bits);
        o->levels[bits] = g.levels;
        o->distortion[bits] = g.distortion;
      }
      auto& th = o->thresholds[bits];
      th.resize(o->levels[bits].size() - 1);
      for (size_t i = 0; i + 1 < o->levels[bits].size(); ++i) {
        th[i] = 0.5f * (o->levels[bits][i] + o->levels[bits][i + 1]);
      }
    }
    if (calib) o->distortion[0] = b.distortion[0];
  }

  const Prepared& prep(uint32_t layer, KvKind kind, uint32_t h) const {
    return prepared_[(size_t{layer} * 2 + static_cast<uint32_t>(kind)) * kv_heads_ + h];
  }

  Status CheckDesc(const ChunkDesc& desc) const {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, "fraqtl"));
    KVWIRE_RETURN_ERROR_IF(
        desc.layer >= layers_ || desc.kv_heads != kv_heads_ || desc.head_dim != d_,
        kInvalidArgument,
        "fraqtl: chunk (layer " + std::to_string(desc.layer) + ", " +
            std::to_string(desc.kv_heads) + " kv heads, head_dim " + std::to_string(desc.head_dim) +
            ") does not match the profile (" + std::to_string(layers_) + " layers, " +
            std::to_string(kv_heads_) + " kv heads, head_dim " + std::to_string(d_) + ")");
    KVWIRE_RETURN_ERROR_IF(uint64_t{desc.token_begin} + desc.tokens > desc.seq_tokens,
                           kInvalidArgument, "fraqtl: chunk token range beyond seq_tokens");
    return Status::Ok();
  }

  // Splits the chunk's tokens into fp16 (sink/window) and quantized ones; sizes the allocation.
  ChunkPlan Plan(const ChunkDesc& desc) const {
    ChunkPlan plan;
    const uint64_t win_begin =
        desc.seq_tokens > cfg_.window ? uint64_t{desc.seq_tokens} - cfg_.window : 0;
    for (uint32_t t = 0; t < desc.tokens; ++t) {
      const uint64_t s = uint64_t{desc.token_begin} + t;
      (s < cfg_.sink || s >= win_begin ? plan.fp_tokens : plan.q_tokens).push_back(t);
    }
    return plan;
  }

  // Delta tokens among `nq` quantized tokens (0 without delta groups).
  size_t DeltaTokens(size_t nq) const {
    return cfg_.delta ? nq - (nq + cfg_.delta - 1) / cfg_.delta : 0;
  }

  Layout LayoutOf(const ChunkPlan& plan) const {
    const size_t nq = plan.q_tokens.size(), hd = size_t{kv_heads_} * d_;
    Layout l;
    l.gains = kPayloadHeader + plan.fp_tokens.size() * hd * 2;
    l.delta_scales = l.gains + (cfg_.gain ? nq * kv_heads_ * 2 : 0);
    l.has_delta_scales = DeltaTokens(nq) > 0;
    l.delta_modes = l.delta_scales + (l.has_delta_scales ? hd * 2 : 0);
    l.norms = l.delta_modes + (l.has_delta_scales ? (hd + 7) / 8 : 0);
    l.signs = l.norms + (cfg_.sign ? nq * kv_heads_ * 2 : 0);
    l.fixed = l.signs + (cfg_.sign ? (nq * kv_heads_ * cfg_.sign + 7) / 8 : 0);
    return l;
  }

  // Bytes of the payload before the index section.
  size_t FixedBytes(const ChunkPlan& plan) const { return LayoutOf(plan).fixed; }

  // Payload bytes the budget allows for this chunk (may be negative).
  double TargetPayloadBytes(const ChunkDesc& desc) const {
    const double budget = budgets_[size_t{desc.layer} * 2 + static_cast<uint32_t>(desc.kind)];
    const double share = desc.seq_tokens == 0
                             ? 0.0
                             : stream_overhead_ * desc.tokens /
                                   (static_cast<double>(desc.seq_tokens) * 2.0 * layers_);
    return budget * static_cast<double>(desc.elements()) / 8.0 - kChunkHeaderBytes - share;
  }

  Allocation AllocateChunk(const ChunkDesc& desc, uint64_t total, uint64_t nq) const {
    Allocation a;
    a.total = total;
    const uint64_t bpt = nq ? total / nq : 0;
    a.extra = nq ? total % nq : 0;
    a.lo = Allocate(desc, bpt);
    a.hi = a.extra ? Allocate(desc, bpt + 1) : a.lo;
    for (uint8_t b : a.lo) a.bits_lo += b;
    for (uint8_t b : a.hi) a.bits_hi += b;
    return a;
  }

  // Delta groups: one water-filling over the anchors' items (lambda_i) and the delta tokens'
  // items (dvar: squared delta scales [H * D]), a bit of an item costing its token count.
  // Returns an allocation that spends all of its `total` (see the end).
  Allocation AllocateDelta(const ChunkDesc& desc, uint64_t total, uint64_t nq,
                           const std::vector<double>& dvar) const {
    const size_t hd = size_t{kv_heads_} * d_;
    const uint64_t n_delta = DeltaTokens(nq), n_anchor = nq - n_delta;
    std::vector<AllocationItem> items(2 * hd);
    std::vector<uint64_t> costs(2 * hd);
    for (uint32_t h = 0; h < kv_heads_; ++h) {
      const Prepared& p = prep(desc.layer, desc.kind, h);
      for (uint32_t i = 0; i < d_; ++i) {
        const size_t k = size_t{h} * d_ + i;
        items[k] = {p.variance[i], p.distortion.data()};
        items[hd + k] = {n_delta ? dvar[k] : 0.0, p.distortion.data()};
        costs[k] = n_anchor;
        costs[hd + k] = n_delta;
      }
    }
    const std::vector<uint8_t> bits = AllocateBitsWeighted(items, costs, total, cfg_.protect);
    Allocation a;
    a.total = total;
    a.group = cfg_.delta;
    a.lo.assign(bits.begin(), bits.begin() + hd);
    a.hi.assign(bits.begin() + hd, bits.end());
    for (uint8_t b : a.lo) a.bits_lo += b;
    for (uint8_t b : a.hi) a.bits_hi += b;
    // The bits it spends: the same allocation again (the greedy takes the same steps with any
    // budget between this and `total`), and what the payload records, so that N is canonical.
    a.total = a.bits_lo * n_anchor + a.bits_hi * n_delta;
    return a;
  }

  std::vector<uint8_t> Allocate(const ChunkDesc& desc, uint64_t bits_per_token) const {
    std::vector<AllocationItem> items(size_t{kv_heads_} * d_);
    for (uint32_t h = 0; h < kv_heads_; ++h) {
      const Prepared& p = prep(desc.layer, desc.kind, h);
      for (uint32_t i = 0; i < d_; ++i)
        items[size_t{h} * d_ + i] = {p.variance[i], p.distortion.data()};
    }
    AllocationOptions opt;
    opt.floor_one_bit = cfg_.floor;
    opt.protect = cfg_.protect;
    return AllocateBits(items, bits_per_token, opt);
  }

  // Pre-RoPE (K) input rows: undo the rotation at each token's position.
  // cs: the token's cos/sin (PositionAngles); used for pre-RoPE keys only.
  void LoadRow(const ChunkDesc& desc, const float* in, uint32_t t, uint32_t h, float* row,
               const float* cs) const {
    std::memcpy(row, in + (size_t{t} * kv_heads_ + h) * d_, d_ * sizeof(float));
    if (prerope_ && desc.kind == KvKind::kKey) {
      rope_.Rotate(row, cs, cs + rope_.rope_dim / 2, /*undo=*/true);
    }
  }

  void Transform(const Prepared& p, const float* x, float* z, float* tmp, CodecImpl impl) const {
    const size_t d = d_;
    for (size_t j = 0; j < d; ++j) tmp[j] = x[j] - p.mean[j];
    if (impl == CodecImpl::kReference) {
      for (size_t i = 0; i < d; ++i) {
        float acc = 0.0f;
        for (size_t j = 0; j < d; ++j) acc += p.fwd[i * d + j] * tmp[j];
        z[i] = acc;
      }
    } else {
      std::fill(z, z + d, 0.0f);
      AxpyColumns(p.fwd_t.data(), tmp, z, d);
    }
  }

  void Inverse(const Prepared& p, const float* z, float* x, CodecImpl impl) const {
    const size_t d = d_;
    if (impl == CodecImpl::kReference) {
      for (size_t j = 0; j < d; ++j) {
        float acc = 0.0f;
        for (size_t i = 0; i < d; ++i) acc += p.inv[j * d + i] * z[i];
        x[j] = p.mean[j] + acc;
      }
    } else {
      std::fill(x, x + d, 0.0f);
      AxpyColumns(p.inv_t.data(), z, x, d);
      for (size_t j = 0; j < d; ++j) x[j] = p.mean[j] + x[j];
    }
  }

  // The index of every quantized token of one (head, direction) at one width, computed the
  // first time an allocation asks for it: the encoder's budget search packs the same chunk
  // several times with allocations that differ in a few directions only.
  struct IndexCache {
    static constexpr int kSlots = kMaxCodedBits + 1;  // slot b for b bits, slot 0 for fp16
    static constexpr size_t kKeepBytes = size_t{64} << 20;  // retained between chunks, at most
    static constexpr size_t kNone = SIZE_MAX;
    size_t tokens = 0;
    // Computed columns one after another in `pool`; offset[(h * D + i) * kSlots + slot] is
    // where a column starts (kNone: not computed yet). Kept per thread across chunks, so the
    // pages of a large chunk are faulted in once per thread, not once per chunk.
    std::vector<uint16_t> pool;
    size_t used = 0;
    std::vector<size_t> offset;

    void Reset(size_t columns, size_t n_tokens) {
      tokens = n_tokens;
      used = 0;
      offset.assign(columns, kNone);
      if (pool.capacity() * sizeof(uint16_t) > kKeepBytes) std::vector<uint16_t>().swap(pool);
    }
  };

  // Where the indices of (h, i) at b bits start in cache->pool, computing them the first time.
  // Pointers into the pool are only valid until the next call (the pool may grow).
  size_t EnsureColumn(const ChunkDesc& desc, const std::vector<float>& z,
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
  void PackIndices(const ChunkDesc& desc, const std::vector<float>& z,
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
  void QuantizeChunk(const ChunkDesc& desc, const std::vector<float>& z,
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

  Config cfg_;
  std::string spec_;
  uint32_t layers_, kv_heads_, d_;
  Rope rope_;
  bool prerope_ = false;
  std::vector<double> budgets_;  // [layers * 2]
  double stream_overhead_ = 0;
  std::vector<Prepared> prepared_;  // [layers, 2, kv_heads]
};

Status FraqtlCodec::Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                           CodecImpl impl) const {
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
  // z is kept per thread across chunks (a fresh multi-MiB buffer per chunk costs its page faults).
  thread_local std::vector<float> z;
  if (z.capacity() * sizeof(float) > IndexCache::kKeepBytes) std::vector<float>().swap(z);
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

Status FraqtlCodec::Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                           CodecImpl impl) const {
  KVWIRE_RETURN_IF_ERROR(CheckDesc(desc).WithContext("decode"));
  const ChunkPlan plan = Plan(desc);
  const size_t d = d_, H = kv_heads_, nq = plan.q_tokens.size(), nf = plan.fp_tokens.size();
  const Layout layout = LayoutOf(plan);
  const size_t fixed = layout.fixed;
  KVWIRE_RETURN_ERROR_IF(payload.size() < fixed, kCorrupt,
                         "fraqtl: payload of " + std::to_string(payload.size()) +
                             " bytes, shorter than its fixed part (" + std::to_string(fixed) + ")");
  const uint8_t* p = payload.data();
  KVWIRE_RETURN_ERROR_IF(p[0] != kPayloadVersion, kCorrupt,
                         "fraqtl: payload version " + std::to_string(p[0]) + ", expected 1");
  KVWIRE_RETURN_ERROR_IF((p[1] & ~kFlagZstd) != 0 || LoadU16(p + 2) != 0, kCorrupt,
                         "fraqtl: unknown payload flags");
  const uint64_t total = LoadU32(p + 4);
  const uint64_t section_bytes = LoadU32(p + 8);
  KVWIRE_RETURN_ERROR_IF(total > uint64_t{kProtectedBits} * H * d * nq, kCorrupt,
                         "fraqtl: " + std::to_string(total) + " index bits for " +
                             std::to_string(nq) + " tokens is impossible");
  KVWIRE_RETURN_ERROR_IF(fixed + section_bytes != payload.size(), kCorrupt,
                         "fraqtl: payload of " + std::to_string(payload.size()) +
                             " bytes, its fields announce " +
                             std::to_string(fixed + section_bytes));
  DeltaSide ds;
  if (layout.has_delta_scales) {
    const uint8_t* sp = p + layout.delta_scales;
    const uint8_t* mp = p + layout.delta_modes;
    const size_t hd = H * d;
    KVWIRE_RETURN_ERROR_IF(!baseline::HalvesAreScales(sp, hd), kCorrupt,
                           "fraqtl: a delta scale is negative or not finite");
    KVWIRE_RETURN_ERROR_IF(hd % 8 != 0 && (mp[hd / 8] >> (hd % 8)) != 0, kCorrupt,
                           "fraqtl: padding bits of the delta modes are not zero");
    ds.scale.resize(hd);
    ds.var.resize(hd);
    ds.direct.resize(hd);
    for (size_t k = 0; k < hd; ++k) {
      ds.scale[k] = baseline::LoadHalf(sp, k);
      ds.var[k] = double{ds.scale[k]} * ds.scale[k];
      ds.direct[k] = (mp[k / 8] >> (k % 8)) & 1u;
    }
  }
  if (cfg_.sign) {
    KVWIRE_RETURN_ERROR_IF(!baseline::HalvesAreScales(p + layout.norms, nq * H), kCorrupt,
                           "fraqtl: a residual norm is negative or not finite");
  }
  const Allocation alloc =
      cfg_.delta ? AllocateDelta(desc, total, nq, ds.var) : AllocateChunk(desc, total, nq);
  KVWIRE_RETURN_ERROR_IF(
      cfg_.delta && alloc.total != total, kCorrupt,
      "fraqtl: " + std::to_string(total) + " index bits is not what the delta allocation spends");
  const uint64_t packed_bytes = alloc.PackedBytes(nq);
  std::vector<uint8_t> inflated;
  std::span<const uint8_t> section = payload.subspan(fixed);
  if (p[1] & kFlagZstd) {
    const unsigned long long n = ZSTD_getFrameContentSize(section.data(), section.size());
    KVWIRE_RETURN_ERROR_IF(n != packed_bytes, kCorrupt,
                           "fraqtl: zstd frame does not announce the " +
                               std::to_string(packed_bytes) + " index bytes the allocation needs");
    inflated.resize(packed_bytes);
    const size_t got =
        ZSTD_decompress(inflated.data(), inflated.size(), section.data(), section.size());
    KVWIRE_RETURN_ERROR_IF(ZSTD_isError(got) || got != packed_bytes, kCorrupt,
                           "fraqtl: zstd index section does not decompress");
    section = inflated;
  } else {
    KVWIRE_RETURN_ERROR_IF(section.size() != packed_bytes, kCorrupt,
                           "fraqtl: index section of " + std::to_string(section.size()) +
                               " bytes, the allocation needs " + std::to_string(packed_bytes));
  }
  const uint8_t* fp = p + kPayloadHeader;
  KVWIRE_RETURN_ERROR_IF(!baseline::HalvesFinite(fp, nf * H * d), kCorrupt,
                         "fraqtl: a pass-through value is not finite");
  const uint8_t* gp = fp + nf * H * d * 2;
  if (cfg_.gain) {
    KVWIRE_RETURN_ERROR_IF(!baseline::HalvesAreScales(gp, nq * H), kCorrupt,
                           "fraqtl: a gain is negative or not finite");
  }
  for (size_t k = 0; k < nf; ++k) {
    float* r = out + size_t{plan.fp_tokens[k]} * H * d;
    impl == CodecImpl::kReference ? baseline::LoadHalvesRef(fp + k * H * d * 2, H * d, r)
                                  : baseline::LoadHalves(fp + k * H * d * 2, H * d, r);
  }
  BitReader reader(section);
  BitReader sign_reader(payload.subspan(layout.signs, fixed - layout.signs));
  std::vector<float> z(d), tmp(d), anchor(cfg_.delta ? H * d : 0, 0.0f);
  const bool rot = prerope_ && desc.kind == KvKind::kKey;
  const float* angles =
      rot ? PositionAngles(rope_, desc.positions_start + int64_t{desc.token_begin}, desc.tokens)
          : nullptr;
  std::vector<uint8_t> sign_bits(cfg_.sign);
  const double shrink = cfg_.sign ? SketchShrink(cfg_.sign, d_) : 0.0;
  for (size_t qi = 0; qi < nq; ++qi) {
    const uint32_t t = plan.q_tokens[qi];
    const float* cs = rot ? angles + size_t{t} * (rope_.rope_dim / 2) * 2 : nullptr;
    for (uint32_t h = 0; h < H; ++h) {
      const Prepared& pr = prep(desc.layer, desc.kind, h);
      float g = 1.0f;
      if (cfg_.gain) {
        g = baseline::LoadHalf(gp, qi * H + h);
        g = g > 0.0f ? g : 1.0f;
      }
      const uint8_t* a = alloc.For(qi).data() + size_t{h} * d;
      // Delta tokens add their coded difference to the anchor's decoded coefficients (the
      // values before the sign correction, as the encoder's closed loop saw them), except in
      // the directions sent as direct.
      const bool is_delta = alloc.group != 0 && alloc.UsesHi(qi);
      float* base = cfg_.delta ? anchor.data() + size_t{h} * d : nullptr;
      for (size_t i = 0; i < d; ++i) {
        const int b = a[i];
        const bool pred = is_delta && !ds.direct[size_t{h} * d + i];
        float q = 0.0f;
        if (b != 0) {
          const uint32_t v = impl == CodecImpl::kReference ? reader.GetRef(b) : reader.Get(b);
          if (b == kProtectedBits) {
            const uint16_t hv = static_cast<uint16_t>(v);
            KVWIRE_RETURN_ERROR_IF(!baseline::HalfIsFinite(hv), kCorrupt,
                                   "fraqtl: a protected coefficient is not finite");
            q = HalfToFloat(hv);
          } else {
            const float scale = is_delta ? ds.scale[size_t{h} * d + i] : pr.sigma[i] * g;
            q = pr.levels[b][v] * scale;  // v < 2^b by construction
          }
        }
        z[i] = pred ? base[i] + q : q;
        if (base != nullptr && !is_delta) base[i] = z[i];
      }
      if (cfg_.sign) {
        for (uint32_t k = 0; k < cfg_.sign; ++k)
          sign_bits[k] = static_cast<uint8_t>(sign_reader.GetRef(1));
        const float norm = baseline::LoadHalf(p + layout.norms, qi * H + h);
        SketchAdd(pr.sketch.data(), cfg_.sign, d_, sign_bits.data(),
                  static_cast<float>(shrink * norm), z.data(), tmp.data());
      }
      float* o = out + (size_t{t} * H + h) * d;
      Inverse(pr, z.data(), o, impl);
      if (rot) rope_.Rotate(o, cs, cs + rope_.rope_dim / 2, /*undo=*/false);
    }
  }
  return Status::Ok();
}

}  // namespace

std::string CanonicalSpec(const Config& c) {
  char b[32];
  auto [end, ec] = std::to_chars(b, b + sizeof(b), c.bits);
  std::string s = "fraqtl@" + std::string(b, end) + ":";
  if (!c.level.empty()) s += "level=" + c.level + ",";
  s += "sink=" + std::to_string(c.sink) + ",window=" + std::to_string(c.window) +
       ",prerope=" + std::to_string(int{c.prerope}) + ",";
  if (!c.basis.empty()) s += "basis=" + c.basis + ",";
  s += "floor=" + std::to_string(int{c.floor}) + ",protect=" + std::to_string(c.protect) +
       ",gain=" + std::to_string(int{c.gain});
  if (c.sign != 0 || c.spell_steps) s += ",sign=" + std::to_string(c.sign);
  if (c.delta != 0 || c.spell_steps) s += ",delta=" + std::to_string(c.delta);
  s += ",entropy=" + std::string(c.entropy == Entropy::kZstd ? "zstd" : "none") +
       ",book=" + std::string(c.calibrated_books ? "calib" : "gauss");
  return s;
}

Result<std::unique_ptr<Codec>> MakeFraqtlCodec(const Config& requested, const Profile& profile) {
  Config config = requested;
  // sign=1 asks for the default sketch size, D / 2 rows.
  if (config.sign == 1) config.sign = std::max<uint32_t>(1, profile.head_dim / 2);
  KVWIRE_RETURN_ERROR_IF(config.sign > 4 * profile.head_dim, kInvalidArgument,
                         "fraqtl: sign=" + std::to_string(config.sign) +
                             " sketch rows, at most 4 x head_dim (" +
                             std::to_string(4 * profile.head_dim) + ")");
  KVWIRE_RETURN_ERROR_IF(config.delta == 1, kInvalidArgument,
                         "fraqtl: delta=G needs groups of G >= 2 tokens (delta=0: off)");
  KVWIRE_RETURN_ERROR_IF(config.delta != 0 && config.gain, kInvalidArgument,
                         "fraqtl: delta=G and gain=1 do not combine (delta tokens have no gain)");
  KVWIRE_RETURN_ERROR_IF(config.entropy == Entropy::kRans, kUnsupported,
                         "fraqtl: entropy=rans is not implemented in this build (use zstd)");
  KVWIRE_RETURN_ERROR_IF(!(config.bits > 0 && config.bits <= 16), kInvalidArgument,
                         "fraqtl: target bits/element must be in (0, 16]");
  KVWIRE_RETURN_IF_ERROR(profile.Validate());
  KVWIRE_RETURN_ERROR_IF(
      !config.basis.empty() && config.basis != profile.basis_kind, kInvalidArgument,
      "fraqtl: basis=" + config.basis + " but the profile was calibrated with '" +
          profile.basis_kind + "' (calibrate with --basis " + config.basis + ")");
  if (!config.level.empty() && !profile.FindLevel(config.level)) {
    // kInvalidArgument, not kNotFound: the registry reads kNotFound as "not this family".
    std::string names;
    for (const auto& lv : profile.levels) names += (names.empty() ? "" : ", ") + lv.name;
    return Status(StatusCode::kInvalidArgument,
                  "fraqtl: the profile has no level '" + config.level + "' (its levels: " +
                      (names.empty() ? "none; `kvwire diagnose` writes them" : names) + ")");
  }
  return std::unique_ptr<Codec>(std::make_unique<FraqtlCodec>(config, profile));
}

}  // namespace kvwire::fraqtl
