// Every baseline codec (BaselineCodecSpecs()): round-trip error within the bound its recipe
// implies, exact payload sizes, reference == optimized, determinism, refusal of non-finite input
// and of malformed payloads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "codec/baseline_test_util.h"
#include "codec/lloyd_max.h"
#include "common/fp16.h"
#include "kvwire/codec.h"

namespace kvwire {
namespace {

using testing_util::GaussianInput;
using testing_util::MakeDesc;
using testing_util::MustCreate;
using testing_util::StructuredInput;

// ---- what the test knows about a spec, parsed independently of the library -------------------

struct SpecInfo {
  std::string family;  // fp16 int8 q8_0 q4_0 kivi int-token int-channel rank turbo
  int bits = 0;
  uint32_t g = 32, r = 32, rank = 0;
};

SpecInfo Parse(const std::string& spec) {
  SpecInfo s;
  auto num = [&](size_t from, size_t to) { return std::stoi(spec.substr(from, to - from)); };
  if (spec.rfind("kivi", 0) == 0) {
    s.family = "kivi";
    s.bits = num(4, spec.find(':') == std::string::npos ? spec.size() : spec.find(':'));
  } else if (spec.rfind("int", 0) == 0 && spec.find('-') != std::string::npos) {
    s.family = spec.find("-token") != std::string::npos ? "int-token" : "int-channel";
    s.bits = num(3, spec.find('-'));
  } else if (spec.rfind("rank-", 0) == 0) {
    s.family = "rank";
    s.rank = static_cast<uint32_t>(num(5, spec.size()));
  } else if (spec.rfind("turbo", 0) == 0) {
    s.family = "turbo";
    s.bits = num(5, spec.find(':') == std::string::npos ? spec.size() : spec.find(':'));
  } else {
    s.family = spec;
  }
  const size_t colon = spec.find(':');
  if (colon != std::string::npos) {  // "k=v,k=v"
    std::string rest = spec.substr(colon + 1) + ",";
    for (size_t at = 0, comma; (comma = rest.find(',', at)) != std::string::npos; at = comma + 1) {
      const std::string kv = rest.substr(at, comma - at);
      const uint32_t v = static_cast<uint32_t>(std::stoul(kv.substr(kv.find('=') + 1)));
      if (kv[0] == 'g') s.g = v;
      if (kv[0] == 'r') s.r = v;
    }
  }
  return s;
}

// kivi: the chunk's fp16 lead (tokens before its first group boundary), then Tq quantized.
uint32_t KiviLeadTokens(const SpecInfo& s, const ChunkDesc& d) {
  const uint32_t off = d.token_begin % s.g;
  return off == 0 ? 0 : std::min(d.tokens, s.g - off);
}
uint32_t KiviQuantTokens(const SpecInfo& s, const ChunkDesc& d) {
  const uint32_t first = d.token_begin + KiviLeadTokens(s, d);
  const uint32_t n_quant = d.seq_tokens > s.r ? (d.seq_tokens - s.r) / s.g * s.g : 0;
  return n_quant > first ? std::min(n_quant - first, d.token_begin + d.tokens - first) : 0;
}

uint64_t Packed(uint64_t n, int bits) { return (n * bits + 7) / 8; }

uint64_t ExpectedPayload(const SpecInfo& s, const ChunkDesc& d) {
  const uint64_t n = d.elements(), rows = uint64_t{d.tokens} * d.kv_heads;
  const uint64_t hd = uint64_t{d.kv_heads} * d.head_dim;
  if (s.family == "fp16") return 2 * n;
  if (s.family == "int8") return 2 * rows + n;
  if (s.family == "q8_0") return n / 32 * 34;
  if (s.family == "q4_0") return n / 32 * 18;
  if (s.family == "kivi") {
    const uint64_t tq = KiviQuantTokens(s, d);
    return 4 + 4 * tq * hd / s.g + Packed(tq * hd, s.bits) + 2 * (d.tokens - tq) * hd;
  }
  if (d.tokens == 0) return 0;
  if (s.family == "int-token") return 4 * rows + Packed(n, s.bits);
  if (s.family == "int-channel") return 4 * hd + Packed(n, s.bits);
  if (s.family == "rank")
    return 2 * d.kv_heads * (d.head_dim + s.rank * d.head_dim + d.tokens * s.rank);
  if (s.family == "turbo") return 2 * rows + Packed(n, s.bits);
  ADD_FAILURE() << "unknown family " << s.family;
  return 0;
}

// ---- per-element error bounds derived from each recipe -------------------------------------

constexpr double kHalfEps = 1.0 / 2048;         // relative rounding error of fp16 (2^-11)
constexpr double kHalfTiny = 1.0 / 33554432.0;  // 2^-25: absolute error in the subnormal range

// Uniform b-bit over [lo, hi] with fp16 min rounded down and scale rounded up: err <= scale/2.
double UniformBound(double lo, double hi, int bits) {
  const double levels = (1 << bits) - 1;
  const double scale =
      ((hi - lo) + std::fabs(lo) * 2 * kHalfEps + 2 * kHalfTiny) / levels * (1 + 2 * kHalfEps) +
      2 * kHalfTiny;
  return 0.5 * scale + 3e-7 * (std::fabs(lo) + std::fabs(hi));
}

// Group id of every element for the codecs whose parameters are per group; -1 = fp16 element.
std::vector<int64_t> GroupOf(const SpecInfo& s, const ChunkDesc& d) {
  const size_t n = d.elements(), dim = d.head_dim, hd = size_t{d.kv_heads} * dim;
  std::vector<int64_t> g(n);
  const size_t tq = s.family == "kivi" ? KiviQuantTokens(s, d) : 0;
  const size_t lead = s.family == "kivi" ? KiviLeadTokens(s, d) : 0;
  for (size_t i = 0; i < n; ++i) {
    const size_t t = i / hd;
    if (s.family == "int8" || s.family == "int-token") {
      g[i] = static_cast<int64_t>(i / dim);
    } else if (s.family == "q8_0" || s.family == "q4_0") {
      g[i] = static_cast<int64_t>(i / 32);
    } else if (s.family == "int-channel") {
      g[i] = static_cast<int64_t>(i % hd);
    } else if (s.family == "kivi") {
      if (t < lead || t >= lead + tq) {
        g[i] = -1;
      } else if (d.kind == KvKind::kKey) {
        g[i] = static_cast<int64_t>(((t - lead) / s.g) * hd + i % hd);
      } else {
        g[i] = static_cast<int64_t>((i - lead * hd) / s.g);
      }
    } else {
      g[i] = -1;
    }
  }
  return g;
}

// Per-element bound, or an empty vector for the codecs checked in aggregate (rank, turbo).
std::vector<double> ElementBounds(const SpecInfo& s, const ChunkDesc& d, const float* x) {
  const size_t n = d.elements();
  if (s.family == "rank" || s.family == "turbo") return {};
  std::vector<double> bound(n);
  const std::vector<int64_t> group = GroupOf(s, d);
  std::map<int64_t, double> lo, hi, amax, maxval;
  for (size_t i = 0; i < n; ++i) {
    if (group[i] < 0) continue;
    const int64_t g = group[i];
    if (!lo.count(g)) lo[g] = hi[g] = x[i], amax[g] = 0.0, maxval[g] = 0.0;
    lo[g] = std::min<double>(lo[g], x[i]);
    hi[g] = std::max<double>(hi[g], x[i]);
    if (std::fabs(x[i]) > amax[g]) amax[g] = std::fabs(x[i]), maxval[g] = x[i];
  }
  for (size_t i = 0; i < n; ++i) {
    const int64_t g = group[i];
    const double fp16 = std::fabs(x[i]) * kHalfEps + kHalfTiny;
    if (s.family == "fp16" || g < 0) {
      bound[i] = fp16;
    } else if (s.family == "int8") {
      const double scale = amax[g] / 127 * (1 + 2 * kHalfEps) + 2 * kHalfTiny;
      bound[i] = 0.5 * scale + 3e-7 * amax[g];
    } else if (s.family == "q8_0") {
      const double d8 = amax[g] / 127;
      bound[i] = 0.5 * d8 + 127 * (d8 * kHalfEps + kHalfTiny) + 3e-7 * amax[g];
    } else if (s.family == "q4_0") {
      const double d4 = maxval[g] / -8;  // signed; x/d4 in [-8, 8]; +8 is clipped to 7
      const double v = d4 != 0 ? x[i] / d4 : 0;
      bound[i] = (v > 7.5 ? 1.0 : 0.5) * std::fabs(d4) +
                 8 * (std::fabs(d4) * kHalfEps + kHalfTiny) + 3e-7 * amax[g];
    } else {
      bound[i] = UniformBound(lo[g], hi[g], s.bits);
    }
  }
  return bound;
}

struct ErrorStats {
  double max_abs = 0, max_ratio = 0, sq = 0, energy = 0;
  double rel_mse() const { return energy > 0 ? sq / energy : 0; }
};

ErrorStats Measure(const float* x, const float* y, size_t n, const std::vector<double>& bound) {
  ErrorStats e;
  for (size_t i = 0; i < n; ++i) {
    const double err = std::fabs(static_cast<double>(x[i]) - y[i]);
    e.max_abs = std::max(e.max_abs, err);
    if (!bound.empty())
      e.max_ratio = std::max(e.max_ratio, bound[i] > 0 ? err / bound[i] : err * 1e30);
    e.sq += err * err;
    e.energy += static_cast<double>(x[i]) * x[i];
  }
  return e;
}

// rank-r: the error energy equals the energy of the discarded directions of each head.
void CheckRank(const SpecInfo& s, const ChunkDesc& d, const float* x, const float* y) {
  const size_t t_n = d.tokens, h_n = d.kv_heads, dim = d.head_dim;
  for (size_t h = 0; h < h_n; ++h) {
    std::vector<double> mean(dim, 0.0), a(t_n * dim), scatter(dim * dim, 0.0);
    double err = 0.0, total = 0.0;
    for (size_t t = 0; t < t_n; ++t) {
      for (size_t i = 0; i < dim; ++i)
        mean[i] += x[(t * h_n + h) * dim + i] / static_cast<double>(t_n);
    }
    for (size_t t = 0; t < t_n; ++t) {
      for (size_t i = 0; i < dim; ++i) {
        const size_t k = (t * h_n + h) * dim + i;
        a[t * dim + i] = x[k] - mean[i];
        err += (static_cast<double>(x[k]) - y[k]) * (static_cast<double>(x[k]) - y[k]);
        total += static_cast<double>(x[k]) * x[k];
      }
    }
    for (size_t t = 0; t < t_n; ++t) {
      for (size_t i = 0; i < dim; ++i) {
        for (size_t j = 0; j < dim; ++j) scatter[i * dim + j] += a[t * dim + i] * a[t * dim + j];
      }
    }
    const std::vector<double> ev = testing_util::JacobiEigenvalues(dim, scatter);
    double discarded = 0.0;
    for (size_t k = s.rank; k < dim; ++k) discarded += std::max(0.0, ev[k]);
    EXPECT_NEAR(err, discarded, 0.01 * discarded + 2e-6 * total)
        << "head " << h << ": error energy vs discarded eigenvalues";
  }
}

// turbo<b>: relative MSE close to the Lloyd-Max distortion of N(0,1) at b bits.
void CheckTurbo(const SpecInfo& s, const ErrorStats& e, bool gaussian) {
  const double want = baseline::GaussianLloydMax(s.bits).distortion;
  if (gaussian) {
    EXPECT_GT(e.rel_mse(), 0.85 * want);
    EXPECT_LT(e.rel_mse(), 1.05 * want);
  } else {
    EXPECT_LT(e.rel_mse(), 1.3 * want);
  }
}

// ---- the parameterized suite -----------------------------------------------------------------

class BaselineCodecTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    codec_ = MustCreate(GetParam());
    ASSERT_NE(codec_, nullptr);
    info_ = Parse(GetParam());
  }

