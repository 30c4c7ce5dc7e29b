// Static rANS tables and block framing (rans.h).
#include "codec/rans.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstddef>

#include "codec/simd_gather.h"

namespace kvwire::rans {

namespace {

uint32_t ComputeSymbolCost(uint32_t f) {
  // log2(f) in 1/65536 bit: the integer part from the bit length, the fraction bit by bit by
  // squaring the mantissa m = f / 2^e in [1, 2), held as a Q62 fixed-point number.
  const int e = 31 - __builtin_clz(f);
  uint64_t m = uint64_t{f} << (62 - e);
  uint32_t frac = 0;
  for (int i = 0; i < 16; ++i) {
    m = static_cast<uint64_t>((static_cast<unsigned __int128>(m) * m) >> 62);
    frac <<= 1;
    if (m >= (uint64_t{1} << 63)) {  // m^2 >= 2
      frac |= 1;
      m >>= 1;
    }
  }
  const uint32_t log2f = (static_cast<uint32_t>(e) << 16) | frac;
  return (static_cast<uint32_t>(kProbBits) << 16) - log2f;
}

}  // namespace

uint32_t SymbolCost(uint32_t f) {
  static const std::vector<uint32_t> costs = [] {
    std::vector<uint32_t> c(kProbScale + 1, 0);
    for (uint32_t i = 1; i <= kProbScale; ++i) c[i] = ComputeSymbolCost(i);
    return c;
  }();
  return costs[f];
}

std::vector<uint16_t> NormalizeFrequencies(std::span<const double> p) {
  const size_t n = p.size();
  double sum = 0;
  for (double v : p) sum += v > 0 ? v : 0.0;
  std::vector<uint32_t> f(n, 1);
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const double v = sum > 0 && p[i] > 0 ? p[i] / sum * kProbScale + 0.5 : 1.0;
    f[i] = std::max<uint32_t>(1, v >= kProbScale ? kProbScale : static_cast<uint32_t>(v));
    total += f[i];
  }
  // Lower (or raise) the largest frequency one step at a time until the sum is exact.
  while (total != kProbScale) {
    size_t best = n;
    for (size_t i = 0; i < n; ++i) {
      if (total > kProbScale && f[i] <= 1) continue;
      if (best == n || f[i] > f[best]) best = i;
    }
    if (total > kProbScale) {
      --f[best];
      --total;
    } else {
      ++f[best];
      ++total;
    }
  }
  return std::vector<uint16_t>(f.begin(), f.end());
}

bool BuildTable(std::span<const uint16_t> freq, Table* t, bool slots) {
  const size_t n = freq.size();
  if (n < 2 || n > 256) return false;
  uint32_t sum = 0;
  for (uint16_t f : freq) {
    if (f == 0) return false;
    sum += f;
  }
  if (sum != kProbScale) return false;
  t->freq.assign(freq.begin(), freq.end());
  t->cum.resize(n);
  t->cost.resize(n);
  t->slots.assign(slots ? kProbScale : 0, 0);
  t->rcp.resize(n);
  t->enc.resize(n);
  t->entropy = 0;
  uint32_t c = 0;
  for (size_t s = 0; s < n; ++s) {
    const uint32_t f = freq[s];
    t->cum[s] = static_cast<uint16_t>(c);
    t->cost[s] = SymbolCost(f);
    // ceil(2^64 / f): the error x (rcp - 2^64 / f) / 2^64 < 2^-32 never reaches the next
    // integer, since x / f is at least 1 / f < 2^-12 below it.
    t->rcp[s] = f == 1 ? 0 : ~uint64_t{0} / f + 1;
    t->enc[s] = f == 1 ? EncSym{~uint64_t{0}, 1, c + kProbScale - 1} : EncSym{t->rcp[s], f, c};
    t->entropy += uint64_t{f} * t->cost[s];
    for (uint32_t j = 0; slots && j < f; ++j) {
      t->slots[c + j] = static_cast<uint32_t>(s) | f << 8 | j << 20;
    }
    c += f;
  }
  t->entropy = (t->entropy + kProbScale / 2) / kProbScale;
  return true;
}

