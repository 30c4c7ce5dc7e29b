// kivi<b> (KIVI, Liu et al. 2024): asymmetric uniform b-bit with an fp16 scale and min per group
// (recipe in quant_common.h); keys per channel, values per token; a recent window stays fp16.
//
// Window rule. With S = ChunkDesc.seq_tokens, the sequence's first
//     n_quant = floor(max(0, S - R) / G) * G
// tokens are quantized and tokens [n_quant, S) stay fp16 (so the window holds R to R + G - 1
// tokens, fewer only when S < R). A chunk [token_begin, token_begin + tokens) quantizes its
// first Tq = clamp(n_quant - token_begin, 0, tokens) tokens; when Tq > 0 both token_begin and Tq
// must be multiples of G (TokenAlignment() == G), else kInvalidArgument.
//
// Lead. A chunk that starts off a multiple of G (the first chunk of a stream or request that
// starts mid-group, such as a migration tail) keeps its first L = min(T, G - token_begin % G)
// tokens fp16, up to the next group boundary, and the rule above applies to the rest: it
// quantizes tokens [L, L + Tq) of the chunk, Tq = clamp(n_quant - token_begin - L, 0, T - L),
// a multiple of G or kInvalidArgument. L = 0 for an aligned chunk (the layout below is then that
// of every aligned chunk); the decoder derives L from token_begin.
//
// Groups. K: G consecutive tokens of one (head, channel); V: G consecutive channels of one
// (token, head) row (head_dim % G == 0 required for V). Either way Tq * kv_heads * head_dim / G
// groups.
//
// Payload (little-endian):
//   u32 Tq                                   quantized tokens of this chunk
//   fp16 scales[groups], fp16 mins[groups]   K: [Tq/G, kv_heads, head_dim]; V: [Tq, kv_heads,
//   head_dim/G] packed b-bit indices of the Tq quantized tokens, [Tq, kv_heads, head_dim] order,
//   byte-padded fp16 of the other tokens [tokens - Tq, kv_heads, head_dim]: the L lead tokens,
//   then the window
// Size = 4 + 4*groups + ceil(Tq*kv_heads*head_dim*b/8) + 2*(tokens - Tq)*kv_heads*head_dim, i.e.
// b + 32/G bits per quantized element (3.0 for kivi2, 5.0 for kivi4 at G = 32), 16 per window
// element. The decoder reads Tq from the payload, so it does not need seq_tokens.
#include "codec/baseline_families.h"
#include "codec/baseline_uniform.h"
#include "codec/codec_ids.h"
#include "codec/quant_common.h"

namespace kvwire::baseline {
namespace {

class KiviCodec final : public Codec {
 public:
  KiviCodec(int bits, uint32_t group, uint32_t window)
      : bits_(bits), g_(group), r_(window), name_("kivi" + std::to_string(bits)) {}