  std::vector<uint8_t> Encode(const ChunkDesc& d, const std::vector<float>& x,
                              CodecImpl impl = CodecImpl::kOptimized) {
    std::vector<uint8_t> out;
    const Status st = codec_->Encode(d, x.data(), &out, impl);
    EXPECT_TRUE(st.ok()) << GetParam() << ": " << st.ToString();
    return out;
  }
  std::vector<float> Decode(const ChunkDesc& d, const std::vector<uint8_t>& p,
                            CodecImpl impl = CodecImpl::kOptimized) {
    std::vector<float> y(d.elements(), std::numeric_limits<float>::quiet_NaN());
    const Status st = codec_->Decode(d, p, y.data(), impl);
    EXPECT_TRUE(st.ok()) << GetParam() << ": " << st.ToString();
    return y;
  }

  std::unique_ptr<Codec> codec_;
  SpecInfo info_;
};

// The shapes every codec is exercised on: head_dim 64 (all codecs accept it) and a 128 one.
std::vector<ChunkDesc> Shapes() {
  return {MakeDesc(96, 2, 64, KvKind::kKey), MakeDesc(96, 2, 64, KvKind::kValue),
          MakeDesc(64, 1, 128, KvKind::kKey)};
}

TEST_P(BaselineCodecTest, RoundTripErrorWithinRecipeBound) {
  for (const ChunkDesc& d : Shapes()) {
    struct Input {
      const char* name;
      std::vector<float> x;
    };
    const Input inputs[] = {{"gauss", GaussianInput(d, 1)},
                            {"gauss*0.01", GaussianInput(d, 2, 0.01f)},
                            {"structured", StructuredInput(d, 3)}};
    for (const Input& in : inputs) {
      SCOPED_TRACE(std::string(in.name) + " " + std::string(KvKindName(d.kind)) + " dim " +
                   std::to_string(d.head_dim));
      const std::vector<uint8_t> p = Encode(d, in.x);
      ASSERT_EQ(p.size(), ExpectedPayload(info_, d));
      const std::vector<float> y = Decode(d, p);
      const std::vector<double> bound = ElementBounds(info_, d, in.x.data());
      const ErrorStats e = Measure(in.x.data(), y.data(), y.size(), bound);
      if (!bound.empty()) {
        EXPECT_LE(e.max_ratio, 1.0) << "max |err| / bound";
      }
      if (info_.family == "fp16" || info_.family == "kivi") {  // fp16 elements: exactly rounded
        const std::vector<int64_t> group = GroupOf(info_, d);
        for (size_t i = 0; i < y.size(); ++i) {
          if (info_.family == "fp16" || group[i] < 0) {
            ASSERT_EQ(y[i], RoundToHalf(in.x[i])) << i;
          }
        }
      }
      if (info_.family == "rank") CheckRank(info_, d, in.x.data(), y.data());
      if (info_.family == "turbo") CheckTurbo(info_, e, in.name[0] == 'g');
      std::printf(
          "[ stats    ] %-13s %-10s %s dim%-3u bits/elem %7.4f  max|err| %.3e  "
          "max err/bound %.3f  rel.MSE %.3e\n",
          GetParam().c_str(), in.name, std::string(KvKindName(d.kind)).c_str(), d.head_dim,
          8.0 * p.size() / d.elements(), e.max_abs, e.max_ratio, e.rel_mse());
    }
  }
}

