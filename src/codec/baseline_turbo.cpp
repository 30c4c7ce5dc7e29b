// turbo<b> (b = 1..8; TurboQuant-style, data-oblivious): per (token, head) vector x of head_dim D,
//   n = ||x|| stored as fp16 (nearest, saturating), n' = that fp16's value,
//   y = R x * sqrt(D) / n'  with R the seeded random orthogonal D x D matrix of
//       RandomOrthogonal(D, seed) (baseline_linalg.h) rounded to float,
//   index_i = GaussianLloydMax(b).Quantize(y_i)  (MSE-optimal for N(0, 1) coordinates);
// decode x^ = R^T level[index] * n' / sqrt(D), not renormalized to n': Lloyd-Max levels are
// conditional means, so the shrunken vector is the MSE-better estimate. (n' = 0 decodes to 0.)
// Float sums run over the matrix dimension in ascending order in both implementations.
// Payload: fp16 norms [tokens, kv_heads], then the packed b-bit indices [tokens, kv_heads, D]
// (byte-padded at the end): b + 16/D bits/element.
#include <map>
#include <memory>
#include <mutex>

#include "codec/baseline_families.h"
#include "codec/baseline_linalg.h"
#include "codec/codec_ids.h"
#include "codec/lloyd_max.h"
#include "codec/quant_common.h"

namespace kvwire::baseline {
namespace {

constexpr int64_t kDefaultSeed = 1;

struct Rotation {
  std::vector<float> r;   // [D, D] row-major
  std::vector<float> rt;  // R^T, [D, D] row-major
};

class TurboCodec final : public Codec {
 public:
  TurboCodec(int bits, uint64_t seed)
      : bits_(bits),
        seed_(seed),
        name_("turbo" + std::to_string(bits)),
        book_(GaussianLloydMax(bits)) {}

