// fraqtl with entropy=rans: payload version 2 (docs/FORMAT.md).
//
// One pass. The rate allocation of a (layer, K|V) is a fixed ladder of steps computed from the
// profile (FraqtlCodec::RansLadder); a chunk takes its first N steps, and the first `extra`
// quantized tokens take step N + 1 as well. Every symbol's cost is a table lookup, so the
// encoder prices the ladder on the chunk's own coefficients, picks N and extra that fill the
// budget, and then codes each symbol once with static rANS (rans.h).
//
// Only the directions that receive bits are rotated: the encoder projects each row onto the
// kept rows of F (one pass over the row per token, all kept outputs accumulated together), the
// decoder accumulates the kept columns of G. Both add the same products in the same order as
// the reference's dot products (fraqtl_codec_impl.h), so the two paths give identical bytes and
// identical decoded values.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <queue>

#include "codec/fraqtl_codec_impl.h"

namespace kvwire::fraqtl::internal {
namespace {

// Distortion of a protected (fp16) coefficient in the allocation (as fraqtl_alloc.cpp).
constexpr double kProtectedDistortion = 1e-7;
constexpr uint64_t kProtectedCost = uint64_t{16} * rans::kCostOne;
constexpr uint8_t kFlagRepeats = 1;  // payload flags bit 0: a repeat section follows the gains

// ---- kernels ----------------------------------------------------------------------------------
// out[0, n) = sum over j in [0, d) of m[j * n + c] * x[j], each out[c] accumulated from 0 in
// ascending j with a multiply and an add (no fused multiply-add): the floats of a dot product
// computed term by term. n is a multiple of 8.
void ProjectScalar(const float* m, const float* x, size_t d, size_t n, float* out) {
  for (size_t c = 0; c < n; ++c) out[c] = 0.0f;
  for (size_t j = 0; j < d; ++j) {
    const float xj = x[j];
    const float* row = m + j * n;
    for (size_t c = 0; c < n; ++c) out[c] = out[c] + row[c] * xj;
  }
}

__attribute__((target("avx2"))) void ProjectAvx2(const float* m, const float* x, size_t d,
                                                  size_t n, float* out) {
  size_t c0 = 0;
  for (; c0 + 64 <= n; c0 += 64) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0;
    for (size_t j = 0; j < d; ++j) {
      const __m256 b = _mm256_broadcast_ss(x + j);
      const float* r = m + j * n + c0;
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(r), b));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_loadu_ps(r + 8), b));
      a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_loadu_ps(r + 16), b));
      a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_loadu_ps(r + 24), b));
      a4 = _mm256_add_ps(a4, _mm256_mul_ps(_mm256_loadu_ps(r + 32), b));
      a5 = _mm256_add_ps(a5, _mm256_mul_ps(_mm256_loadu_ps(r + 40), b));
      a6 = _mm256_add_ps(a6, _mm256_mul_ps(_mm256_loadu_ps(r + 48), b));
      a7 = _mm256_add_ps(a7, _mm256_mul_ps(_mm256_loadu_ps(r + 56), b));
    }
    _mm256_storeu_ps(out + c0, a0);
    _mm256_storeu_ps(out + c0 + 8, a1);
    _mm256_storeu_ps(out + c0 + 16, a2);
    _mm256_storeu_ps(out + c0 + 24, a3);
    _mm256_storeu_ps(out + c0 + 32, a4);
    _mm256_storeu_ps(out + c0 + 40, a5);
    _mm256_storeu_ps(out + c0 + 48, a6);
    _mm256_storeu_ps(out + c0 + 56, a7);
  }
  for (; c0 + 32 <= n; c0 += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t j = 0; j < d; ++j) {
      const __m256 b = _mm256_broadcast_ss(x + j);
      const float* r = m + j * n + c0;
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(r), b));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_loadu_ps(r + 8), b));
      a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_loadu_ps(r + 16), b));
      a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_loadu_ps(r + 24), b));
    }
    _mm256_storeu_ps(out + c0, a0);
    _mm256_storeu_ps(out + c0 + 8, a1);
    _mm256_storeu_ps(out + c0 + 16, a2);
    _mm256_storeu_ps(out + c0 + 24, a3);
  }
  for (; c0 + 8 <= n; c0 += 8) {
    __m256 a0 = _mm256_setzero_ps();
    for (size_t j = 0; j < d; ++j) {
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(m + j * n + c0),
                                           _mm256_broadcast_ss(x + j)));
    }
    _mm256_storeu_ps(out + c0, a0);
  }
}

// out[0, d) = mean + sum over k of rows[k][0, d) * z[k], accumulated from 0 in ascending k
// (a multiply and an add each), then added to the mean: the reference's Inverse restricted to
// the nonzero coefficients. d is a multiple of 8 for the AVX2 version.
void AccumulateScalar(const float* const* rows, const float* z, size_t k, const float* mean,
                      size_t d, float* out) {
  for (size_t j = 0; j < d; ++j) out[j] = 0.0f;
  for (size_t c = 0; c < k; ++c) {
    const float* r = rows[c];
    const float zc = z[c];
    for (size_t j = 0; j < d; ++j) out[j] = out[j] + r[j] * zc;
  }
  for (size_t j = 0; j < d; ++j) out[j] = mean[j] + out[j];
}

__attribute__((target("avx2"))) void AccumulateAvx2(const float* const* rows, const float* z,
                                                     size_t k, const float* mean, size_t d,
                                                     float* out) {
  size_t j0 = 0;
  for (; j0 + 64 <= d; j0 += 64) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0;
    for (size_t c = 0; c < k; ++c) {
      const __m256 b = _mm256_broadcast_ss(z + c);
      const float* r = rows[c] + j0;
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(r), b));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_loadu_ps(r + 8), b));
      a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_loadu_ps(r + 16), b));
      a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_loadu_ps(r + 24), b));
      a4 = _mm256_add_ps(a4, _mm256_mul_ps(_mm256_loadu_ps(r + 32), b));
      a5 = _mm256_add_ps(a5, _mm256_mul_ps(_mm256_loadu_ps(r + 40), b));
      a6 = _mm256_add_ps(a6, _mm256_mul_ps(_mm256_loadu_ps(r + 48), b));
      a7 = _mm256_add_ps(a7, _mm256_mul_ps(_mm256_loadu_ps(r + 56), b));
    }
    const float* mu = mean + j0;
    _mm256_storeu_ps(out + j0, _mm256_add_ps(_mm256_loadu_ps(mu), a0));
    _mm256_storeu_ps(out + j0 + 8, _mm256_add_ps(_mm256_loadu_ps(mu + 8), a1));
    _mm256_storeu_ps(out + j0 + 16, _mm256_add_ps(_mm256_loadu_ps(mu + 16), a2));
    _mm256_storeu_ps(out + j0 + 24, _mm256_add_ps(_mm256_loadu_ps(mu + 24), a3));
    _mm256_storeu_ps(out + j0 + 32, _mm256_add_ps(_mm256_loadu_ps(mu + 32), a4));
    _mm256_storeu_ps(out + j0 + 40, _mm256_add_ps(_mm256_loadu_ps(mu + 40), a5));
    _mm256_storeu_ps(out + j0 + 48, _mm256_add_ps(_mm256_loadu_ps(mu + 48), a6));
    _mm256_storeu_ps(out + j0 + 56, _mm256_add_ps(_mm256_loadu_ps(mu + 56), a7));
  }
  for (; j0 + 8 <= d; j0 += 8) {
    __m256 a0 = _mm256_setzero_ps();
    for (size_t c = 0; c < k; ++c) {
      a0 = _mm256_add_ps(a0,
                         _mm256_mul_ps(_mm256_loadu_ps(rows[c] + j0), _mm256_broadcast_ss(z + c)));
    }
    _mm256_storeu_ps(out + j0, _mm256_add_ps(_mm256_loadu_ps(mean + j0), a0));
  }
}