std::vector<std::pair<std::string, std::vector<float>>> EdgeInputs(const ChunkDesc& d) {
  const size_t n = d.elements();
  std::vector<std::pair<std::string, std::vector<float>>> v;
  v.emplace_back("zeros", std::vector<float>(n, 0.0f));
  std::vector<float> signed_zeros(n);
  for (size_t i = 0; i < n; ++i) signed_zeros[i] = (i * 7919) % 3 == 0 ? -0.0f : 0.0f;
  v.emplace_back("signed-zeros", signed_zeros);
  v.emplace_back("constant", std::vector<float>(n, 3.7f));
  v.emplace_back("negative-constant", std::vector<float>(n, -1234.5f));
  std::vector<float> huge = GaussianInput(d, 4, 1e6f);
  v.emplace_back("huge", huge);
  v.emplace_back("tiny", GaussianInput(d, 5, 1e-6f));
  v.emplace_back("denormal", GaussianInput(d, 6, 1e-40f));
  std::vector<float> mixed = GaussianInput(d, 7);
  for (size_t i = 0; i < n; i += 17) mixed[i] = (i % 2 ? -1.0f : 1.0f) * 60000.0f;
  for (size_t i = 5; i < n; i += 23) mixed[i] = i % 3 ? 0.0f : -0.0f;
  v.emplace_back("mixed", mixed);
  return v;
}

