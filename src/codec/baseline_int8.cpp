// int8: symmetric 8-bit per (token, head) row.
//
// Payload: scales [tokens * kv_heads] fp16, then q [tokens, kv_heads, head_dim] int8 (two's
// complement); 2 * rows + elements bytes = 8 + 16/head_dim bits/element.
// Recipe: scale = amax / 127 rounded *up* to the next fp16 (so |x| / scale <= 127 and the error
// bound is scale / 2 without clipping), q = round-to-nearest-even(x / scale), decode q * scale.
#include "codec/baseline_families.h"
#include "codec/codec_ids.h"
#include "codec/quant_common.h"

namespace kvwire::baseline {
namespace {

int8_t QuantizeSymmetric(float x, float div) {
  float q = std::nearbyint(x / div);
  q = q < -127.0f ? -127.0f : q;
  q = q > 127.0f ? 127.0f : q;
  return static_cast<int8_t>(static_cast<int32_t>(q));
}

class Int8Codec final : public Codec {
 public:
  std::string Spec() const override { return "int8"; }
  uint16_t Id() const override { return kIdInt8; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, "int8"));
    KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, "int8"));
    const size_t d = desc.head_dim;
    const size_t rows = size_t{desc.tokens} * desc.kv_heads;
    const size_t base = out->size();
    out->resize(base + 2 * rows + rows * d);
    uint8_t* scales = out->data() + base;
    int8_t* q = reinterpret_cast<int8_t*>(scales + 2 * rows);
    for (size_t r = 0; r < rows; ++r) {
      const float* x = in + r * d;
      float amax = 0.0f;
      if (impl == CodecImpl::kReference) {
        for (size_t j = 0; j < d; ++j) amax = std::max(amax, std::fabs(x[j]));
      } else {
        amax = AbsMaxFast(x, d);
      }
      const uint16_t scale_h = HalfRoundUp(amax / 127.0f);
      StoreU16(scales + 2 * r, scale_h);
      const float scale = HalfToFloat(scale_h);
      const float div = scale > 0.0f ? scale : 1.0f;
      int8_t* qr = q + r * d;
      for (size_t j = 0; j < d; ++j) qr[j] = QuantizeSymmetric(x[j], div);
    }
    return Status::Ok();
  }

  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, "int8"));
    const size_t d = desc.head_dim;
    const size_t rows = size_t{desc.tokens} * desc.kv_heads;
    KVWIRE_RETURN_IF_ERROR(CheckPayloadSize(payload.size(), 2 * uint64_t{rows} + rows * d, "int8"));
    const uint8_t* scales = payload.data();
    KVWIRE_RETURN_ERROR_IF(!HalvesAreScales(scales, rows), kCorrupt,
                           "int8: a scale is negative or not finite");
    const int8_t* q = reinterpret_cast<const int8_t*>(scales + 2 * rows);
    if (impl == CodecImpl::kReference) {
      for (size_t i = 0; i < rows * d; ++i) {
        out[i] = static_cast<float>(q[i]) * LoadHalf(scales, i / d);
      }
      return Status::Ok();
    }
    for (size_t r = 0; r < rows; ++r) {
      const float scale = LoadHalf(scales, r);
      const int8_t* qr = q + r * d;
      float* o = out + r * d;
      for (size_t j = 0; j < d; ++j) o[j] = static_cast<float>(qr[j]) * scale;
    }
    return Status::Ok();
  }
};

}  // namespace

CodecFamily Int8Family() {
  return {"int8",
          "symmetric int8 per (token, head), fp16 scale = amax/127; 8 + 16/head_dim bits/element",
          [](std::string_view name, const CodecOptions& opts,
             const Profile*) -> Result<std::unique_ptr<Codec>> {
            if (name != "int8") return NotThisFamily();
            KVWIRE_RETURN_IF_ERROR(CheckOptionKeys(name, opts, {}));
            return std::unique_ptr<Codec>(std::make_unique<Int8Codec>());
          }};
}

}  // namespace kvwire::baseline
