#include "synthetic_kv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <span>
#include <thread>
#include <vector>

#include "common/fp16.h"

namespace kvwire::cli {
namespace {

// SplitMix64: tiny, fast, and identical on every platform (std distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Uniform() { return double(Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double Normal() {  // Box-Muller; the spare value is kept for the next call
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u = 1.0 - Uniform(), v = Uniform();
    const double r = std::sqrt(-2.0 * std::log(u));
    spare_ = r * std::sin(2.0 * M_PI * v);
    has_spare_ = true;
    return r * std::cos(2.0 * M_PI * v);
  }

 private:
  uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

uint64_t StreamSeed(uint64_t seed, uint32_t layer, uint32_t what, uint32_t head) {
  Rng r(seed ^ (uint64_t{layer} << 40) ^ (uint64_t{what} << 32) ^ head);
  return r.Next();
}

constexpr int kKeyRank = 8;
constexpr int kValueRank = 4;
enum Stream : uint32_t { kKeyModel = 0, kKeyTokens = 1, kValueTokens = 2, kQueryTokens = 3 };

// The fixed (token-independent) part of one kv head's keys.
struct KeyHead {
  std::vector<double> mean;                // [head_dim]
  std::vector<std::vector<double>> basis;  // [rank][head_dim], entries ~N(0, 1)
  std::vector<double> sigma;               // [rank]
  std::vector<uint32_t> outliers;          // channels
  std::vector<double> outlier_offset;      // per outlier channel
};

KeyHead MakeKeyHead(const SyntheticKvOptions& o, uint32_t layer, uint32_t head) {
  const uint32_t d = o.shape.head_dim;
  Rng rng(StreamSeed(o.seed, layer, kKeyModel, head));
  // Layers differ in scale, as real ones do (0.6x .. 1.4x).
  const double layer_amp = 0.6 + 0.08 * double((layer * 7919u + 3u) % 11u);
  KeyHead k;
  k.mean.resize(d);
  for (double& m : k.mean) m = 0.3 * rng.Normal();
  const int rank = std::min<int>(kKeyRank, static_cast<int>(d));
  for (int j = 0; j < rank; ++j) {
    std::vector<double> b(d);
    for (double& x : b) x = rng.Normal();
    k.basis.push_back(std::move(b));
    k.sigma.push_back(layer_amp * std::pow(0.75, j));
  }
  // Outliers sit in the last quarter of channels: the slowly rotating RoPE pairs.
  const uint32_t n_out = std::max<uint32_t>(1, d / 32);
  const uint32_t first = d - std::max<uint32_t>(1, d / 4);
  for (uint32_t i = 0; i < n_out; ++i) {
    uint32_t c = first + static_cast<uint32_t>(rng.Next() % (d - first));
    if (std::find(k.outliers.begin(), k.outliers.end(), c) != k.outliers.end()) continue;
    k.outliers.push_back(c);
    k.outlier_offset.push_back((rng.Uniform() < 0.5 ? -1 : 1) * layer_amp *
                               (6.0 + 6.0 * rng.Uniform()));
  }
  return k;
}

// theta^(-2i/d) for each RoPE pair i.
std::vector<double> RopeFrequencies(uint32_t d, double theta) {
  std::vector<double> f(d / 2);
  for (size_t i = 0; i < f.size(); ++i) f[i] = std::pow(theta, -double(2 * i) / double(d));
  return f;
}

// Rotates interleaved pairs (2i, 2i+1) by position * theta^(-2i/d) (llama2.c/GGUF style).
void ApplyRope(std::span<double> x, int64_t position, std::span<const double> freq) {
  for (size_t i = 0; i < freq.size(); ++i) {
    const double angle = double(position) * freq[i];
    const double c = std::cos(angle), s = std::sin(angle);
    const double a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = a * s + b * c;
  }
}

void Store(DType dtype, double value, uint8_t* dst) {
  const float f = static_cast<float>(value);
  if (dtype == DType::kF32) {
    std::memcpy(dst, &f, 4);
  } else {
    const uint16_t h = dtype == DType::kF16 ? FloatToHalf(f) : FloatToBf16(f);
    std::memcpy(dst, &h, 2);
  }
}

// Latent coefficients that drift over tokens: AR(1) with correlation rho.
struct Drift {
  std::vector<double> c;
  double rho;
  Drift(int n, double r, Rng* rng) : c(n), rho(r) {
    for (double& x : c) x = rng->Normal();
  }
  void Step(Rng* rng) {
    const double innovation = std::sqrt(1.0 - rho * rho);
    for (double& x : c) x = rho * x + innovation * rng->Normal();
  }
};

void GenerateKeys(const SyntheticKvOptions& o, uint32_t layer, std::span<uint8_t> out) {
  const KvShape& s = o.shape;
  const uint32_t d = s.head_dim;
  const size_t esize = DTypeSize(o.dtype);
  const std::vector<double> freq = RopeFrequencies(d, o.rope_theta);
  std::vector<double> row(d);
  for (uint32_t h = 0; h < s.kv_heads; ++h) {
    const KeyHead k = MakeKeyHead(o, layer, h);
    Rng rng(StreamSeed(o.seed, layer, kKeyTokens, h));
    Drift drift(static_cast<int>(k.basis.size()), 0.95, &rng);
    for (uint32_t t = 0; t < s.tokens; ++t) {
      drift.Step(&rng);
      for (uint32_t c = 0; c < d; ++c) row[c] = k.mean[c] + 0.2 * rng.Normal();
      for (size_t j = 0; j < k.basis.size(); ++j) {
        const double a = k.sigma[j] * drift.c[j];
        for (uint32_t c = 0; c < d; ++c) row[c] += a * k.basis[j][c];
      }
      for (size_t i = 0; i < k.outliers.size(); ++i) {
        row[k.outliers[i]] += k.outlier_offset[i] * (1.0 + 0.1 * rng.Normal());
      }
      ApplyRope(row, o.positions_start + t, freq);
      uint8_t* dst = out.data() + (size_t{t} * s.kv_heads + h) * d * esize;
      for (uint32_t c = 0; c < d; ++c) Store(o.dtype, row[c], dst + c * esize);
    }
  }
}

void GenerateValues(const SyntheticKvOptions& o, uint32_t layer, std::span<uint8_t> out) {
  const KvShape& s = o.shape;
  const uint32_t d = s.head_dim;
  const size_t esize = DTypeSize(o.dtype);
  for (uint32_t h = 0; h < s.kv_heads; ++h) {
    Rng rng(StreamSeed(o.seed, layer, kValueTokens, h));
    std::vector<double> scale(d);
    for (double& x : scale) x = 0.6 * std::exp(0.35 * rng.Normal());
    const int rank = std::min<int>(kValueRank, static_cast<int>(d));
    std::vector<std::vector<double>> basis(rank, std::vector<double>(d));
    for (auto& b : basis) {
      for (double& x : b) x = rng.Normal();
    }
    std::vector<double> amp(rank);
    for (int j = 0; j < rank; ++j) amp[j] = 0.4 * std::pow(0.7, j);
    Drift drift(rank, 0.5, &rng);
    for (uint32_t t = 0; t < s.tokens; ++t) {
      drift.Step(&rng);
      uint8_t* dst = out.data() + (size_t{t} * s.kv_heads + h) * d * esize;
      for (uint32_t c = 0; c < d; ++c) {
        double v = scale[c] * rng.Normal();
        for (int j = 0; j < rank; ++j) v += amp[j] * drift.c[j] * basis[j][c];
        Store(o.dtype, v, dst + c * esize);
      }
    }
  }
}

void GenerateQueries(const SyntheticKvOptions& o, uint32_t layer, std::span<uint8_t> out) {
  const KvShape& s = o.shape;
  const uint32_t d = s.head_dim;
  const size_t esize = DTypeSize(o.dtype);
  const uint32_t group = o.q_heads / s.kv_heads;
  const std::vector<double> freq = RopeFrequencies(d, o.rope_theta);
  std::vector<double> row(d);
  for (uint32_t qh = 0; qh < o.q_heads; ++qh) {
    const KeyHead k = MakeKeyHead(o, layer, qh / group);
    Rng rng(StreamSeed(o.seed, layer, kQueryTokens, qh));
    // Each query head prefers some of its kv head's directions (fixed weights) and drifts.
    std::vector<double> weight(k.basis.size());
    for (double& w : weight) w = rng.Normal();
    Drift drift(static_cast<int>(k.basis.size()), 0.8, &rng);
    for (uint32_t t = 0; t < s.tokens; ++t) {
      drift.Step(&rng);
      for (uint32_t c = 0; c < d; ++c) row[c] = 0.5 * rng.Normal();
      for (size_t j = 0; j < k.basis.size(); ++j) {
        const double a = weight[j] + 0.3 * drift.c[j];
        for (uint32_t c = 0; c < d; ++c) row[c] += a * k.basis[j][c];
      }
      for (uint32_t c : k.outliers) row[c] += 1.0;
      ApplyRope(row, o.positions_start + t, freq);
      uint8_t* dst = out.data() + (size_t{t} * o.q_heads + qh) * d * esize;
      for (uint32_t c = 0; c < d; ++c) Store(o.dtype, row[c], dst + c * esize);
    }
  }
}

}  // namespace

