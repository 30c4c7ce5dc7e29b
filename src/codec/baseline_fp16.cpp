// fp16: passthrough. Payload: the chunk's elements as little-endian fp16 in input order
// [tokens, kv_heads, head_dim], 2 bytes each (16 bits/element). Values beyond the fp16 range
// saturate at +-65504; a non-finite fp16 in a payload is kCorrupt (the encoder never writes one).
#include <algorithm>

#include "codec/baseline_families.h"
#include "codec/codec_ids.h"
#include "codec/quant_common.h"

namespace kvwire::baseline {
namespace {

class Fp16Codec final : public Codec {
 public:
  std::string Spec() const override { return "fp16"; }
  uint16_t Id() const override { return kIdFp16; }
  bool PayloadIsHalves() const override { return true; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, "fp16"));
    KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, "fp16"));
    const size_t n = desc.elements();
    const size_t base = out->size();
    out->resize(base + 2 * n);
    uint8_t* p = out->data() + base;
    if (impl == CodecImpl::kReference) {
      for (size_t i = 0; i < n; ++i) StoreU16(p + 2 * i, HalfSaturate(in[i]));
      return Status::Ok();
    }
    constexpr size_t kBlock = 256;
    float buf[kBlock];
    for (size_t i = 0; i < n; i += kBlock) {
      const size_t m = std::min(kBlock, n - i);
      for (size_t j = 0; j < m; ++j) buf[j] = std::clamp(in[i + j], -kHalfMax, kHalfMax);
      StoreHalves(buf, m, p + 2 * i);
    }
    return Status::Ok();
  }

  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, "fp16"));
    const size_t n = desc.elements();
    KVWIRE_RETURN_IF_ERROR(CheckPayloadSize(payload.size(), 2 * uint64_t{n}, "fp16"));
    KVWIRE_RETURN_ERROR_IF(!HalvesFinite(payload.data(), n), kCorrupt,
                           "fp16: payload holds a non-finite value");
    if (impl == CodecImpl::kReference) {
      LoadHalvesRef(payload.data(), n, out);
    } else {
      LoadHalves(payload.data(), n, out);
    }
    return Status::Ok();
  }
};

}  // namespace

CodecFamily Fp16Family() {
  return {"fp16", "passthrough as IEEE fp16 (saturating at +-65504); 16 bits/element",
          [](std::string_view name, const CodecOptions& opts,
             const Profile*) -> Result<std::unique_ptr<Codec>> {
            if (name != "fp16") return NotThisFamily();
            KVWIRE_RETURN_IF_ERROR(CheckOptionKeys(name, opts, {}));
            return std::unique_ptr<Codec>(std::make_unique<Fp16Codec>());
          }};
}

}  // namespace kvwire::baseline