const Table& UniformByteTable() {
  static const Table table = [] {
    Table t;
    const std::vector<uint16_t> f(256, kProbScale / 256);
    BuildTable(f, &t);
    return t;
  }();
  return table;
}

void BlockEncoder::Reset() {
  for (uint32_t& x : x_) x = kStateLower;
  used_ = 0;
}

namespace {

bool HaveAvx512() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw");
  }();
  return have;
}

// Whole groups of PutAll on the eight states at once, k a multiple of kLanes, the same words
// and states as the scalar steps. Element i of the state vector holds lane 7 - i, so the words
// a group emits, compressed in element order, come out lane 7 first, as the scalar steps store
// them. The division is Put's: q = (y * rcp) >> 64 from two 32 x 32-bit products (y < 2^32).
// GCC 12's AVX-512 intrinsics pass an uninitialised vector as the unused merge source of their
// unmasked forms, which its own uninitialised-use analysis then reports; nothing reads it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
__attribute__((target("avx512f,avx512vl,avx512bw"))) size_t PutGroupsAvx512(
    const EncSym* const* sym, size_t k, uint32_t* x, uint16_t* w, size_t used) {
  static_assert(sizeof(EncSym) == 16 && offsetof(EncSym, freq) == 8 && offsetof(EncSym, cum) == 12);
  const __m512i reverse = _mm512_set_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i low32 = _mm512_set1_epi64(0xffffffff);
  const __m512i eight = _mm512_set1_epi64(8);
  __m512i X = _mm512_permutexvar_epi64(
      reverse, _mm512_cvtepu32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))));
  for (; k > 0; k -= kLanes) {
    // The group's entries, lane 7 first: rcp, and freq | cum << 32.
    const __m512i p = _mm512_permutexvar_epi64(reverse, _mm512_loadu_si512(sym + k - kLanes));
    const __m512i rcp = _mm512_i64gather_epi64(p, nullptr, 1);
    const __m512i fc = _mm512_i64gather_epi64(_mm512_add_epi64(p, eight), nullptr, 1);
    const __m512i f = _mm512_and_si512(fc, low32);
    const __m512i c = _mm512_srli_epi64(fc, 32);
    const __mmask8 out = _mm512_cmpge_epu64_mask(X, _mm512_slli_epi64(f, 32 - kProbBits));
    const __m256i words = _mm256_maskz_compress_epi32(out, _mm512_cvtepi64_epi32(X));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(w + used), _mm256_cvtepi32_epi16(words));
    used += static_cast<size_t>(__builtin_popcount(out));
    const __m512i y = _mm512_mask_srli_epi64(X, out, X, 16);
    const __m512i lo = _mm512_mul_epu32(y, rcp);
    const __m512i hi = _mm512_mul_epu32(y, _mm512_srli_epi64(rcp, 32));
    const __m512i q = _mm512_srli_epi64(_mm512_add_epi64(hi, _mm512_srli_epi64(lo, 32)), 32);
    X = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64(q, kProbBits), c),
                         _mm512_sub_epi64(y, _mm512_mul_epu32(q, f)));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x),
                      _mm512_cvtepi64_epi32(_mm512_permutexvar_epi64(reverse, X)));
  return used;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace

void BlockEncoder::PutAll(const EncSym* const* sym, size_t n, bool vector) {
  // kLanes words of slack: a vector group stores eight words and keeps those it emitted.
  Reserve(n + kLanes);
  uint16_t* w = words_.data();
  size_t used = used_;
  // One step of Put on state x, without a branch (EncSym: f = 1 needs none either).
  auto put = [&](uint32_t& x, const EncSym& e) {
    const uint32_t out = x >= (e.freq << (32 - kProbBits)) ? 1u : 0u;
    w[used] = static_cast<uint16_t>(x);
    used += out;
    const uint32_t y = x >> (16 * out);
    const uint32_t q = static_cast<uint32_t>((static_cast<unsigned __int128>(y) * e.rcp) >> 64);
    x = (q << kProbBits) + (y - q * e.freq) + e.cum;
  };
  static_assert(kLanes == 8);
  size_t k = n;
  for (; k % kLanes; --k) put(x_[(k - 1) % kLanes], *sym[k - 1]);
  if (vector && k > 0 && HaveAvx512()) {
    used_ = PutGroupsAvx512(sym, k, x_, w, used);
    return;
  }
  uint32_t x0 = x_[0], x1 = x_[1], x2 = x_[2], x3 = x_[3], x4 = x_[4], x5 = x_[5], x6 = x_[6],
           x7 = x_[7];
  for (; k > 0; k -= kLanes) {
    const EncSym* const* s = sym + k - kLanes;
    put(x7, *s[7]);
    put(x6, *s[6]);
    put(x5, *s[5]);
    put(x4, *s[4]);
    put(x3, *s[3]);
    put(x2, *s[2]);
    put(x1, *s[1]);
    put(x0, *s[0]);
  }
  x_[0] = x0, x_[1] = x1, x_[2] = x2, x_[3] = x3, x_[4] = x4, x_[5] = x5, x_[6] = x6, x_[7] = x7;
  used_ = used;
}