Result<KvCache> MakeSyntheticKv(const SyntheticKvOptions& o) {
  KVWIRE_RETURN_IF_ERROR(ValidateShape(o.shape));
  KVWIRE_RETURN_ERROR_IF(o.q_heads % o.shape.kv_heads != 0, kInvalidArgument,
                         "query heads (" + std::to_string(o.q_heads) +
                             ") must be a multiple of kv heads (" +
                             std::to_string(o.shape.kv_heads) + ")");
  KVWIRE_RETURN_ERROR_IF(!(o.rope_theta > 1.0) || !std::isfinite(o.rope_theta), kInvalidArgument,
                         "rope theta must be a finite number > 1");
  KVWIRE_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(o.shape, o.dtype, o.q_heads));
  cache.metadata().positions_start = o.positions_start;
  cache.metadata().rope_theta = o.rope_theta;
  cache.metadata().rope_style = "interleaved";
  cache.metadata().model_fingerprint = "synthetic-v1:seed=" + std::to_string(o.seed);

  // Work items: (layer, K|V|Q); each writes its own tensor, so threads never share output.
  const uint32_t kinds = o.q_heads ? 3 : 2;
  const uint32_t items = o.shape.layers * kinds;
  std::atomic<uint32_t> next{0};
  auto worker = [&] {
    for (uint32_t i = next++; i < items; i = next++) {
      const uint32_t layer = i / kinds, kind = i % kinds;
      if (kind == 0) GenerateKeys(o, layer, cache.tensor(layer, KvKind::kKey));
      if (kind == 1) GenerateValues(o, layer, cache.tensor(layer, KvKind::kValue));
      if (kind == 2) GenerateQueries(o, layer, cache.queries(layer));
    }
  };
  const int threads = std::clamp<int>(o.threads, 1, static_cast<int>(items));
  std::vector<std::jthread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  pool.clear();
  return cache;
}

}  // namespace kvwire::cli
