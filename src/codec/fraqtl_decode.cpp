// fraqtl decoder: validates a chunk payload and reconstructs the KV rows (layout in
// fraqtl_codec.h).
#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "codec/fraqtl_codec_impl.h"

namespace kvwire::fraqtl::internal {

Status FraqtlCodec::Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                           CodecImpl impl) const {
  if (cfg_.entropy == Entropy::kRans) return DecodeRans(desc, payload, out, impl);
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

}  // namespace kvwire::fraqtl::internal
