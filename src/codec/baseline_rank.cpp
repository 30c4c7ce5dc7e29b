// rank-<r>: PCA truncation ("deletion" of all but r directions) per kv head within the chunk.
// For head h: mean m (fp16), then the top-r eigenvectors U (r x head_dim) of the scatter matrix
// sum_t (x_t - m)(x_t - m)^T (deterministic Householder + QR solver, baseline_linalg.h), rounded
// to fp16, then per token the coefficients c_t = U (x_t - m) rounded to fp16 (computed with the
// rounded m and U, so they fit what the decoder sees). Decode x_t = m + U^T c_t.
// Payload (all fp16, little-endian): means [kv_heads, head_dim], bases [kv_heads, r, head_dim],
// coefficients [tokens, kv_heads, r]; 2 * kv_heads * (head_dim + r*head_dim + tokens*r) bytes =
// 16 r/head_dim + 16 (r + 1)/tokens bits/element. The basis rides in every chunk so the accounting
// is honest; a calibrated profile could share it (future work). Empty chunk -> empty payload.
// Requires 1 <= r < head_dim.
#include "codec/baseline_families.h"
#include "codec/baseline_linalg.h"
#include "codec/codec_ids.h"
#include "codec/quant_common.h"

namespace kvwire::baseline {
namespace {

class RankCodec final : public Codec {
 public:
  explicit RankCodec(uint32_t rank) : r_(rank), name_("rank-" + std::to_string(rank)) {}