TEST_P(BaselineCodecTest, ReferenceAndOptimizedAgreeBitForBit) {
  for (const ChunkDesc& d : Shapes()) {
    auto inputs = EdgeInputs(d);
    inputs.emplace_back("gauss", GaussianInput(d, 8));
    inputs.emplace_back("structured", StructuredInput(d, 9));
    for (const auto& [name, x] : inputs) {
      SCOPED_TRACE(name + " " + std::string(KvKindName(d.kind)) + " dim " +
                   std::to_string(d.head_dim));
      const std::vector<uint8_t> ref = Encode(d, x, CodecImpl::kReference);
      const std::vector<uint8_t> opt = Encode(d, x, CodecImpl::kOptimized);
      ASSERT_EQ(ref.size(), ExpectedPayload(info_, d));
      ASSERT_TRUE(ref == opt) << "encodings differ";
      const std::vector<float> yr = Decode(d, ref, CodecImpl::kReference);
      const std::vector<float> yo = Decode(d, ref, CodecImpl::kOptimized);
      ASSERT_EQ(0, std::memcmp(yr.data(), yo.data(), 4 * yr.size())) << "decodes differ";
      for (size_t i = 0; i < yo.size(); ++i) ASSERT_TRUE(std::isfinite(yo[i])) << i;
      if (name == "zeros" || name == "signed-zeros") {
        for (size_t i = 0; i < yo.size(); ++i) ASSERT_EQ(yo[i], 0.0f) << i;
      }
      if (name != "huge" && info_.family != "rank" && info_.family != "turbo") {
        const std::vector<double> bound = ElementBounds(info_, d, x.data());
        EXPECT_LE(Measure(x.data(), yo.data(), x.size(), bound).max_ratio, 1.0);
      }
    }
  }
}

