// int<b>-token and int<b>-channel (b = 2..8): asymmetric uniform b-bit with an fp16 scale and min
// per group (recipe in quant_common.h).
//   token axis:   one group per (token, head) row over head_dim  -> tokens * kv_heads groups
//   channel axis: one group per (head, channel) over the chunk's tokens -> kv_heads * head_dim
// Payload: fp16 scales[groups], fp16 mins[groups] (in the order above), then the packed b-bit
// indices of all elements in [tokens, kv_heads, head_dim] order, byte-padded at the end.
// Size = 4*groups + ceil(elements*b/8): b + 32/head_dim (token) or b + 32/tokens (channel)
// bits/element. An empty chunk (tokens == 0) has an empty payload.
#include "codec/baseline_families.h"
#include "codec/baseline_uniform.h"
#include "codec/codec_ids.h"
#include "codec/quant_common.h"

namespace kvwire::baseline {
namespace {

enum class Axis { kToken, kChannel };

class IntBCodec final : public Codec {
 public:
  IntBCodec(int bits, Axis axis)
      : bits_(bits),
        axis_(axis),
        name_("int" + std::to_string(bits) + (axis == Axis::kToken ? "-token" : "-channel")) {}

  std::string Spec() const override { return name_; }
  uint16_t Id() const override { return axis_ == Axis::kToken ? kIdIntToken : kIdIntChannel; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, name_));
    KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, name_));
    const size_t n = desc.elements();
    const size_t groups = Groups(desc);
    const size_t base = out->size();
    out->resize(base + PayloadSize(desc));
    if (n == 0) return Status::Ok();
    uint8_t* scales = out->data() + base;
    uint8_t* mins = scales + 2 * groups;
    uint8_t* packed = mins + 2 * groups;
    uint8_t* idx = ThreadScratchBytes(n);
    if (axis_ == Axis::kToken) {
      QuantizeRowGroups(in, groups, desc.head_dim, bits_, scales, mins, idx, impl);
    } else {
      QuantizeColumnGroups(in, desc.tokens, groups, bits_, scales, mins, idx, impl);
    }
    PackBits(idx, n, bits_, packed, impl);
    return Status::Ok();
  }

  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, name_));
    KVWIRE_RETURN_IF_ERROR(CheckPayloadSize(payload.size(), PayloadSize(desc), name_));
    const size_t n = desc.elements();
    if (n == 0) return Status::Ok();
    const size_t groups = Groups(desc);
    const uint8_t* scales = payload.data();
    const uint8_t* mins = scales + 2 * groups;
    uint8_t* idx = ThreadScratchBytes(n);
    UnpackBits(mins + 2 * groups, n, bits_, idx, impl);
    const bool ok =
        axis_ == Axis::kToken
            ? DequantizeRowGroups(scales, mins, idx, groups, desc.head_dim, out, impl)
            : DequantizeColumnGroups(scales, mins, idx, desc.tokens, groups, out, impl);
    KVWIRE_RETURN_ERROR_IF(!ok, kCorrupt, name_ + ": a group scale or min is not finite");
    return Status::Ok();
  }

 private:
  size_t Groups(const ChunkDesc& desc) const {
    return axis_ == Axis::kToken ? size_t{desc.tokens} * desc.kv_heads
                                 : size_t{desc.kv_heads} * desc.head_dim;
  }
  uint64_t PayloadSize(const ChunkDesc& desc) const {
    if (desc.tokens == 0) return 0;
    return 4 * uint64_t{Groups(desc)} + PackedBytes(desc.elements(), bits_);
  }

  int bits_;
  Axis axis_;
  std::string name_;
};

CodecFamily MakeFamily(Axis axis) {
  const std::string suffix = axis == Axis::kToken ? "-token" : "-channel";
  std::string help =
      axis == Axis::kToken
          ? "uniform asymmetric b-bit (b=2..8), fp16 scale+min per (token, head) row; "
            "b + 32/head_dim bits/element"
          : "uniform asymmetric b-bit (b=2..8), fp16 scale+min per (head, channel) over the "
            "chunk's tokens; b + 32/tokens bits/element";
  return {
      "int<b>" + suffix, std::move(help),
      [axis, suffix](std::string_view name, const CodecOptions& opts,
                     const Profile*) -> Result<std::unique_ptr<Codec>> {
        uint32_t bits = 0;
        if (!MatchNumbered(name, "int", suffix, &bits)) return NotThisFamily();
        KVWIRE_RETURN_ERROR_IF(
            bits < 2 || bits > 8, kInvalidArgument,
            "int<b>" + suffix + " bit-width must be 2..8, got '" + std::string(name) + "'");
        KVWIRE_RETURN_IF_ERROR(CheckOptionKeys(name, opts, {}));
        return std::unique_ptr<Codec>(std::make_unique<IntBCodec>(static_cast<int>(bits), axis));
      }};
}

}  // namespace

CodecFamily IntTokenFamily() { return MakeFamily(Axis::kToken); }
CodecFamily IntChannelFamily() { return MakeFamily(Axis::kChannel); }

}  // namespace kvwire::baseline