  std::string Spec() const override { return name_ + ":seed=" + std::to_string(seed_); }
  uint16_t Id() const override { return kIdTurbo; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, name_));
    KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, name_));
    const size_t d = desc.head_dim, rows = size_t{desc.tokens} * desc.kv_heads;
    const size_t base = out->size();
    out->resize(base + PayloadSize(desc));
    if (rows == 0) return Status::Ok();
    uint8_t* norms = out->data() + base;
    const Rotation& rot = GetRotation(d);
    const double sqrt_d = std::sqrt(static_cast<double>(d));
    const std::vector<float>& th = book_.thresholds;
    uint8_t* idx = ThreadScratchBytes(rows * d);
    std::vector<float> y(d);
    for (size_t row = 0; row < rows; ++row) {
      const float* x = in + row * d;
      double ss = 0.0;
      for (size_t j = 0; j < d; ++j) ss += static_cast<double>(x[j]) * x[j];
      const uint16_t n_h = HalfSaturate(static_cast<float>(std::sqrt(ss)));
      StoreU16(norms + 2 * row, n_h);
      const float n = HalfToFloat(n_h);
      const float scale = n > 0.0f ? static_cast<float>(sqrt_d / n) : 0.0f;
      uint8_t* q = idx + row * d;
      if (impl == CodecImpl::kReference) {
        for (size_t i = 0; i < d; ++i) {
          float acc = 0.0f;
          for (size_t j = 0; j < d; ++j) acc += rot.r[i * d + j] * x[j];
          q[i] = static_cast<uint8_t>(book_.Quantize(acc * scale));
        }
      } else {  // y = R x as axpy over R^T's rows; index = count of thresholds below y
        std::fill(y.begin(), y.end(), 0.0f);
        for (size_t j = 0; j < d; ++j) {
          const float xj = x[j];
          const float* col = rot.rt.data() + j * d;
          for (size_t i = 0; i < d; ++i) y[i] += col[i] * xj;
        }
        for (size_t i = 0; i < d; ++i) y[i] *= scale;
        for (size_t i = 0; i < d; ++i) q[i] = 0;
        for (float t : th) {
          for (size_t i = 0; i < d; ++i) q[i] += static_cast<uint8_t>(y[i] > t);
        }
      }
    }
    PackBits(idx, rows * d, bits_, norms + 2 * rows, impl);
    return Status::Ok();
  }

  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, name_));
    KVWIRE_RETURN_IF_ERROR(CheckPayloadSize(payload.size(), PayloadSize(desc), name_));
    const size_t d = desc.head_dim, rows = size_t{desc.tokens} * desc.kv_heads;
    if (rows == 0) return Status::Ok();
    const uint8_t* norms = payload.data();
    KVWIRE_RETURN_ERROR_IF(!HalvesAreScales(norms, rows), kCorrupt,
                           name_ + ": a norm is negative or not finite");
    const Rotation& rot = GetRotation(d);
    const double sqrt_d = std::sqrt(static_cast<double>(d));
    uint8_t* idx = ThreadScratchBytes(rows * d);
    UnpackBits(norms + 2 * rows, rows * d, bits_, idx, impl);
    const float* level = book_.levels.data();
    std::vector<float> z(d);
    for (size_t row = 0; row < rows; ++row) {
      const float gain = static_cast<float>(static_cast<double>(LoadHalf(norms, row)) / sqrt_d);
      const uint8_t* q = idx + row * d;
      float* o = out + row * d;
      if (impl == CodecImpl::kReference) {
        for (size_t j = 0; j < d; ++j) {
          float acc = 0.0f;
          for (size_t i = 0; i < d; ++i) acc += rot.r[i * d + j] * level[q[i]];
          o[j] = acc * gain;
        }
      } else {  // x^ = R^T z as axpy over R's rows
        for (size_t i = 0; i < d; ++i) z[i] = level[q[i]];
        std::fill(o, o + d, 0.0f);
        for (size_t i = 0; i < d; ++i) {
          const float zi = z[i];
          const float* row_i = rot.r.data() + i * d;
          for (size_t j = 0; j < d; ++j) o[j] += row_i[j] * zi;
        }
        for (size_t j = 0; j < d; ++j) o[j] *= gain;
      }
    }
    return Status::Ok();
  }

 private:
  uint64_t PayloadSize(const ChunkDesc& desc) const {
    const uint64_t rows = uint64_t{desc.tokens} * desc.kv_heads;
    return 2 * rows + PackedBytes(rows * desc.head_dim, bits_);
  }

  // The rotation for head_dim d, built once per (codec, d) and kept; concurrent callers share it.
  const Rotation& GetRotation(size_t d) const {
    std::lock_guard lock(mu_);
    auto& slot = rotations_[d];
    if (!slot) {
      const std::vector<double> m = RandomOrthogonal(d, seed_);
      auto rot = std::make_unique<Rotation>();
      rot->r.resize(d * d);
      rot->rt.resize(d * d);
      for (size_t i = 0; i < d; ++i) {
        for (size_t j = 0; j < d; ++j) {
          rot->r[i * d + j] = static_cast<float>(m[i * d + j]);
          rot->rt[j * d + i] = rot->r[i * d + j];
        }
      }
      slot = std::move(rot);
    }
    return *slot;
  }

  int bits_;
  uint64_t seed_;
  std::string name_;
  const GaussianCodebook& book_;
  mutable std::mutex mu_;
  mutable std::map<size_t, std::unique_ptr<const Rotation>> rotations_;
};

}  // namespace

CodecFamily TurboFamily() {
  return {"turbo<b>[:seed=S]",
          "seeded random orthogonal rotation + Gaussian Lloyd-Max b-bit (b=1..8) per (token, "
          "head), fp16 norm; data-oblivious; b + 16/head_dim bits/element",
          [](std::string_view name, const CodecOptions& opts,
             const Profile*) -> Result<std::unique_ptr<Codec>> {
            uint32_t bits = 0;
            if (!MatchNumbered(name, "turbo", "", &bits)) return NotThisFamily();
            KVWIRE_RETURN_ERROR_IF(bits < 1 || bits > 8, kInvalidArgument,
                                   "turbo bit-width must be 1..8, got '" + std::string(name) + "'");
            KVWIRE_RETURN_IF_ERROR(CheckOptionKeys(name, opts, {"seed"}));
            KVWIRE_ASSIGN_OR_RETURN(const int64_t seed,
                                    opts.GetInt("seed", kDefaultSeed, 0, INT64_MAX));
            return std::unique_ptr<Codec>(
                std::make_unique<TurboCodec>(static_cast<int>(bits), static_cast<uint64_t>(seed)));
          }};
}

}  // namespace kvwire::baseline
