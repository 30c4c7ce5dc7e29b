// Internals of the fraqtl codec shared by its translation units: fraqtl_codec.cpp (factory,
// kernels), fraqtl_encode.cpp and fraqtl_decode.cpp. Not installed; the API is fraqtl_codec.h.
//
// Reference and optimized paths compute every float with the same operations in the same order
// (dot products as ascending sums; the optimized path walks transposed matrices as axpy
// updates, which adds the same terms in the same order, and skips exact zeros, which does not
// change a float sum), so they give identical bytes and identical decoded values.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "codec/codec_ids.h"
#include "codec/fraqtl_codec.h"
#include "codec/fraqtl_math.h"
#include "codec/fraqtl_rans_kernels.h"
#include "codec/fraqtl_sketch.h"
#include "codec/lloyd_max.h"
#include "codec/quant_common.h"
#include "codec/rans.h"

namespace kvwire::fraqtl::internal {

using baseline::CheckChunkShape;
using baseline::CheckFinite;
using baseline::HalfSaturate;
using baseline::LoadU16;
using baseline::LoadU32;
using baseline::StoreU16;
using baseline::StoreU32;

constexpr uint8_t kPayloadVersion = 1;     // entropy=none|zstd (bit-packed indices)
constexpr uint8_t kPayloadVersionRans = 2;  // entropy=rans (table-driven, fraqtl_rans.cpp)
constexpr size_t kRansPayloadHeader = 16;
// A rANS block holds the symbols of about kRansBlockElements elements (RansBlockTokens
// quantized tokens): blocks decode independently (the CPU decoder runs four side by side, a GPU
// all of them), and each costs a 4-byte length and kLanes 4-byte states.
constexpr size_t kRansBlockElements = size_t{1} << 16;
inline size_t RansBlockTokens(size_t heads_x_dim) {
  return std::max<size_t>(1, kRansBlockElements / heads_x_dim);
}
constexpr uint8_t kFlagZstd = 1;
constexpr size_t kPayloadHeader = 12;
constexpr size_t kChunkHeaderBytes = 40;

// z[0, d) += sum over j of mt[j * d, + d) * x[j], column by column in ascending j, skipping
// x[j] == 0: every z[i] receives the same products in the same order as the reference's dot
// products, so any vector width gives identical floats. An AVX2 clone is picked at load time
// where the CPU has it (no FMA: a fused multiply-add would round differently).
void AxpyColumns(const float* __restrict mt, const float* __restrict x, float* __restrict z,
                 size_t d);

// cos/sin of RoPE at positions [first, first + tokens), token t at [t * 2 * half, + 2 * half)
// (cos half, then sin half): the floats of Rope::Angles, from a process-wide cache of pages of
// positions (fraqtl_codec.cpp). The pointer is valid until the calling thread calls it again.
const float* PositionAngles(const Rope& rope, int64_t first, uint32_t tokens);

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
  QuantLut quant[kMaxCodedBits + 1];                 // [b]: thresholds[b] as buckets
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

// entropy=rans: one step of a (layer, K|V)'s ladder (see FraqtlCodec::BuildRans).
struct RansStep {
  uint32_t item;
  uint8_t from, to;  // bits before and after (to: 1..8, or kProtectedBits)
};
struct RansLadder {
  std::vector<RansStep> steps;
  std::vector<uint64_t> cum;  // [steps + 1]: model cost per token of the first N steps
};

// What a codec derives from its profile alone: prepared bases, rANS tables, ladders and the
// tables' decoding slots. Building it takes tens of milliseconds for a small model (transposes,
// table construction, a greedy per (layer, K|V)), and a stream writer or reader makes its codecs
// per request, so every codec of the same profile content and configuration in the process
// shares one (FraqtlCodec::AcquireShared). Immutable once built, except the decoding slots,
// which are filled once each on first use (std::call_once).
struct FraqtlShared {
  std::vector<Prepared> prepared;  // [layers, 2, kv_heads]
  std::vector<RansLadder> ladders;  // [layers * 2]
  std::vector<rans::Table> tables;  // [layers, 2, kv_heads, kMaxCodedBits + 1] (b = 0 unused)
  std::unique_ptr<uint32_t[]> slot_pool;
  std::unique_ptr<std::once_flag[]> slot_once;  // [tables.size() + 1], the last: uniform
  // Set once a table's slots are filled: libstdc++'s call_once has no fast path of its own (it
  // sets thread-local state and calls pthread_once every time), and the decoder asks for every
  // coded column of every chunk.
  std::unique_ptr<std::atomic<bool>[]> slot_ready;
};

class FraqtlCodec final : public Codec {
 public:
  FraqtlCodec(const Config& config, const Profile& p)
      : cfg_(config),
        spec_(CanonicalSpec(config)),
        layers_(p.layers),
        kv_heads_(p.kv_heads),
        d_(p.head_dim),
        shared_(AcquireShared(config, p, &fresh_, &shared_key_)),
        prepared_(shared_->prepared),
        ladders_(shared_->ladders),
        tables_(shared_->tables),
        slot_pool_(shared_->slot_pool),
        slot_once_(shared_->slot_once),
        slot_ready_(shared_->slot_ready) {
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
    if (!fresh_) return;  // another codec of this profile and configuration built it
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
    if (cfg_.entropy == Entropy::kRans) BuildRans(p);
    PublishShared(shared_key_, shared_);
  }