bool HaveAvx2() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return have;
}

// The number of thresholds (2^b - 1, ascending) strictly below u.
inline uint32_t QuantizeRef(const std::vector<float>& th, float u) {
  uint32_t v = 0;
  while (v < th.size() && u > th[v]) ++v;
  return v;
}

template <int B>
uint64_t PriceColumnB(const float* z, size_t zs, size_t n, const float* th, float sigma,
                      const float* g, size_t gs, uint16_t* dst, size_t ds, const uint32_t* cost,
                      const uint8_t* skip) {
  uint64_t c = 0;
  for (size_t t = 0; t < n; ++t) {
    if (skip && skip[t * gs]) continue;  // a repeat: no symbol
    const float scale = g ? sigma * g[t * gs] : sigma;
    const float u = scale > 0.0f ? z[t * zs] / scale : 0.0f;
    uint32_t v = 0;
#pragma GCC unroll 8
    for (int s = B - 1; s >= 0; --s) {
      const uint32_t step = 1u << s;
      v += th[v + step - 1] < u ? step : 0;
    }
    dst[t * ds] = static_cast<uint16_t>(v);
    c += cost[v];
  }
  return c;
}

// PriceColumnB for 8 tokens at a time (no gains, no repeats): the same divisions, comparisons
// and symbols, the binary search's threshold and cost lookups as gathers.
template <int B>
__attribute__((target("avx2"))) uint64_t PriceColumnAvx2(const float* z, size_t zs, size_t n,
                                                        const float* th, float sigma,
                                                        uint16_t* dst, size_t ds,
                                                        const uint32_t* cost) {
  const __m256i lanes = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32(static_cast<int>(zs)));
  const __m256 sg = _mm256_set1_ps(sigma);
  const __m256 zero = _mm256_setzero_ps();
  __m256i acc = _mm256_setzero_si256();  // 32-bit sums, flushed to c every 1024 groups
  uint64_t c = 0;
  size_t t = 0, since = 0;
  alignas(32) uint32_t v8[8];
  for (; t + 8 <= n; t += 8) {
    const __m256 zv = _mm256_i32gather_ps(z + t * zs, lanes, 4);
    // u = z / sigma where sigma > 0, else 0 (as the scalar path)
    const __m256 u = sigma > 0.0f ? _mm256_div_ps(zv, sg) : zero;
    __m256i v = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int s = B - 1; s >= 0; --s) {
      const __m256i step = _mm256_set1_epi32(1 << s);
      const __m256i at = _mm256_add_epi32(v, _mm256_set1_epi32((1 << s) - 1));
      const __m256 thv = _mm256_i32gather_ps(th, at, 4);
      const __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(thv, u, _CMP_LT_OQ));
      v = _mm256_add_epi32(v, _mm256_and_si256(lt, step));
    }
    acc = _mm256_add_epi32(acc, _mm256_i32gather_epi32(reinterpret_cast<const int*>(cost), v, 4));
    _mm256_store_si256(reinterpret_cast<__m256i*>(v8), v);
    for (int l = 0; l < 8; ++l) dst[(t + l) * ds] = static_cast<uint16_t>(v8[l]);
    if (++since == 1024) {  // a lane sums at most 1024 costs below 2^20: no overflow
      alignas(32) uint32_t a8[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(a8), acc);
      for (uint32_t a : a8) c += a;
      acc = _mm256_setzero_si256();
      since = 0;
    }
  }
  alignas(32) uint32_t a8[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(a8), acc);
  for (uint32_t a : a8) c += a;
  for (; t < n; ++t) {  // the tail, as PriceColumnB
    const float u = sigma > 0.0f ? z[t * zs] / sigma : 0.0f;
    uint32_t v = 0;
    for (int s = B - 1; s >= 0; --s) {
      const uint32_t step = 1u << s;
      v += th[v + step - 1] < u ? step : 0;
    }
    dst[t * ds] = static_cast<uint16_t>(v);
    c += cost[v];
  }
  return c;
}

// The symbols (QuantizeFast) of n coefficients z[t * zs] at b bits, scale sigma (times g[t * gs]
// when g is given), written to dst[t * ds]; returns their cost, less that of the rows where
// skip[t * gs] is set (repeats).
uint64_t PriceColumn(int b, const float* z, size_t zs, size_t n, const float* th, float sigma,
                     const float* g, size_t gs, uint16_t* dst, size_t ds, const uint32_t* cost,
                     const uint8_t* skip) {
  if (!g && !skip && HaveAvx2()) {
    switch (b) {
      case 1: return PriceColumnAvx2<1>(z, zs, n, th, sigma, dst, ds, cost);
      case 2: return PriceColumnAvx2<2>(z, zs, n, th, sigma, dst, ds, cost);
      case 3: return PriceColumnAvx2<3>(z, zs, n, th, sigma, dst, ds, cost);
      case 4: return PriceColumnAvx2<4>(z, zs, n, th, sigma, dst, ds, cost);
      case 5: return PriceColumnAvx2<5>(z, zs, n, th, sigma, dst, ds, cost);
      case 6: return PriceColumnAvx2<6>(z, zs, n, th, sigma, dst, ds, cost);
      case 7: return PriceColumnAvx2<7>(z, zs, n, th, sigma, dst, ds, cost);
      default: return PriceColumnAvx2<8>(z, zs, n, th, sigma, dst, ds, cost);
    }
  }
  switch (b) {
    case 1: return PriceColumnB<1>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 2: return PriceColumnB<2>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 3: return PriceColumnB<3>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 4: return PriceColumnB<4>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 5: return PriceColumnB<5>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 6: return PriceColumnB<6>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    case 7: return PriceColumnB<7>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
    default: return PriceColumnB<8>(z, zs, n, th, sigma, g, gs, dst, ds, cost, skip);
  }
}

inline size_t RoundUp8(size_t n) { return (n + 7) & ~size_t{7}; }

// Per-thread scratch, reused across chunks (a fresh multi-MiB buffer per chunk costs its page
// faults); dropped after a chunk that made it larger than kKeepBytes.
struct Scratch {
  static constexpr size_t kKeepBytes = size_t{64} << 20;
  std::vector<float> z;          // [H][nq][Kp_h] coefficients of the kept directions
  std::vector<uint16_t> idx;     // [H][nq][Kp_h] their symbols at the current allocation
  std::vector<uint16_t> column;  // [nq] a column priced at another width
  std::vector<uint8_t> section;
  void Trim() {
    if (z.capacity() * sizeof(float) > kKeepBytes) std::vector<float>().swap(z);
    if (idx.capacity() * sizeof(uint16_t) > kKeepBytes) std::vector<uint16_t>().swap(idx);
    if (section.capacity() > kKeepBytes) std::vector<uint8_t>().swap(section);
  }
};

// Bits of a reference to one of `u` earlier rows.
inline int RefBits(size_t u) {
  int b = 0;
  while ((size_t{1} << b) < u) ++b;
  return b;
}