TEST_P(BaselineCodecTest, EncodingIsDeterministic) {
  const ChunkDesc d = MakeDesc(96, 2, 64, KvKind::kKey);
  const std::vector<float> x = StructuredInput(d, 10);
  const std::vector<uint8_t> a = Encode(d, x);
  auto fresh = MustCreate(GetParam());
  std::vector<uint8_t> b = {1, 2, 3};  // Encode appends
  ASSERT_TRUE(fresh->Encode(d, x.data(), &b).ok());
  ASSERT_EQ(b.size(), a.size() + 3);
  EXPECT_EQ(b[0], 1);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin() + 3));
  EXPECT_EQ(Encode(d, x), a);
}

// Small edge cases in one test (one process per test under ctest): an empty chunk, non-finite
// input refused, out-of-fp16-range input saturated to finite values.
TEST_P(BaselineCodecTest, EmptyNonFiniteAndOutOfRangeInputs) {
  {
    SCOPED_TRACE("empty chunk");
    const ChunkDesc d = MakeDesc(0, 2, 64, KvKind::kValue, 0, 0);
    const std::vector<uint8_t> p = Encode(d, {});
    EXPECT_EQ(p.size(), ExpectedPayload(info_, d));
    float dummy = 0;
    EXPECT_TRUE(codec_->Decode(d, p, &dummy).ok());
  }
  const ChunkDesc d = MakeDesc(64, 2, 64, KvKind::kKey);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (CodecImpl impl : {CodecImpl::kReference, CodecImpl::kOptimized}) {
      SCOPED_TRACE("non-finite input");
      std::vector<float> x = GaussianInput(d, 11);
      x[1000] = bad;
      std::vector<uint8_t> out;
      const Status st = codec_->Encode(d, x.data(), &out, impl);
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
      EXPECT_NE(st.message().find("non-finite"), std::string::npos) << st.message();
    }
  }
  {
    SCOPED_TRACE("out of the fp16 range");
    std::vector<float> x = GaussianInput(d, 15);
    x[7] = 1e9f;
    x[300] = -3e38f;
    const std::vector<float> y = Decode(d, Encode(d, x));
    for (float v : y) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST_P(BaselineCodecTest, RefusesPayloadsOfTheWrongSize) {
  for (const ChunkDesc& d : Shapes()) {
    const std::vector<uint8_t> p = Encode(d, GaussianInput(d, 12));
    std::vector<float> y(d.elements());
    for (size_t size :
         {size_t{0}, size_t{3}, p.size() / 2, p.size() - 1, p.size() + 1, p.size() + 64}) {
      std::vector<uint8_t> q(p.begin(), p.begin() + std::min(size, p.size()));
      q.resize(size, 0x5a);
      for (CodecImpl impl : {CodecImpl::kReference, CodecImpl::kOptimized}) {
        const Status st = codec_->Decode(d, q, y.data(), impl);
        EXPECT_EQ(st.code(), StatusCode::kCorrupt) << size << ": " << st.ToString();
      }
    }
    // The payload of another shape does not decode either.
    ChunkDesc other = d;
    other.tokens -= 32;
    EXPECT_FALSE(codec_->Decode(other, p, y.data()).ok());
  }
}

TEST_P(BaselineCodecTest, CorruptedPayloadsNeverCrash) {
  const ChunkDesc d = MakeDesc(64, 2, 64, KvKind::kValue);
  const std::vector<uint8_t> p = Encode(d, StructuredInput(d, 13));
  std::mt19937 rng(14);
  std::vector<float> y(d.elements());
  int refused = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<uint8_t> q = p;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int f = 0; f < flips; ++f) q[rng() % q.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
    if (trial % 10 == 0) {  // make some all-ones fields: fp16 NaN/inf everywhere they land
      const size_t at = rng() % (q.size() - 1);
      q[at] = 0xff;
      q[at + 1] = 0xff;
    }
    const Status st =
        codec_->Decode(d, q, y.data(), trial % 2 ? CodecImpl::kReference : CodecImpl::kOptimized);
    if (!st.ok()) {
      ASSERT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
      ++refused;
      continue;
    }
    for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(std::isfinite(y[i])) << trial << " " << i;
  }
  std::printf("[ corrupt  ] %-13s %d of 300 corrupted payloads refused, the rest decoded finite\n",
              GetParam().c_str(), refused);
}

std::string SpecName(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& c : s) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Baselines, BaselineCodecTest, ::testing::ValuesIn(BaselineCodecSpecs()),
                         SpecName);

// Non-default options go through the same checks.
INSTANTIATE_TEST_SUITE_P(Options, BaselineCodecTest,
                         ::testing::Values("kivi3:g=16,r=8", "kivi8:g=64,r=0", "turbo3:seed=7",
                                           "turbo1", "turbo6", "turbo8", "rank-1", "rank-63"),
                         SpecName);

}  // namespace
}  // namespace kvwire