void BlockEncoder::Finish(std::vector<uint8_t>* out) {
  const size_t base = out->size();
  out->resize(base + Bytes());
  uint8_t* o = out->data() + base;
  for (int l = 0; l < kLanes; ++l) {
    for (int b = 0; b < 4; ++b) o[4 * l + b] = static_cast<uint8_t>(x_[l] >> (8 * b));
  }
  o += kBlockStateBytes;
  // The decoder reads the words in the reverse of the order they were emitted.
  for (size_t i = used_; i-- > 0; o += 2) {
    o[0] = static_cast<uint8_t>(words_[i]);
    o[1] = static_cast<uint8_t>(words_[i] >> 8);
  }
  Reset();
}

BlockDecoder::BlockDecoder(std::span<const uint8_t> block)
    : data_(block.data()), pos_(kBlockStateBytes), size_(block.size()) {
  for (int l = 0; l < kLanes; ++l) {
    x_[l] = 0;
    for (int b = 0; b < 4; ++b) x_[l] |= uint32_t{block[4 * l + b]} << (8 * b);
  }
}

namespace {

// For a mask of the lanes that read a word: lane l takes word number popcount(mask below l).
struct WordPermutes {
  std::array<std::array<uint32_t, kLanes>, 1 << kLanes> perm{};
  WordPermutes() {
    for (uint32_t m = 0; m < (1u << kLanes); ++m) {
      uint32_t n = 0;
      for (int l = 0; l < kLanes; ++l) perm[m][l] = (m >> l) & 1u ? n++ : 0;
    }
  }
};
const WordPermutes kWordPermutes;

bool HaveAvx2() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return have;
}

// Decodes `groups` groups of kLanes symbols of each of S blocks, group g of each in turn, so
// that their dependency chains overlap. Lane l of a group decodes from state x[l]; the words a
// group takes go to its renormalising lanes in lane order, as One() would read them.
struct StreamState {
  uint32_t* x;
  const uint8_t* data;
  size_t* pos;
  size_t size;
  bool* overrun;
  const uint32_t* offsets;
  uint32_t* out;
};