// Frequencies of the cells that `th` (ascending thresholds) cut N(0, 1) into.
std::vector<uint16_t> GaussianFrequencies(const std::vector<float>& th) {
  auto phi = [](double x) {  // P(N(0, 1) <= x)
    return x >= 0 ? 1.0 - baseline::GaussianTail(x) : baseline::GaussianTail(-x);
  };
  std::vector<double> prob(th.size() + 1);
  double lo = 0.0;
  for (size_t c = 0; c < prob.size(); ++c) {
    const double hi = c < th.size() ? phi(th[c]) : 1.0;
    prob[c] = std::max(hi - lo, 0.0);
    lo = hi;
  }
  return rans::NormalizeFrequencies(prob);
}

// The rANS table of the Gaussian Lloyd-Max codebook at b bits (book=gauss, or a profile
// without calibrated codebooks): cell probabilities under N(0, 1), computed once.
const rans::Table& GaussianTable(int b) {
  static const std::vector<rans::Table> tables = [] {
    std::vector<rans::Table> t(kMaxCodedBits + 1);
    for (int bits = 1; bits <= kMaxCodedBits; ++bits) {
      rans::BuildTable(GaussianFrequencies(baseline::GaussianLloydMax(bits).thresholds), &t[bits],
                       /*slots=*/false);
    }
    return t;
  }();
  return tables[b];
}

}  // namespace

void FraqtlCodec::BuildRans(const Profile& profile) {
  const size_t H = kv_heads_, D = d_;
  // Tables: the profile's calibrated cell frequencies; without them, the cells' probabilities
  // under N(0, 1) (the coefficients are normalized to unit variance). Both are exact integers
  // on every machine (GaussianTail is deterministic).
  tables_.assign(size_t{layers_} * 2 * H * (kMaxCodedBits + 1), rans::Table{});
  for (uint32_t l = 0; l < layers_; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      const ProfileSlot slot = k == 1 ? ProfileSlot::kValue
                                      : (prerope_ ? ProfileSlot::kKeyPreRope : ProfileSlot::kKey);
      for (uint32_t h = 0; h < H; ++h) {
        const ProfileBasis& pb = profile.basis(l, slot, h);
        const bool calib = cfg_.calibrated_books && pb.has_codebooks();
        const Prepared& p = prep(l, static_cast<KvKind>(k), h);
        for (int b = 1; b <= kMaxCodedBits; ++b) {
          rans::Table& t = tables_[((size_t{l} * 2 + k) * H + h) * (kMaxCodedBits + 1) + b];
          if (!calib) {
            t = GaussianTable(b);
          } else if (!pb.rans_freq.empty()) {
            rans::BuildTable(std::span<const uint16_t>(pb.rans_freq)
                                 .subspan((size_t{1} << b) - 2, size_t{1} << b),
                             &t, /*slots=*/false);
          } else {
            rans::BuildTable(GaussianFrequencies(p.thresholds[b]), &t, /*slots=*/false);
          }
        }
      }
    }
  }
  slot_pool_.reset(new uint32_t[(tables_.size() + 1) * rans::kProbScale]);
  slot_once_.reset(new std::once_flag[tables_.size() + 1]);
  // Ladders: greedy on variance * (D(b) - D(b')) per unit of model cost (the table's entropy
  // per token), ties to the lower item; as AllocateBits with coded bits for integer bits.
  const int protect = cfg_.protect > 0 && cfg_.protect <= kMaxCodedBits ? cfg_.protect : 0;
  ladders_.assign(size_t{layers_} * 2, RansLadder{});
  for (uint32_t l = 0; l < layers_; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      const auto kind = static_cast<KvKind>(k);
      RansLadder& lad = ladders_[size_t{l} * 2 + k];
      const size_t n = H * D;
      std::vector<uint8_t> bits(n, 0);
      auto entropy = [&](uint32_t item, int b) -> uint64_t {
        if (b == 0) return 0;
        if (b == kProtectedBits) return kProtectedCost;
        return std::max<uint64_t>(Table(l, kind, item / d_, b).entropy, 1);
      };
      uint64_t cost = 0;
      lad.cum.push_back(0);
      auto take = [&](uint32_t item, uint8_t to) {
        const uint64_t before = entropy(item, bits[item]), after = entropy(item, to);
        cost += after > before ? after - before : 1;
        lad.steps.push_back({item, bits[item], to});
        lad.cum.push_back(cost);
        bits[item] = to;
      };
      if (cfg_.floor) {
        for (uint32_t item = 0; item < n; ++item) take(item, 1);
      }
      struct Cand {
        double gain;
        uint32_t item;
        uint8_t to;
      };
      auto less = [](const Cand& a, const Cand& b) {
        if (a.gain != b.gain) return a.gain < b.gain;
        return a.item > b.item;
      };
      std::priority_queue<Cand, std::vector<Cand>, decltype(less)> heap(less);
      auto next = [&](uint32_t item) {
        const int b = bits[item];
        if (b == kProtectedBits) return;
        const Prepared& p = prep(l, kind, item / d_);
        const uint32_t i = item % d_;
        const double var = p.variance[i];
        int to;
        double dd;
        if (protect != 0 && b >= protect) {
          to = kProtectedBits;
          dd = p.distortion[b] - kProtectedDistortion;
        } else if (b >= kMaxCodedBits) {
          return;
        } else {
          to = b + 1;
          dd = p.distortion[b] - p.distortion[b + 1];
        }
        const uint64_t e0 = entropy(item, b), e1 = entropy(item, to);
        const double dc = static_cast<double>(e1 > e0 ? e1 - e0 : 1);
        const double gain = var * dd / dc;
        if (gain > 0) heap.push({gain, item, static_cast<uint8_t>(to)});
      };
      for (uint32_t item = 0; item < n; ++item) next(item);
      while (!heap.empty()) {
        const Cand c = heap.top();
        heap.pop();
        take(c.item, c.to);
        next(c.item);
      }
    }
  }
}

uint32_t FraqtlCodec::EnsureSlots(uint32_t layer, KvKind kind, uint32_t h, int b) const {
  const size_t t = TableIndex(layer, kind, h, b);
  std::call_once(slot_once_[t], [&] {
    const rans::Table& src = t == tables_.size() ? rans::UniformByteTable() : tables_[t];
    rans::Table full;
    rans::BuildTable(src.freq, &full);
    std::copy(full.slots.begin(), full.slots.end(), slot_pool_.get() + t * rans::kProbScale);
  });
  return static_cast<uint32_t>(t * rans::kProbScale);
}