  std::string Spec() const override { return name_; }
  uint16_t Id() const override { return kIdRank; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckShape(desc));
    KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, name_));
    const size_t base = out->size();
    out->resize(base + PayloadSize(desc));
    if (desc.tokens == 0) return Status::Ok();
    const size_t t_n = desc.tokens, h_n = desc.kv_heads, d = desc.head_dim, r = r_;
    uint8_t* means = out->data() + base;
    uint8_t* bases = means + 2 * h_n * d;
    uint8_t* coefs = bases + 2 * h_n * r * d;
    std::vector<double> centered(t_n * d), scatter(d * d), values, vectors;
    std::vector<float> mean_f(d), basis_f(r * d);
    for (size_t h = 0; h < h_n; ++h) {
      auto x = [&](size_t t, size_t i) { return in[(t * h_n + h) * d + i]; };
      // Mean over tokens (t ascending per channel in both paths), stored and then used at fp16.
      std::vector<double> sum(d, 0.0);
      for (size_t t = 0; t < t_n; ++t) {
        for (size_t i = 0; i < d; ++i) sum[i] += x(t, i);
      }
      for (size_t i = 0; i < d; ++i) {
        const uint16_t m = HalfSaturate(static_cast<float>(sum[i] / static_cast<double>(t_n)));
        StoreU16(means + 2 * (h * d + i), m);
        mean_f[i] = HalfToFloat(m);
      }
      for (size_t t = 0; t < t_n; ++t) {
        for (size_t i = 0; i < d; ++i) {
          centered[t * d + i] = static_cast<double>(x(t, i)) - static_cast<double>(mean_f[i]);
        }
      }
      Scatter(centered.data(), t_n, d, scatter.data(), impl);
      SymmetricEigen(d, scatter, &values, &vectors);
      for (size_t k = 0; k < r; ++k) {
        for (size_t i = 0; i < d; ++i) {
          const uint16_t u = HalfSaturate(static_cast<float>(vectors[k * d + i]));
          StoreU16(bases + 2 * ((h * r + k) * d + i), u);
          basis_f[k * d + i] = HalfToFloat(u);
        }
      }
      Project(centered.data(), basis_f.data(), t_n, h_n, h, d, r, coefs, impl);
    }
    return Status::Ok();
  }

  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl impl) const override {
    KVWIRE_RETURN_IF_ERROR(CheckShape(desc));
    KVWIRE_RETURN_IF_ERROR(CheckPayloadSize(payload.size(), PayloadSize(desc), name_));
    KVWIRE_RETURN_ERROR_IF(!HalvesFinite(payload.data(), payload.size() / 2), kCorrupt,
                           name_ + ": payload holds a non-finite fp16");
    if (desc.tokens == 0) return Status::Ok();
    const size_t t_n = desc.tokens, h_n = desc.kv_heads, d = desc.head_dim, r = r_;
    std::vector<float> all(payload.size() / 2);
    if (impl == CodecImpl::kReference) {
      LoadHalvesRef(payload.data(), all.size(), all.data());
    } else {
      LoadHalves(payload.data(), all.size(), all.data());
    }
    const float* means = all.data();
    const float* bases = means + h_n * d;
    const float* coefs = bases + h_n * r * d;
    for (size_t t = 0; t < t_n; ++t) {
      for (size_t h = 0; h < h_n; ++h) {
        const float* m = means + h * d;
        const float* u = bases + h * r * d;
        const float* c = coefs + (t * h_n + h) * r;
        float* o = out + (t * h_n + h) * d;
        if (impl == CodecImpl::kReference) {
          for (size_t i = 0; i < d; ++i) {
            float s = m[i];
            for (size_t k = 0; k < r; ++k) s += c[k] * u[k * d + i];
            o[i] = s;
          }
        } else {  // same sums in the same order, vectorized over i
          for (size_t i = 0; i < d; ++i) o[i] = m[i];
          for (size_t k = 0; k < r; ++k) {
            const float ck = c[k];
            const float* uk = u + k * d;
            for (size_t i = 0; i < d; ++i) o[i] += ck * uk[i];
          }
        }
      }
    }
    return Status::Ok();
  }

 private:
  Status CheckShape(const ChunkDesc& desc) const {
    KVWIRE_RETURN_IF_ERROR(CheckChunkShape(desc, name_));
    KVWIRE_RETURN_ERROR_IF(r_ >= desc.head_dim, kInvalidArgument,
                           name_ + " needs a rank below head_dim " + std::to_string(desc.head_dim));
    return Status::Ok();
  }

  uint64_t PayloadSize(const ChunkDesc& desc) const {
    if (desc.tokens == 0) return 0;
    const uint64_t h = desc.kv_heads, d = desc.head_dim, r = r_;
    return 2 * h * (d + r * d + uint64_t{desc.tokens} * r);
  }

  // scatter = sum_t a_t a_t^T over the rows of a [t_n, d]; every entry sums t in ascending order.
  static void Scatter(const double* a, size_t t_n, size_t d, double* scatter, CodecImpl impl) {
    if (impl == CodecImpl::kReference) {
      for (size_t i = 0; i < d; ++i) {
        for (size_t j = i; j < d; ++j) {
          double s = 0.0;
          for (size_t t = 0; t < t_n; ++t) s += a[t * d + i] * a[t * d + j];
          scatter[i * d + j] = scatter[j * d + i] = s;
        }
      }
      return;
    }
    std::fill(scatter, scatter + d * d, 0.0);
    for (size_t t = 0; t < t_n; ++t) {  // rank-1 updates of the upper triangle
      const double* at = a + t * d;
      for (size_t i = 0; i < d; ++i) {
        const double ai = at[i];
        double* row = scatter + i * d;
        for (size_t j = i; j < d; ++j) row[j] += ai * at[j];
      }
    }
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = i + 1; j < d; ++j) scatter[j * d + i] = scatter[i * d + j];
    }
  }

  // coefs[t, h, k] = fp16(sum_i u[k, i] * a[t, i]), i ascending, in double.
  static void Project(const double* a, const float* u, size_t t_n, size_t h_n, size_t h, size_t d,
                      size_t r, uint8_t* coefs, CodecImpl impl) {
    if (impl == CodecImpl::kReference) {
      for (size_t t = 0; t < t_n; ++t) {
        for (size_t k = 0; k < r; ++k) {
          double s = 0.0;
          for (size_t i = 0; i < d; ++i) s += static_cast<double>(u[k * d + i]) * a[t * d + i];
          StoreU16(coefs + 2 * ((t * h_n + h) * r + k), HalfSaturate(static_cast<float>(s)));
        }
      }
      return;
    }
    std::vector<double> ut(d * r), acc(r);  // basis transposed: [d, r]
    for (size_t k = 0; k < r; ++k) {
      for (size_t i = 0; i < d; ++i) ut[i * r + k] = u[k * d + i];
    }
    for (size_t t = 0; t < t_n; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (size_t i = 0; i < d; ++i) {
        const double ai = a[t * d + i];
        const double* ui = ut.data() + i * r;
        for (size_t k = 0; k < r; ++k) acc[k] += ui[k] * ai;
      }
      for (size_t k = 0; k < r; ++k) {
        StoreU16(coefs + 2 * ((t * h_n + h) * r + k), HalfSaturate(static_cast<float>(acc[k])));
      }
    }
  }

  uint32_t r_;
  std::string name_;
};

}  // namespace

CodecFamily RankFamily() {
  return {"rank-<r>",
          "PCA truncation per head within the chunk: fp16 mean, fp16 top-r basis and fp16 "
          "coefficients; 16 r/head_dim + 16 (r+1)/tokens bits/element (1 <= r < head_dim)",
          [](std::string_view name, const CodecOptions& opts,
             const Profile*) -> Result<std::unique_ptr<Codec>> {
            uint32_t rank = 0;
            if (!MatchNumbered(name, "rank-", "", &rank)) return NotThisFamily();
            KVWIRE_RETURN_ERROR_IF(rank < 1 || rank >= kMaxHeadDim, kInvalidArgument,
                                   "rank-<r> needs 1 <= r < " + std::to_string(kMaxHeadDim) +
                                       ", got '" + std::string(name) + "'");
            KVWIRE_RETURN_IF_ERROR(CheckOptionKeys(name, opts, {}));
            return std::unique_ptr<Codec>(std::make_unique<RankCodec>(rank));
          }};
}

}  // namespace kvwire::baseline