template <int S>
__attribute__((target("avx2"))) void DecodeGroupsAvx2Side(const StreamState* st,
                                                         const uint32_t* pool, size_t groups) {
  __m256i X[S];
  size_t p[S];
  for (int s = 0; s < S; ++s) {
    X[s] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(st[s].x));
    p[s] = *st[s].pos;
  }
  const __m256i slot_mask = _mm256_set1_epi32(kProbScale - 1);
  const __m256i low8 = _mm256_set1_epi32(0xff);
  const __m256i low12 = _mm256_set1_epi32(0xfff);
  const __m256i zero = _mm256_setzero_si256();
  for (size_t g = 0; g < groups; ++g) {
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) {
      const __m256i off =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(st[s].offsets + g * kLanes));
      const __m256i idx = _mm256_add_epi32(off, _mm256_and_si256(X[s], slot_mask));
      const __m256i e = simd::GatherU32(pool, idx);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(st[s].out + g * kLanes),
                          _mm256_and_si256(e, low8));
      const __m256i f = _mm256_and_si256(_mm256_srli_epi32(e, 8), low12);
      X[s] = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srli_epi32(X[s], kProbBits)),
                              _mm256_srli_epi32(e, 20));
      const __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(X[s], 16), zero);
      // No branch on whether any lane renormalises: it is taken at random and its
      // mispredictions cost more than the load and permute (a no-op for mask 0) it skips.
      const uint32_t mask =
          static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(need)));
      const size_t n = static_cast<size_t>(__builtin_popcount(mask));
      __m128i raw;
      if (p[s] + 16 <= st[s].size) {
        raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(st[s].data + p[s]));
      } else {
        alignas(16) uint8_t pad[16] = {};
        if (p[s] < st[s].size) std::copy(st[s].data + p[s], st[s].data + st[s].size, pad);
        raw = _mm_load_si128(reinterpret_cast<const __m128i*>(pad));
      }
      if (p[s] + 2 * n > st[s].size) *st[s].overrun = true;
      p[s] += 2 * n;
      const __m256i words = _mm256_cvtepu16_epi32(raw);
      const __m256i perm =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kWordPermutes.perm[mask].data()));
      const __m256i w = _mm256_permutevar8x32_epi32(words, perm);
      X[s] = _mm256_blendv_epi8(X[s], _mm256_or_si256(_mm256_slli_epi32(X[s], 16), w), need);
    }
  }
  for (int s = 0; s < S; ++s) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(st[s].x), X[s]);
    *st[s].pos = std::min(p[s], st[s].size);
  }
}

}  // namespace

void BlockDecoder::DecodeSideBySide(BlockDecoder* const* dec, int streams, const uint32_t* pool,
                                    const uint32_t* const* offsets, const size_t* n,
                                    uint32_t* const* out) {
  if (streams == 1 || !HaveAvx2()) {
    for (int s = 0; s < streams; ++s) dec[s]->Decode(pool, offsets[s], n[s], out[s]);
    return;
  }
  size_t j[kMaxStreams] = {};
  size_t common = SIZE_MAX;
  for (int s = 0; s < streams; ++s) {  // each to a lane-0 symbol
    BlockDecoder& d = *dec[s];
    while (j[s] < n[s] && d.k_ % kLanes != 0) {
      out[s][j[s]] = d.One(pool, offsets[s][j[s]]);
      ++j[s];
    }
    common = std::min(common, (n[s] - j[s]) / kLanes);
  }
  if (common > 0) {
    StreamState st[kMaxStreams] = {};
    for (int s = 0; s < streams; ++s) {
      BlockDecoder& d = *dec[s];
      st[s] = {d.x_, d.data_, &d.pos_, d.size_, &d.overrun_, offsets[s] + j[s], out[s] + j[s]};
    }
    switch (streams) {
      case 2: DecodeGroupsAvx2Side<2>(st, pool, common); break;
      case 3: DecodeGroupsAvx2Side<3>(st, pool, common); break;
      default: DecodeGroupsAvx2Side<4>(st, pool, common); break;
    }
    for (int s = 0; s < streams; ++s) {
      j[s] += common * kLanes;
      dec[s]->k_ += common * kLanes;
    }
  }
  for (int s = 0; s < streams; ++s) {
    dec[s]->Decode(pool, offsets[s] + j[s], n[s] - j[s], out[s] + j[s]);
  }
}

void BlockDecoder::Decode(const uint32_t* pool, const uint32_t* offsets, size_t n,
                          uint32_t* out) {
  size_t j = 0;
  while (j < n && k_ % kLanes != 0) {
    out[j] = One(pool, offsets[j]);
    ++j;
  }
  const size_t groups = (n - j) / kLanes;
  if (groups > 0 && HaveAvx2()) {
    const StreamState st = {x_, data_, &pos_, size_, &overrun_, offsets + j, out + j};
    DecodeGroupsAvx2Side<1>(&st, pool, groups);
    j += groups * kLanes;
    k_ += groups * kLanes;
  }
  for (; j < n; ++j) out[j] = One(pool, offsets[j]);
}

bool BlockDecoder::Ok() const {
  if (overrun_ || pos_ != size_) return false;
  for (uint32_t x : x_) {
    if (x != kStateLower) return false;
  }
  return true;
}

}  // namespace kvwire::rans