Status FraqtlCodec::EncodeRans(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                               CodecImpl impl) const {
  KVWIRE_RETURN_IF_ERROR(CheckDesc(desc));
  KVWIRE_RETURN_IF_ERROR(CheckFinite(desc, in, "fraqtl"));
  const ChunkPlan plan = Plan(desc);
  const size_t D = d_, H = kv_heads_, nq = plan.q_tokens.size(), nf = plan.fp_tokens.size();
  const RansLadder& lad = ladders_[size_t{desc.layer} * 2 + static_cast<uint32_t>(desc.kind)];
  const bool fast = impl != CodecImpl::kReference;
  const bool avx2 = fast && HaveAvx2();
  const size_t gains_at = kRansPayloadHeader + nf * H * D * 2;
  const size_t repeats_at = gains_at + (cfg_.gain ? nq * H * 2 : 0);
  const size_t block_tokens = RansBlockTokens(H * D);
  const size_t blocks = (nq + block_tokens - 1) / block_tokens;
  const bool rot = prerope_ && desc.kind == KvKind::kKey;
  const float* angles =
      rot ? PositionAngles(rope_, desc.positions_start + int64_t{desc.token_begin}, desc.tokens)
          : nullptr;
  auto angles_of = [&](uint32_t t) {
    return rot ? angles + size_t{t} * (rope_.rope_dim / 2) * 2 : nullptr;
  };

  // Rows of the quantized tokens, RoPE undone for pre-RoPE K: rows[(qi * H + h) * D].
  thread_local std::vector<float> rows;
  rows.resize(nq * H * D);
  for (size_t qi = 0; qi < nq; ++qi) {
    const uint32_t t = plan.q_tokens[qi];
    for (size_t h = 0; h < H; ++h) {
      LoadRow(desc, in, t, static_cast<uint32_t>(h), rows.data() + (qi * H + h) * D, angles_of(t));
    }
  }

  // Repeats: within a block, a (token, head) row with the key (RowKey) of an earlier row codes
  // as that row: the decoder copies its coefficients. A hash of the key's first values finds
  // candidates in an open-addressed table, the whole keys decide. repeat[qi * H + h] = 1 for a
  // repeat; ref = the unique row it copies (repeats) or its own number (unique rows), counted
  // within (block, head).
  std::vector<uint8_t> repeat(nq * H, 0);
  std::vector<uint32_t> ref(nq * H, 0);
  std::vector<uint8_t> repeat_bits;  // the repeat section (after its u32 length)
  size_t n_unique = nq * H;
  {
    const size_t rows_per_block = std::min(nq, block_tokens);
    size_t cap = 16;
    while (cap < 2 * rows_per_block) cap *= 2;
    std::vector<int64_t> slot(cap * H);        // table per head: a row (qi) + 1, 0 = empty
    std::vector<uint32_t> count(H);
    std::vector<int32_t> scale_exp(nq * H);    // RowKey's exponent per row
    auto exponent = [&](const float* r) {
      float m = 0.0f;
      for (size_t j = 0; j < D; ++j) m = std::max(m, std::fabs(r[j]));
      int e = 0;
      std::frexp(m, &e);
      return m > 0.0f ? e : INT32_MIN;
    };
    auto scale_of = [](int e) { return e == INT32_MIN ? 0.0f : std::ldexp(1.0f, 14 - e); };
    // v * sc rounded to the nearest integer (sc a power of two; |v * sc| <= 2^14)
    auto grid = [](float v, float sc) { return _mm_cvtss_si32(_mm_set_ss(v * sc)); };
    constexpr size_t kHashed = 8;  // values that pick a row's slot
    for (size_t blk = 0; blk < blocks; ++blk) {
      const size_t t0 = blk * block_tokens, t1 = std::min(nq, t0 + block_tokens);
      std::fill(slot.begin(), slot.end(), 0);
      std::fill(count.begin(), count.end(), 0);
      for (size_t qi = t0; qi < t1; ++qi) {
        for (size_t h = 0; h < H; ++h) {
          const size_t row = qi * H + h;
          const float* x = rows.data() + row * D;
          const int e = exponent(x);
          const float sc = scale_of(e);
          scale_exp[row] = e;
          uint64_t hk = 0x9e3779b97f4a7c15ull ^ static_cast<uint32_t>(e);
          for (size_t j = 0; j < std::min(D, kHashed); ++j) {
            hk = (hk ^ static_cast<uint64_t>(grid(x[j], sc))) * 0x100000001b3ull;
            hk ^= hk >> 29;
          }
          int64_t* table = slot.data() + h * cap;
          size_t at = static_cast<size_t>(hk) & (cap - 1);
          bool found = false;
          for (; table[at] != 0; at = (at + 1) & (cap - 1)) {
            const size_t other = static_cast<size_t>(table[at] - 1) * H + h;
            if (scale_exp[other] != e) continue;
            const float* y = rows.data() + other * D;
            size_t j = 0;
            while (j < D && grid(x[j], sc) == grid(y[j], sc)) ++j;
            if (j == D) {
              repeat[row] = 1;
              ref[row] = ref[other];
              found = true;
              break;
            }
          }
          if (!found) {
            table[at] = static_cast<int64_t>(qi) + 1;
            ref[row] = count[h]++;
          }
        }
      }
    }
    n_unique = 0;
    for (uint8_t r : repeat) n_unique += r == 0;
    // Section: per block, per token, per head: 1 = repeat, then the unique row it copies,
    // numbered within (block, head) from 0, in RefBits(unique rows so far) bits.
    if (n_unique < nq * H) {
      BitWriter w(&repeat_bits);
      std::vector<size_t> u(H);
      for (size_t qi = 0; qi < nq; ++qi) {
        if (qi % block_tokens == 0) std::fill(u.begin(), u.end(), 0);
        for (size_t h = 0; h < H; ++h) {
          w.Put(repeat[qi * H + h], 1);
          if (repeat[qi * H + h]) {
            w.Put(ref[qi * H + h], RefBits(u[h]));
          } else {
            ++u[h];
          }
        }
      }
      w.Finish();
    }
  }
  // The section pays when the rows it spares would have cost more than it does: each row of
  // the chunk would get an equal share of what the budget leaves for symbols.
  const double sym_bytes = TargetPayloadBytes(desc) - static_cast<double>(repeats_at) -
                           static_cast<double>(blocks) * (4 + rans::kBlockStateBytes - 8);
  const bool has_repeats =
      n_unique < nq * H && sym_bytes > 0 &&
      sym_bytes * static_cast<double>(nq * H - n_unique) / static_cast<double>(nq * H) >
          static_cast<double>(4 + repeat_bits.size());
  if (!has_repeats) {
    std::fill(repeat.begin(), repeat.end(), 0);
    n_unique = nq * H;
  }
  const size_t fixed = repeats_at + (has_repeats ? 4 + repeat_bits.size() : 0);
  // Budget of the symbols, in cost units: what the payload may hold beyond its fixed part and
  // the blocks' lengths and states. A block's words carry about 8 bits per lane less than its
  // symbols cost (what the final states hold beyond their initial 16 bits), hence 24 bytes.
  const double avail = TargetPayloadBytes(desc) - static_cast<double>(fixed) -
                       static_cast<double>(blocks) * (4 + rans::kBlockStateBytes - 8);
  const double budget =
      nq > 0 && avail > 0 ? avail * 8.0 * rans::kCostOne : 0.0;  // whole chunk
  // The model's guess of the steps that fit (cost per token x tokens), and a margin beyond it
  // for a chunk that codes cheaper than the model: directions of those steps are rotated too.
  auto model_steps = [&](double b) -> size_t {
    if (n_unique == 0) return 0;
    const double per_token = b * static_cast<double>(H) / static_cast<double>(n_unique);
    return static_cast<size_t>(std::upper_bound(lad.cum.begin(), lad.cum.end(), per_token,
                                                [](double v, uint64_t c) {
                                                  return v < static_cast<double>(c);
                                                }) -
                               lad.cum.begin()) -
           1;
  };
  size_t n_steps = model_steps(budget);
  const size_t n_reach = cfg_.gain ? lad.steps.size()
                                   : std::min(lad.steps.size(), model_steps(budget * 1.1) + 8);

  // Kept directions per head: those with bits within reach, ascending.
  std::vector<uint8_t> bits(H * D, 0), reach(H * D, 0);
  for (size_t s = 0; s < n_steps; ++s) bits[lad.steps[s].item] = lad.steps[s].to;
  for (size_t s = 0; s < n_reach; ++s) reach[lad.steps[s].item] = 1;
  std::vector<std::vector<uint32_t>> kept(H);
  std::vector<int32_t> col(H * D, -1);
  std::vector<size_t> width(H), base(H);
  size_t total_cols = 0;
  for (size_t h = 0; h < H; ++h) {
    for (uint32_t i = 0; i < D; ++i) {
      if (reach[h * D + i] || cfg_.gain) {
        col[h * D + i] = static_cast<int32_t>(kept[h].size());
        kept[h].push_back(i);
      }
    }
    width[h] = RoundUp8(kept[h].size());
    base[h] = total_cols * nq;
    total_cols += width[h];
  }

  // Coefficients of the kept directions: z[base[h] + qi * width[h] + c].
  thread_local Scratch scratch;
  std::vector<float>& z = scratch.z;
  z.resize(total_cols * nq);  // every row that is read is written first (repeats are not read)
  std::vector<float> gains(cfg_.gain ? nq * H : 0);
  {
    std::vector<std::vector<float>> ft(H);  // [D][width]: the kept rows of F, transposed
    for (size_t h = 0; h < H; ++h) {
      const Prepared& p = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
      ft[h].assign(D * width[h], 0.0f);
      for (size_t c = 0; c < kept[h].size(); ++c) {
        for (size_t j = 0; j < D; ++j) ft[h][j * width[h] + c] = p.fwd[kept[h][c] * D + j];
      }
    }
    std::vector<float> xc(D), full(D);
    for (size_t qi = 0; qi < nq; ++qi) {
      for (size_t h = 0; h < H; ++h) {
        if (repeat[qi * H + h]) {
          if (cfg_.gain) gains[qi * H + h] = 1.0f;
          continue;
        }
        const Prepared& p = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
        const float* row = rows.data() + (qi * H + h) * D;
        float* zr = z.data() + base[h] + qi * width[h];
        if (!fast) {
          Transform(p, row, full.data(), xc.data(), impl);
          for (size_t c = 0; c < kept[h].size(); ++c) zr[c] = full[kept[h][c]];
        } else {
          for (size_t j = 0; j < D; ++j) xc[j] = row[j] - p.mean[j];
          (avx2 ? ProjectAvx2 : ProjectScalar)(ft[h].data(), xc.data(), D, width[h], zr);
        }
        if (cfg_.gain) {  // kept = every direction, in order
          double ss = 0;
          for (size_t i = 0; i < D; ++i) {
            if (p.variance[i] > 0) ss += static_cast<double>(zr[i]) * zr[i] / p.variance[i];
          }
          const float g = HalfToFloat(HalfSaturate(static_cast<float>(std::sqrt(ss / D))));
          gains[qi * H + h] = g > 0.0f ? g : 1.0f;
        }
      }
    }
  }

  // Prices a column (item at b bits) over quantized tokens [t0, t1): writes its symbols to
  // dst[qi * stride] and returns their cost.
  auto price = [&](uint32_t item, int b, size_t t0, size_t t1, uint16_t* dst,
                   size_t stride) -> uint64_t {
    if (b == 0) return 0;
    const size_t h = item / D;
    const uint32_t i = item % D;
    const float* zc = z.data() + base[h] + static_cast<size_t>(col[item]);
    const float* g = cfg_.gain ? gains.data() + h : nullptr;
    const uint8_t* skip = has_repeats ? repeat.data() + h : nullptr;
    if (b == kProtectedBits) {
      uint64_t rows = 0;
      for (size_t qi = t0; qi < t1; ++qi) {
        if (skip && skip[qi * H]) continue;
        dst[qi * stride] = HalfSaturate(zc[qi * width[h]]);
        ++rows;
      }
      return kProtectedCost * rows;
    }
    const Prepared& p = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
    const uint32_t* cost = Table(desc.layer, desc.kind, static_cast<uint32_t>(h), b).cost.data();
    if (!fast) {
      uint64_t c = 0;
      for (size_t qi = t0; qi < t1; ++qi) {
        if (skip && skip[qi * H]) continue;
        const float scale = p.sigma[i] * (g ? g[qi * H] : 1.0f);
        const float u = scale > 0.0f ? zc[qi * width[h]] / scale : 0.0f;
        const uint32_t v = QuantizeRef(p.thresholds[b], u);
        dst[qi * stride] = static_cast<uint16_t>(v);
        c += cost[v];
      }
      return c;
    }
    return PriceColumn(b, zc + t0 * width[h], width[h], t1 - t0, p.thresholds[b].data(),
                       p.sigma[i], g ? g + t0 * H : nullptr, H, dst + t0 * stride, stride, cost,
                       skip ? skip + t0 * H : nullptr);
  };
  auto cost_of = [&](size_t h, int b, uint32_t v) -> uint64_t {
    if (b == kProtectedBits) return kProtectedCost;
    return Table(desc.layer, desc.kind, static_cast<uint32_t>(h), b).cost[v];
  };

  // Symbols and exact cost of the model's guess, a run of tokens at a time (the rows stay in
  // cache while every column reads them).
  std::vector<uint16_t>& idx = scratch.idx;
  idx.resize(total_cols * nq);
  std::vector<uint64_t> col_cost(H * D, 0);
  uint64_t total = 0;
  constexpr size_t kRun = 64;
  for (size_t t0 = 0; t0 < nq; t0 += kRun) {
    const size_t t1 = std::min(nq, t0 + kRun);
    for (size_t h = 0; h < H; ++h) {
      for (size_t c = 0; c < kept[h].size(); ++c) {
        const uint32_t item = static_cast<uint32_t>(h * D + kept[h][c]);
        if (bits[item] == 0) continue;
        col_cost[item] += price(item, bits[item], t0, t1, idx.data() + base[h] + c, width[h]);
      }
    }
  }
  for (uint64_t c : col_cost) total += c;
  auto column_ptr = [&](uint32_t item) {
    const size_t h = item / D;
    return idx.data() + base[h] + static_cast<size_t>(col[item]);
  };
  std::vector<uint16_t>& tmp = scratch.column;
  tmp.resize(nq);
  // Down while over budget, then up while the next step fits.
  while (n_steps > 0 && static_cast<double>(total) > budget) {
    const RansStep& s = lad.steps[--n_steps];
    const size_t h = s.item / D;
    total -= col_cost[s.item];
    col_cost[s.item] = price(s.item, s.from, 0, nq, column_ptr(s.item), width[h]);
    total += col_cost[s.item];
    bits[s.item] = s.from;
  }
  size_t extra = 0;
  for (; n_steps < lad.steps.size(); ++n_steps) {
    const RansStep& s = lad.steps[n_steps];
    if (col[s.item] < 0) break;  // beyond what was rotated: stop here
    const uint64_t c = price(s.item, s.to, 0, nq, tmp.data(), 1);
    const uint64_t next = total - col_cost[s.item] + c;
    if (static_cast<double>(next) <= budget) {
      const size_t h = s.item / D;
      uint16_t* dst = column_ptr(s.item);
      for (size_t qi = 0; qi < nq; ++qi) dst[qi * width[h]] = tmp[qi];
      total = next;
      col_cost[s.item] = c;
      bits[s.item] = s.to;
      continue;
    }
    // The step does not fit whole: the first `extra` tokens take it.
    const size_t h = s.item / D;
    const uint16_t* cur = column_ptr(s.item);
    double left = budget - static_cast<double>(total);
    for (size_t qi = 0; qi < nq; ++qi) {
      if (repeat[qi * H + h]) {
        extra = qi + 1;
        continue;
      }
      const double delta = static_cast<double>(cost_of(h, s.to, tmp[qi])) -
                           (s.from ? static_cast<double>(cost_of(h, s.from, cur[qi * width[h]]))
                                   : 0.0);
      if (delta > left) break;
      left -= delta;
      extra = qi + 1;
    }
    break;
  }
  const bool partial = extra > 0;
  const RansStep part = partial ? lad.steps[n_steps] : RansStep{0, 0, 0};

  // Code: per block of tokens, symbols in reverse decoding order. Per head, the coded columns
  // of a token without (lo) and with (hi) the partial step; column -1 reads the partial
  // step's symbols.
  struct Coded {
    int32_t c;
    int b;
    const rans::Table* table;
  };
  std::vector<std::vector<Coded>> lo(H), hi(H);
  std::vector<uint32_t> lo_count(H, 0), hi_count(H, 0);  // symbols per (token, head)
  for (size_t h = 0; h < H; ++h) {
    for (size_t c = 0; c < kept[h].size(); ++c) {
      const uint32_t item = static_cast<uint32_t>(h * D + kept[h][c]);
      const uint32_t hh = static_cast<uint32_t>(h);
      if (bits[item]) {
        lo[h].push_back({static_cast<int32_t>(c), bits[item],
                         &Table(desc.layer, desc.kind, hh, bits[item])});
        lo_count[h] += bits[item] == kProtectedBits ? 2 : 1;
      }
      if (partial && item == part.item) {
        hi[h].push_back({-1, part.to, &Table(desc.layer, desc.kind, hh, part.to)});
        hi_count[h] += part.to == kProtectedBits ? 2 : 1;
      } else if (bits[item]) {
        hi[h].push_back(lo[h].back());
        hi_count[h] += bits[item] == kProtectedBits ? 2 : 1;
      }
    }
  }
  std::vector<uint8_t>& section = scratch.section;
  section.clear();
  bool codes = partial;
  for (size_t h = 0; h < H; ++h) codes = codes || lo_count[h] > 0;
  if (codes) {
    section.resize(4 * blocks);
    thread_local rans::BlockEncoder enc;
    for (size_t blk = 0; blk < blocks; ++blk) {
      const size_t t0 = blk * block_tokens, t1 = std::min(nq, t0 + block_tokens);
      uint32_t k = 0;
      for (size_t qi = t0; qi < t1; ++qi) {
        for (size_t h = 0; h < H; ++h) {
          if (!repeat[qi * H + h]) k += partial && qi < extra ? hi_count[h] : lo_count[h];
        }
      }
      enc.Reserve(k);
      for (size_t qi = t1; qi-- > t0;) {
        const bool use_hi = partial && qi < extra;
        for (size_t h = H; h-- > 0;) {
          if (repeat[qi * H + h]) continue;
          const std::vector<Coded>& list = use_hi ? hi[h] : lo[h];
          const uint16_t* row = idx.data() + base[h] + qi * width[h];
          for (size_t e = list.size(); e-- > 0;) {
            const Coded& cd = list[e];
            const uint32_t v = cd.c < 0 ? tmp[qi] : row[cd.c];
            if (cd.b == kProtectedBits) {
              enc.Put(--k, v >> 8, *cd.table);
              enc.Put(--k, v & 0xffu, *cd.table);
            } else {
              enc.Put(--k, v, *cd.table);
            }
          }
        }
      }
      StoreU32(section.data() + 4 * blk, static_cast<uint32_t>(enc.Bytes()));
      enc.Finish(&section);
    }
  }

  const size_t start = out->size();
  out->resize(start + fixed + section.size());
  uint8_t* o = out->data() + start;
  o[0] = kPayloadVersionRans;
  o[1] = has_repeats ? kFlagRepeats : 0;
  StoreU16(o + 2, 0);
  StoreU32(o + 4, static_cast<uint32_t>(n_steps));
  StoreU32(o + 8, static_cast<uint32_t>(extra));
  StoreU32(o + 12, static_cast<uint32_t>(section.size()));
  uint8_t* fp = o + kRansPayloadHeader;
  for (size_t k = 0; k < nf; ++k) {
    const float* r = in + size_t{plan.fp_tokens[k]} * H * D;
    fast ? baseline::StoreHalves(r, H * D, fp + k * H * D * 2)
         : baseline::StoreHalvesRef(r, H * D, fp + k * H * D * 2);
  }
  for (size_t i = 0; i < gains.size(); ++i) StoreU16(o + gains_at + 2 * i, FloatToHalf(gains[i]));
  if (has_repeats) {
    StoreU32(o + repeats_at, static_cast<uint32_t>(repeat_bits.size()));
    std::memcpy(o + repeats_at + 4, repeat_bits.data(), repeat_bits.size());
  }
  if (!section.empty()) std::memcpy(o + fixed, section.data(), section.size());
  scratch.Trim();
  if (rows.capacity() * sizeof(float) > Scratch::kKeepBytes) std::vector<float>().swap(rows);
  return Status::Ok();
}