  std::string Spec() const override {
    return name_ + ":g=" + std::to_string(g_) + ",r=" + std::to_string(r_);
  }
  uint16_t Id() const override { return kIdKivi; }
  uint32_t TokenAlignment() const override { return g_; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckShape(desc));
    KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, name_));
    KVWIRE_RETURN_ERROR_IF(
        uint64_t{desc.token_begin} + desc.tokens > desc.seq_tokens, kInvalidArgument,
        name_ + ": chunk ends after seq_tokens=" + std::to_string(desc.seq_tokens) +
            " (the window rule needs the sequence length)");
    const uint32_t lead = LeadTokens(desc);
    const uint32_t tq = QuantTokens(desc);
    KVWIRE_RETURN_ERROR_IF(tq % g_ != 0, kInvalidArgument,
                           name_ + ": chunk at token " + std::to_string(desc.token_begin) +
                               " with " + std::to_string(tq) +
                               " quantized tokens is not aligned to the group of " +
                               std::to_string(g_) + " tokens");
    const float* quant_in = in + size_t{lead} * size_t{desc.kv_heads} * desc.head_dim;
    const size_t hd = size_t{desc.kv_heads} * desc.head_dim;
    const size_t quant_elems = size_t{tq} * hd;
    const size_t groups = quant_elems / g_;
    const size_t window_elems = size_t{desc.tokens - tq} * hd;
    const size_t base = out->size();
    out->resize(base + PayloadSize(desc, tq));
    uint8_t* p = out->data() + base;
    StoreU32(p, tq);
    uint8_t* scales = p + 4;
    uint8_t* mins = scales + 2 * groups;
    uint8_t* packed = mins + 2 * groups;
    uint8_t* idx = ThreadScratchBytes(quant_elems);
    if (desc.kind == KvKind::kKey) {
      for (size_t b = 0; b < tq / g_; ++b) {  // one block of G tokens at a time
        QuantizeColumnGroups(quant_in + b * g_ * hd, g_, hd, bits_, scales + 2 * b * hd,
                             mins + 2 * b * hd, idx + b * g_ * hd, impl);
      }
    } else {
      QuantizeRowGroups(quant_in, groups, g_, bits_, scales, mins, idx, impl);
    }
    PackBits(idx, quant_elems, bits_, packed, impl);
    uint8_t* window = packed + PackedBytes(quant_elems, bits_);
    // The fp16 tokens: the lead, then those after the quantized ones.
    const size_t lead_elems = size_t{lead} * hd;
    std::vector<float> clamped(in, in + lead_elems);
    clamped.insert(clamped.end(), quant_in + quant_elems, in + size_t{desc.tokens} * hd);
    for (float& v : clamped) v = std::clamp(v, -kHalfMax, kHalfMax);
    if (impl == CodecImpl::kReference) {
      StoreHalvesRef(clamped.data(), window_elems, window);
    } else {
      StoreHalves(clamped.data(), window_elems, window);
    }
    return Status::Ok();
  }

  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckShape(desc));
    KVWIRE_RETURN_ERROR_IF(payload.size() < 4, kCorrupt,
                           name_ + ": payload of " + std::to_string(payload.size()) +
                               " bytes has no quantized-token count");
    const uint32_t tq = LoadU32(payload.data());
    const uint32_t lead = LeadTokens(desc);
    KVWIRE_RETURN_ERROR_IF(tq > desc.tokens - lead || tq % g_ != 0, kCorrupt,
                           name_ + ": quantized-token count " + std::to_string(tq) +
                               " is not a multiple of " + std::to_string(g_) + " in [0, " +
                               std::to_string(desc.tokens - lead) + "]");
    KVWIRE_RETURN_IF_ERROR(CheckPayloadSize(payload.size(), PayloadSize(desc, tq), name_));
    const size_t hd = size_t{desc.kv_heads} * desc.head_dim;
    const size_t quant_elems = size_t{tq} * hd;
    const size_t groups = quant_elems / g_;
    const size_t window_elems = size_t{desc.tokens - tq} * hd;
    const uint8_t* scales = payload.data() + 4;
    const uint8_t* mins = scales + 2 * groups;
    const uint8_t* packed = mins + 2 * groups;
    const uint8_t* window = packed + PackedBytes(quant_elems, bits_);
    uint8_t* idx = ThreadScratchBytes(quant_elems);
    UnpackBits(packed, quant_elems, bits_, idx, impl);
    const size_t lead_elems = size_t{lead} * hd;
    float* quant_out = out + lead_elems;
    bool ok = true;
    if (desc.kind == KvKind::kKey) {
      for (size_t b = 0; b < tq / g_ && ok; ++b) {
        ok = DequantizeColumnGroups(scales + 2 * b * hd, mins + 2 * b * hd,
                                    idx + b * g_ * hd, g_, hd, quant_out + b * g_ * hd, impl);
      }
    } else {
      ok = DequantizeRowGroups(scales, mins, idx, groups, g_, quant_out, impl);
    }
    KVWIRE_RETURN_ERROR_IF(!ok, kCorrupt, name_ + ": a group scale or min is not finite");
    KVWIRE_RETURN_ERROR_IF(!HalvesFinite(window, window_elems), kCorrupt,
                           name_ + ": the fp16 window holds a non-finite value");
    // The fp16 tokens: the lead, then those after the quantized ones.
    auto load = [&](const uint8_t* h, size_t n, float* dst) {
      if (impl == CodecImpl::kReference) {
        LoadHalvesRef(h, n, dst);
      } else {
        LoadHalves(h, n, dst);
      }
    };
    load(window, lead_elems, out);
    load(window + 2 * lead_elems, window_elems - lead_elems, quant_out + quant_elems);
    return Status::Ok();
  }

 private:
  Status CheckShape(const ChunkDesc& desc) const {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, name_));
    KVWIRE_RETURN_ERROR_IF(desc.kind == KvKind::kValue && desc.head_dim % g_ != 0, kInvalidArgument,
                           name_ +
                               ": values are grouped along head_dim, which must be a multiple "
                               "of g=" +
                               std::to_string(g_) + " (head_dim " + std::to_string(desc.head_dim) +
                               ")");
    return Status::Ok();
  }

  // The lead and window rules of the header comment.
  uint32_t LeadTokens(const ChunkDesc& desc) const {
    const uint32_t off = desc.token_begin % g_;
    return off == 0 ? 0 : std::min(desc.tokens, g_ - off);
  }
  uint32_t QuantTokens(const ChunkDesc& desc) const {
    const uint32_t first = desc.token_begin + LeadTokens(desc);
    const uint32_t n_quant = desc.seq_tokens > r_ ? (desc.seq_tokens - r_) / g_ * g_ : 0;
    return n_quant > first ? std::min(n_quant - first, desc.token_begin + desc.tokens - first) : 0;
  }

  uint64_t PayloadSize(const ChunkDesc& desc, uint32_t tq) const {
    const uint64_t hd = uint64_t{desc.kv_heads} * desc.head_dim;
    const uint64_t quant_elems = uint64_t{tq} * hd;
    return 4 + 4 * (quant_elems / g_) + PackedBytes(quant_elems, bits_) +
           2 * uint64_t{desc.tokens - tq} * hd;
  }

  int bits_;
  uint32_t g_, r_;
  std::string name_;
};

}  // namespace