  std::string Spec() const override { return spec_; }
  uint16_t Id() const override { return baseline::kIdFraqtl; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override;
  // entropy=rans reads the halves where it reads its input; the other payloads convert first.
  Status EncodeHalves(const ChunkDesc& desc, const uint16_t* in, std::vector<uint8_t>* out,
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
      // Pricing compares against the thresholds directly up to 4 bits: no table there.
      if (bits > 4) o->quant[bits] = BuildQuantLut(th, bits);
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
      RopeRotate(rope_, row, cs, cs + rope_.rope_dim / 2, /*undo=*/true);
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
    }
  };

  // Where the indices of (h, i) at b bits start in cache->pool, computing them the first time.
  // Pointers into the pool are only valid until the next call (the pool may grow).
  size_t EnsureColumn(const ChunkDesc& desc, const std::vector<float>& z,
                      const std::vector<float>& gains, uint32_t h, uint32_t i, int b,
                      IndexCache* cache) const;

  // Packs the indices of all quantized tokens for `alloc` (z: [q_tokens, kv_heads, D]).
  // Tokens [0, extra) use `hi` (one more bit per token), the others `lo`. The reference
  // quantizes every coefficient by a linear scan, bit by bit; the fast path reads the
  // indices from `cache` and packs them through a 64-bit accumulator (same bytes).
  void PackIndices(const ChunkDesc& desc, const std::vector<float>& z,
                   const std::vector<float>& gains, size_t q_count, const Allocation& al,
                   std::vector<uint8_t>* out, CodecImpl impl, IndexCache* cache) const;

  // The general coder of steps 5 and 7 for any allocation, with or without delta groups: what
  // delta streams pack on both paths, and the decoded z^ [nq, H, D] the sign sketch needs.
  // Appends the indices to `out` and writes z^ to `zhat` (each when given). A delta token codes
  // v = z - z^_anchor (or v = z where ds.direct) with scale ds.scale[h * D + i], any other token
  // v = z with scale sigma_i g; the index is the number of thresholds strictly below v / scale
  // (0 when scale = 0), as in PackIndices, and z^ is what the decoder computes from it.
  void QuantizeChunk(const ChunkDesc& desc, const std::vector<float>& z,
                     const std::vector<float>& gains, const DeltaSide& ds, size_t nq,
                     const Allocation& al, std::vector<uint8_t>* out, std::vector<float>* zhat,
                     CodecImpl impl) const;

  // ---- entropy=rans (fraqtl_rans.cpp) ------------------------------------------------------
  // The order in which a (layer, K|V)'s items (head h, direction i: item h * D + i) gain
  // precision: greedy on distortion reduction per coded bit, where a direction at b bits costs
  // the entropy of its b-bit table per token. Computed from the profile alone, so both ends
  // derive it; a chunk sends how many steps it took.
  void BuildRans(const Profile& p);
  const rans::Table& Table(uint32_t layer, KvKind kind, uint32_t h, int b) const {
    return b == kProtectedBits
               ? rans::UniformByteTable()
               : tables_[((size_t{layer} * 2 + static_cast<uint32_t>(kind)) * kv_heads_ + h) *
                             (kMaxCodedBits + 1) +
                         b];
  }
  // The input is `in` (float32) or, when `in` is null, `halves` (fp16), [tokens, H, D].
  Status EncodeRans(const ChunkDesc& desc, const float* in, const uint16_t* halves,
                    std::vector<uint8_t>* out, CodecImpl impl) const;
  Status DecodeRans(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                    CodecImpl impl) const;
  // Index of a table in tables_ (the protected bytes' uniform table: tables_.size()).
  size_t TableIndex(uint32_t layer, KvKind kind, uint32_t h, int b) const {
    return b == kProtectedBits
               ? tables_.size()
               : ((size_t{layer} * 2 + static_cast<uint32_t>(kind)) * kv_heads_ + h) *
                         (kMaxCodedBits + 1) +
                     b;
  }
  // Decoding slots of every table, one after another in one pool (rans::BlockDecoder); a
  // table's slots are filled the first time a decoder needs them (an encoder never does).
  uint32_t EnsureSlots(uint32_t layer, KvKind kind, uint32_t h, int b) const;
  // The shared state for `p` and `config`: the cached one (fresh = false), or a new empty one
  // for this codec to build and publish (fresh = true) under *key.
  static std::shared_ptr<FraqtlShared> AcquireShared(const Config& config, const Profile& p,
                                                     bool* fresh, std::string* key);
  static void PublishShared(const std::string& key, std::shared_ptr<FraqtlShared> shared);

  Config cfg_;
  std::string spec_;
  uint32_t layers_, kv_heads_, d_;
  Rope rope_;
  bool prerope_ = false;
  std::vector<double> budgets_;  // [layers * 2]
  double stream_overhead_ = 0;
  bool fresh_ = false;
  std::string shared_key_;
  std::shared_ptr<FraqtlShared> shared_;
  // The shared state's parts, by their former names.
  std::vector<Prepared>& prepared_;
  std::vector<RansLadder>& ladders_;
  std::vector<rans::Table>& tables_;
  std::unique_ptr<uint32_t[]>& slot_pool_;
  std::unique_ptr<std::once_flag[]>& slot_once_;
  std::unique_ptr<std::atomic<bool>[]>& slot_ready_;
};

}  // namespace kvwire::fraqtl::internal