Status FraqtlCodec::DecodeRans(const ChunkDesc& desc, std::span<const uint8_t> payload,
                               float* out, CodecImpl impl) const {
  KVWIRE_RETURN_IF_ERROR(CheckDesc(desc).WithContext("decode"));
  const ChunkPlan plan = Plan(desc);
  const size_t D = d_, H = kv_heads_, nq = plan.q_tokens.size(), nf = plan.fp_tokens.size();
  const RansLadder& lad = ladders_[size_t{desc.layer} * 2 + static_cast<uint32_t>(desc.kind)];
  const bool fast = impl != CodecImpl::kReference;
  const bool avx2 = fast && HaveAvx2() && D % 8 == 0;
  const size_t gains_at = kRansPayloadHeader + nf * H * D * 2;
  const size_t repeats_at = gains_at + (cfg_.gain ? nq * H * 2 : 0);
  KVWIRE_RETURN_ERROR_IF(payload.size() < repeats_at, kCorrupt,
                         "fraqtl: payload of " + std::to_string(payload.size()) +
                             " bytes, shorter than its fixed part (" +
                             std::to_string(repeats_at) + ")");
  const uint8_t* p = payload.data();
  KVWIRE_RETURN_ERROR_IF(p[0] != kPayloadVersionRans, kCorrupt,
                         "fraqtl: payload version " + std::to_string(p[0]) +
                             ", expected 2 (entropy=rans)");
  KVWIRE_RETURN_ERROR_IF((p[1] & ~kFlagRepeats) != 0 || LoadU16(p + 2) != 0, kCorrupt,
                         "fraqtl: unknown payload flags");
  const bool has_repeats = (p[1] & kFlagRepeats) != 0;
  KVWIRE_RETURN_ERROR_IF(has_repeats && payload.size() < repeats_at + 4, kCorrupt,
                         "fraqtl: payload too short for its repeat section");
  const uint64_t repeat_bytes = has_repeats ? LoadU32(p + repeats_at) : 0;
  const uint64_t fixed = repeats_at + (has_repeats ? 4 + repeat_bytes : 0);
  KVWIRE_RETURN_ERROR_IF(fixed > payload.size(), kCorrupt,
                         "fraqtl: repeat section beyond the payload");
  const uint64_t n_steps = LoadU32(p + 4), extra = LoadU32(p + 8), section_bytes = LoadU32(p + 12);
  KVWIRE_RETURN_ERROR_IF(n_steps > lad.steps.size(), kCorrupt,
                         "fraqtl: " + std::to_string(n_steps) + " allocation steps, the ladder has " +
                             std::to_string(lad.steps.size()));
  KVWIRE_RETURN_ERROR_IF(extra > nq || (extra > 0 && n_steps == lad.steps.size()), kCorrupt,
                         "fraqtl: " + std::to_string(extra) +
                             " tokens of a partial step is impossible here");
  KVWIRE_RETURN_ERROR_IF(fixed + section_bytes != payload.size(), kCorrupt,
                         "fraqtl: payload of " + std::to_string(payload.size()) +
                             " bytes, its fields announce " + std::to_string(fixed + section_bytes));
  const uint8_t* fp = p + kRansPayloadHeader;
  KVWIRE_RETURN_ERROR_IF(!baseline::HalvesFinite(fp, nf * H * D), kCorrupt,
                         "fraqtl: a pass-through value is not finite");
  if (cfg_.gain) {
    KVWIRE_RETURN_ERROR_IF(!baseline::HalvesAreScales(p + gains_at, nq * H), kCorrupt,
                           "fraqtl: a gain is negative or not finite");
  }
  std::vector<uint8_t> bits(H * D, 0);
  for (size_t s = 0; s < n_steps; ++s) bits[lad.steps[s].item] = lad.steps[s].to;
  const bool partial = extra > 0;
  const RansStep part = partial ? lad.steps[n_steps] : RansStep{0, 0, 0};
  bool any = partial;
  for (uint8_t b : bits) any = any || b != 0;
  const size_t block_tokens = RansBlockTokens(H * D);
  const size_t blocks = (nq + block_tokens - 1) / block_tokens;
  std::span<const uint8_t> section = payload.subspan(fixed);
  if (!any) {
    KVWIRE_RETURN_ERROR_IF(!section.empty(), kCorrupt,
                           "fraqtl: index section present where the allocation codes nothing");
  } else {
    KVWIRE_RETURN_ERROR_IF(section.size() < 4 * blocks, kCorrupt,
                           "fraqtl: index section shorter than its block table");
    uint64_t sum = 4 * blocks;
    for (size_t b = 0; b < blocks; ++b) {
      const uint32_t len = LoadU32(section.data() + 4 * b);
      KVWIRE_RETURN_ERROR_IF(len < rans::kBlockStateBytes || (len - rans::kBlockStateBytes) % 2,
                             kCorrupt, "fraqtl: rANS block of impossible length");
      sum += len;
    }
    KVWIRE_RETURN_ERROR_IF(sum != section.size(), kCorrupt,
                           "fraqtl: rANS block lengths do not add up to the index section");
  }
  for (size_t k = 0; k < nf; ++k) {
    float* r = out + size_t{plan.fp_tokens[k]} * H * D;
    fast ? baseline::LoadHalves(fp + k * H * D * 2, H * D, r)
         : baseline::LoadHalvesRef(fp + k * H * D * 2, H * D, r);
  }
  if (nq == 0) return Status::Ok();
  const size_t block_rows = std::min(nq, block_tokens);

  // Repeats: which (token, head) rows copy which unique row of their (block, head).
  std::vector<uint8_t> repeat(nq * H, 0);
  std::vector<uint32_t> ref(nq * H, 0);
  if (has_repeats) {
    BitReader r(payload.subspan(repeats_at + 4, repeat_bytes));
    std::vector<size_t> u(H);
    uint64_t used = 0;
    for (size_t qi = 0; qi < nq; ++qi) {
      if (qi % block_tokens == 0) std::fill(u.begin(), u.end(), 0);
      for (size_t h = 0; h < H; ++h) {
        KVWIRE_RETURN_ERROR_IF(used + 1 > 8 * repeat_bytes, kCorrupt,
                               "fraqtl: repeat section too short");
        repeat[qi * H + h] = static_cast<uint8_t>(r.Get(1));
        ++used;
        if (repeat[qi * H + h]) {
          const int w = RefBits(u[h]);
          KVWIRE_RETURN_ERROR_IF(u[h] == 0 || used + w > 8 * repeat_bytes, kCorrupt,
                                 "fraqtl: a repeat without an earlier row in its block");
          ref[qi * H + h] = w ? r.Get(w) : 0;
          used += w;
          KVWIRE_RETURN_ERROR_IF(ref[qi * H + h] >= u[h], kCorrupt,
                                 "fraqtl: a repeat of a row that does not exist");
        } else {
          ref[qi * H + h] = static_cast<uint32_t>(u[h]++);
        }
      }
    }
    KVWIRE_RETURN_ERROR_IF((used + 7) / 8 != repeat_bytes, kCorrupt,
                           "fraqtl: repeat section of the wrong length");
    KVWIRE_RETURN_ERROR_IF(used % 8 && (payload[repeats_at + 4 + used / 8] >> (used % 8)) != 0,
                           kCorrupt, "fraqtl: padding bits of the repeat section are not zero");
  }

  // Per head, the coded directions (ascending) of a token without (lo) and with (hi) the
  // partial step; per token, the slot-table offsets of its symbols in decoding order.
  struct Coded {
    uint32_t i;
    int b;
    const float* levels;  // the codebook, times sigma_i unless gains scale it per token
  };
  std::vector<std::vector<Coded>> lo(H), hi(H);
  std::vector<std::vector<uint32_t>> pat_lo(H), pat_hi(H);
  std::vector<float> scaled;  // levels * sigma of every coded (direction, bits)
  scaled.reserve(2 * H * D * 8);
  auto add = [&](std::vector<Coded>* list, std::vector<uint32_t>* pat, uint32_t h, uint32_t i,
                 int b) {
    const uint32_t off = EnsureSlots(desc.layer, desc.kind, h, b);
    pat->push_back(off);
    if (b == kProtectedBits) pat->push_back(off);
    list->push_back({i, b, nullptr});
  };
  for (uint32_t h = 0; h < H; ++h) {
    for (uint32_t i = 0; i < D; ++i) {
      const uint32_t item = static_cast<uint32_t>(h * D + i);
      if (bits[item]) add(&lo[h], &pat_lo[h], h, i, bits[item]);
      const int bh = partial && item == part.item ? part.to : bits[item];
      if (bh) add(&hi[h], &pat_hi[h], h, i, bh);
    }
  }
  // Scaled codebooks, after the lists stopped growing (pointers into `scaled`).
  size_t n_scaled = 0;
  for (auto* lists : {&lo, &hi}) {
    for (const auto& list : *lists) {
      for (const Coded& c : list) n_scaled += c.b == kProtectedBits ? 0 : size_t{1} << c.b;
    }
  }
  scaled.resize(n_scaled);
  n_scaled = 0;
  for (auto* lists : {&lo, &hi}) {
    for (size_t h = 0; h < H; ++h) {
      const Prepared& pr = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
      for (Coded& c : (*lists)[h]) {
        if (c.b == kProtectedBits) continue;
        const std::vector<float>& lv = pr.levels[c.b];
        float* dst = scaled.data() + n_scaled;
        if (cfg_.gain) {
          std::copy(lv.begin(), lv.end(), dst);
        } else {
          const float sigma = pr.sigma[c.i];
          for (size_t v = 0; v < lv.size(); ++v) dst[v] = lv[v] * (sigma * 1.0f);
        }
        c.levels = dst;
        n_scaled += lv.size();
      }
    }
  }
  const bool rot = prerope_ && desc.kind == KvKind::kKey;
  const float* angles =
      rot ? PositionAngles(rope_, desc.positions_start + int64_t{desc.token_begin}, desc.tokens)
          : nullptr;
  std::vector<float> zc(D), dense(D);
  std::vector<const float*> rows(D);
  // Coefficients of each block's unique rows, per stream of DecodeSideBySide: a repeat copies
  // them (and the list of directions they were coded with).
  constexpr int kStreams = rans::BlockDecoder::kMaxStreams;
  std::vector<float> uvals[kStreams];
  std::vector<const std::vector<Coded>*> ulist[kStreams];
  if (has_repeats) {
    for (int s = 0; s < kStreams; ++s) {
      uvals[s].resize(block_rows * H * D);
      ulist[s].resize(block_rows * H);
    }
  }
  // Rows of quantized tokens [r0, r1) from their symbols (stream s).
  auto rebuild = [&](int s, size_t r0, size_t r1, bool use_hi, const uint32_t* sp) -> Status {
    for (size_t qi = r0; qi < r1; ++qi) {
      const uint32_t t = plan.q_tokens[qi];
      const float* cs = rot ? angles + size_t{t} * (rope_.rope_dim / 2) * 2 : nullptr;
      for (size_t h = 0; h < H; ++h) {
        const Prepared& pr = prep(desc.layer, desc.kind, static_cast<uint32_t>(h));
        float g = 1.0f;
        if (cfg_.gain) {
          g = baseline::LoadHalf(p + gains_at, qi * H + h);
          g = g > 0.0f ? g : 1.0f;
        }
        const size_t row = qi * H + h;
        float* o = out + (size_t{t} * H + h) * D;
        if (repeat[row]) {  // the unique row's coefficients, this token's position
          const size_t at = size_t{ref[row]} * H + h;
          const std::vector<Coded>& list = *ulist[s][at];
          const float* zr = uvals[s].data() + at * D;
          const size_t m = list.size();
          for (size_t c = 0; c < m; ++c) rows[c] = pr.inv_t.data() + size_t{list[c].i} * D;
          if (!fast) {
            std::fill(dense.begin(), dense.end(), 0.0f);
            for (size_t c = 0; c < m; ++c) dense[list[c].i] = zr[c];
            Inverse(pr, dense.data(), o, impl);
          } else {
            (avx2 ? AccumulateAvx2 : AccumulateScalar)(rows.data(), zr, m, pr.mean.data(), D, o);
          }
          if (rot) rope_.Rotate(o, cs, cs + rope_.rope_dim / 2, /*undo=*/false);
          continue;
        }
        const std::vector<Coded>& list = use_hi ? hi[h] : lo[h];
        const size_t m = list.size();
        for (size_t c = 0; c < m; ++c) {
          const Coded& cd = list[c];
          float q;
          if (cd.b == kProtectedBits) {
            const uint16_t hv = static_cast<uint16_t>(sp[0] | sp[1] << 8);
            sp += 2;
            KVWIRE_RETURN_ERROR_IF(!baseline::HalfIsFinite(hv), kCorrupt,
                                   "fraqtl: a protected coefficient is not finite");
            q = HalfToFloat(hv);
          } else {
            q = cfg_.gain ? cd.levels[*sp] * (pr.sigma[cd.i] * g) : cd.levels[*sp];
            ++sp;
          }
          zc[c] = q;
          rows[c] = pr.inv_t.data() + size_t{cd.i} * D;
        }
        if (has_repeats) {
          const size_t at = size_t{ref[row]} * H + h;
          std::copy(zc.begin(), zc.begin() + static_cast<long>(m), uvals[s].data() + at * D);
          ulist[s][at] = &list;
        }
        if (!fast) {
          std::fill(dense.begin(), dense.end(), 0.0f);
          for (size_t c = 0; c < m; ++c) dense[list[c].i] = zc[c];
          Inverse(pr, dense.data(), o, impl);
        } else {
          (avx2 ? AccumulateAvx2 : AccumulateScalar)(rows.data(), zc.data(), m, pr.mean.data(),
                                                     D, o);
        }
        if (rot) rope_.Rotate(o, cs, cs + rope_.rope_dim / 2, /*undo=*/false);
      }
    }
    return Status::Ok();
  };
  // Up to kMaxStreams blocks at a time, a run of each block's tokens at a time: the runs'
  // symbols first (side by side), then their rows.
  constexpr size_t kRun = 32;
  size_t per_token = 0;
  for (size_t h = 0; h < H; ++h) per_token += std::max(pat_lo[h].size(), pat_hi[h].size());
  const size_t run_symbols = kRun * per_token;
  std::vector<uint32_t> offs(kStreams * run_symbols), syms(kStreams * run_symbols);
  size_t at = 4 * blocks;
  for (size_t b0 = 0; b0 < blocks; b0 += kStreams) {
    const int streams = static_cast<int>(std::min<size_t>(kStreams, blocks - b0));
    std::optional<rans::BlockDecoder> decs[kStreams];
    size_t cur[kStreams], end[kStreams];
    for (int s = 0; s < streams; ++s) {
      cur[s] = (b0 + s) * block_tokens;
      end[s] = std::min(nq, cur[s] + block_tokens);
      if (any) {
        const uint32_t len = LoadU32(section.data() + 4 * (b0 + s));
        decs[s].emplace(section.subspan(at, len));
        at += len;
      }
    }
    for (;;) {
      rans::BlockDecoder* dp[kStreams];
      const uint32_t* op[kStreams];
      uint32_t* sp[kStreams];
      size_t n[kStreams], r0[kStreams], r1[kStreams];
      int stream[kStreams];
      bool use_hi[kStreams];
      int active = 0;
      for (int s = 0; s < streams; ++s) {
        if (cur[s] >= end[s]) continue;
        const int a = active++;
        use_hi[a] = partial && cur[s] < extra;
        r0[a] = cur[s];
        r1[a] = std::min({end[s], cur[s] + kRun, use_hi[a] ? size_t{extra} : end[s]});
        const std::vector<std::vector<uint32_t>>& pat = use_hi[a] ? pat_hi : pat_lo;
        uint32_t* o = offs.data() + a * run_symbols;
        size_t m = 0;
        for (size_t qi = r0[a]; qi < r1[a]; ++qi) {
          for (size_t h = 0; h < H; ++h) {
            if (repeat[qi * H + h]) continue;
            std::copy(pat[h].begin(), pat[h].end(), o + m);
            m += pat[h].size();
          }
        }
        n[a] = m;
        stream[a] = s;
        op[a] = o;
        sp[a] = syms.data() + a * run_symbols;
        dp[a] = any ? &*decs[s] : nullptr;
        cur[s] = r1[a];
      }
      if (active == 0) break;
      if (any) rans::BlockDecoder::DecodeSideBySide(dp, active, slot_pool_.get(), op, n, sp);
      for (int a = 0; a < active; ++a) {
        KVWIRE_RETURN_IF_ERROR(rebuild(stream[a], r0[a], r1[a], use_hi[a], sp[a]));
      }
    }
    for (int s = 0; s < streams; ++s) {
      KVWIRE_RETURN_ERROR_IF(
          decs[s] && !decs[s]->Ok(), kCorrupt,
          "fraqtl: rANS block " + std::to_string(b0 + s) + " does not decode cleanly");
    }
  }
  return Status::Ok();
}

}  // namespace kvwire::fraqtl::internal