CodecFamily KiviFamily() {
  return {"kivi<b>[:g=G,r=R]",
          "KIVI: asymmetric b-bit (b=2..8), fp16 scale+min per group of G; K per channel over G "
          "tokens, V per token over G channels; the last R..R+G-1 tokens fp16 (G=R=32); "
          "b + 32/G bits/element + window",
          [](std::string_view name, const CodecOptions& opts,
             const Profile*) -> Result<std::unique_ptr<Codec>> {
            uint32_t bits = 0;
            if (!MatchNumbered(name, "kivi", "", &bits)) return NotThisFamily();
            KVWIRE_RETURN_ERROR_IF(bits < 2 || bits > 8, kInvalidArgument,
                                   "kivi bit-width must be 2..8, got '" + std::string(name) + "'");
            KVWIRE_RETURN_IF_ERROR(CheckOptionKeys(name, opts, {"g", "r"}));
            KVWIRE_ASSIGN_OR_RETURN(const int64_t g, opts.GetInt("g", 32, 1, kMaxHeadDim));
            KVWIRE_ASSIGN_OR_RETURN(const int64_t r, opts.GetInt("r", 32, 0, kMaxTokens));
            return std::unique_ptr<Codec>(std::make_unique<KiviCodec>(
                static_cast<int>(bits), static_cast<uint32_t>(g), static_cast<uint32_t>(r)));
          }};
}

}  // namespace kvwire::baseline
