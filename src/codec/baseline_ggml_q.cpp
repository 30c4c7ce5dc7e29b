// q8_0 and q4_0: llama.cpp (ggml) block formats. Each (token, head) row of head_dim values is cut
// into blocks of 32 consecutive values (head_dim % 32 == 0 is required); the payload is the
// blocks in input order, nothing else, laid out byte for byte as ggml stores them:
//   q8_0: fp16 d, then 32 int8 q;           d = amax / 127, q = round-half-away(x / d);   34 bytes
//   q4_0: fp16 d, then 16 bytes of nibbles; d = m / -8 with m the value of largest magnitude
//         (first one on ties), q = min(15, trunc(x / d + 8.5)); byte j holds element j in its
//         low nibble and element j + 16 in its high nibble; decode (q - 8) * d.    18 bytes
// So q8_0 is 8.5 and q4_0 4.5 bits/element. d is computed and used in float and stored rounded
// to fp16 (as ggml does); values beyond the fp16 range saturate (|d| is capped at 65504).
#include "codec/baseline_families.h"
#include "codec/codec_ids.h"
#include "codec/quant_common.h"

namespace kvwire::baseline {
namespace {

constexpr size_t kQK = 32;  // values per block

struct BlockQ8_0 {
  uint16_t d;      // fp16 scale
  int8_t qs[kQK];  // quants
};
static_assert(sizeof(BlockQ8_0) == 2 + kQK, "wrong q8_0 block size/padding");

struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[kQK / 2];  // nibbles: low = element j, high = element j + 16
};
static_assert(sizeof(BlockQ4_0) == 2 + kQK / 2, "wrong q4_0 block size/padding");

enum class Format { kQ8_0, kQ4_0 };

template <typename Block>
void QuantizeBlock(const float* x, Block* b, CodecImpl impl);

template <>
void QuantizeBlock<BlockQ8_0>(const float* x, BlockQ8_0* b, CodecImpl impl) {
  float amax = 0.0f;
  if (impl == CodecImpl::kReference) {
    for (size_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  } else {
    amax = AbsMaxFast(x, kQK);
  }
  const float d = std::min(amax / 127.0f, kHalfMax);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = FloatToHalf(d);
  for (size_t j = 0; j < kQK; ++j) {
    const float q = std::clamp(std::round(x[j] * id), -127.0f, 127.0f);
    b->qs[j] = static_cast<int8_t>(q);
  }
}

template <>
void QuantizeBlock<BlockQ4_0>(const float* x, BlockQ4_0* b, CodecImpl impl) {
  float amax = 0.0f, max = 0.0f;
  if (impl == CodecImpl::kReference) {
    for (size_t j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
  } else {  // vectorized |max|, then the first element reaching it
    amax = AbsMaxFast(x, kQK);
    for (size_t j = 0; j < kQK; ++j) {
      if (std::fabs(x[j]) == amax) {
        max = amax == 0.0f ? 0.0f : x[j];
        break;
      }
    }
  }
  const float d = std::clamp(max / -8.0f, -kHalfMax, kHalfMax);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = FloatToHalf(d);
  uint8_t q[kQK];
  for (size_t j = 0; j < kQK; ++j) {
    const float v = std::max(x[j] * id + 8.5f, 0.0f);  // x * id >= -8 already, unless saturated
    q[j] = static_cast<uint8_t>(std::min(15, static_cast<int32_t>(v)));
  }
  for (size_t j = 0; j < kQK / 2; ++j)
    b->qs[j] = static_cast<uint8_t>(q[j] | (q[j + kQK / 2] << 4));
}

void DequantizeBlock(const BlockQ8_0& b, float* out) {
  const float d = HalfToFloat(b.d);
  for (size_t j = 0; j < kQK; ++j) out[j] = static_cast<float>(b.qs[j]) * d;
}

void DequantizeBlock(const BlockQ4_0& b, float* out) {
  const float d = HalfToFloat(b.d);
  for (size_t j = 0; j < kQK / 2; ++j) {
    out[j] = static_cast<float>((b.qs[j] & 0x0f) - 8) * d;
    out[j + kQK / 2] = static_cast<float>((b.qs[j] >> 4) - 8) * d;
  }
}

template <typename Block>
class GgmlCodec final : public Codec {
 public:
  GgmlCodec(std::string name, uint16_t id) : name_(std::move(name)), id_(id) {}
  std::string Spec() const override { return name_; }
  uint16_t Id() const override { return id_; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckShape(desc));
    KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, name_));
    const size_t blocks = desc.elements() / kQK;
    const size_t base = out->size();
    out->resize(base + blocks * sizeof(Block));
    uint8_t* p = out->data() + base;
    for (size_t i = 0; i < blocks; ++i) {
      Block b;
      QuantizeBlock(in + i * kQK, &b, impl);
      if (impl == CodecImpl::kReference) {  // field by field, little-endian
        StoreU16(p + i * sizeof(Block), b.d);
        std::memcpy(p + i * sizeof(Block) + 2, b.qs, sizeof(b.qs));
      } else {
        std::memcpy(p + i * sizeof(Block), &b, sizeof(Block));
      }
    }
    return Status::Ok();
  }

  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckShape(desc));
    const size_t blocks = desc.elements() / kQK;
    KVWIRE_RETURN_IF_ERROR(
        CheckPayloadSize(payload.size(), uint64_t{blocks} * sizeof(Block), name_));
    for (size_t i = 0; i < blocks; ++i) {
      Block b;
      if (impl == CodecImpl::kReference) {
        b.d = LoadU16(payload.data() + i * sizeof(Block));
        std::memcpy(b.qs, payload.data() + i * sizeof(Block) + 2, sizeof(b.qs));
      } else {
        std::memcpy(&b, payload.data() + i * sizeof(Block), sizeof(Block));
      }
      KVWIRE_RETURN_ERROR_IF(!HalfIsFinite(b.d), kCorrupt,
                             name_ + ": block " + std::to_string(i) + " has a non-finite scale");
      DequantizeBlock(b, out + i * kQK);
    }
    return Status::Ok();
  }

 private:
  Status CheckShape(const ChunkDesc& desc) const {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, name_));
    KVWIRE_RETURN_ERROR_IF(desc.head_dim % kQK != 0, kInvalidArgument,
                           name_ + " needs head_dim divisible by 32 (blocks of 32 values), got " +
                               std::to_string(desc.head_dim));
    return Status::Ok();
  }

  std::string name_;
  uint16_t id_;
};

template <typename Block>
CodecFamily MakeFamily(std::string name, uint16_t id, std::string help) {
  return {name, std::move(help),
          [name, id](std::string_view spec_name, const CodecOptions& opts,
                     const Profile*) -> Result<std::unique_ptr<Codec>> {
            if (spec_name != name) return NotThisFamily();
            KVWIRE_RETURN_IF_ERROR(CheckOptionKeys(name, opts, {}));
            return std::unique_ptr<Codec>(std::make_unique<GgmlCodec<Block>>(name, id));
          }};
}

}  // namespace

CodecFamily Q8_0Family() {
  return MakeFamily<BlockQ8_0>(
      "q8_0", kIdQ8_0,
      "llama.cpp q8_0: blocks of 32 values along head_dim, fp16 d = amax/127 + 32 int8; "
      "8.5 bits/element (head_dim % 32 == 0)");
}

CodecFamily Q4_0Family() {
  return MakeFamily<BlockQ4_0>(
      "q4_0", kIdQ4_0,
      "llama.cpp q4_0: blocks of 32 values along head_dim, fp16 d = max/-8 + 32 4-bit q; "
      "4.5 bits/element (head_dim % 32 == 0)");
}

}  // namespace kvwire::baseline
