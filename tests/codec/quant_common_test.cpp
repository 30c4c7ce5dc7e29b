// Helpers of codec/quant_common.h: the branch-free fp16 conversions equal the scalar ones, the
// directed fp16 roundings, the bit-packing layout, order-preserving float keys.
#include "codec/quant_common.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace kvwire::baseline {
namespace {

TEST(QuantCommonTest, FastHalfToFloatEqualsScalarForAllHalves) {
  for (uint32_t h = 0; h < 65536; ++h) {
    ASSERT_EQ(std::bit_cast<uint32_t>(HalfToFloatFast(static_cast<uint16_t>(h))),
              std::bit_cast<uint32_t>(HalfToFloat(static_cast<uint16_t>(h))))
        << std::hex << h;
  }
}

TEST(QuantCommonTest, FastFloatToHalfEqualsScalar) {
  auto check = [](uint32_t bits) {
    const float f = std::bit_cast<float>(bits);
    ASSERT_EQ(FloatToHalfFast(f), FloatToHalf(f)) << std::hex << bits;
  };
  // Around every half value and every midpoint between neighbours (the rounding decisions).
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    for (uint32_t sign : {0u, 0x80000000u}) {
      const uint32_t a = std::bit_cast<uint32_t>(HalfToFloat(static_cast<uint16_t>(h)));
      const uint32_t b = std::bit_cast<uint32_t>(HalfToFloat(static_cast<uint16_t>(h + 1)));
      const uint32_t mid =
          std::bit_cast<uint32_t>(0.5f * (std::bit_cast<float>(a) + std::bit_cast<float>(b)));
      for (int64_t delta = -2; delta <= 2; ++delta) {
        check(sign | static_cast<uint32_t>(a + delta));
        check(sign | static_cast<uint32_t>(mid + delta));
      }
    }
  }
  // Specials, huge and tiny values, and random bit patterns.
  for (uint32_t bits : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                        0x7f800001u, 0xffffffffu, 0x7f7fffffu, 0x00000001u, 0x477ff000u,
                        0x477fefffu, 0x38800000u, 0x387fffffu, 0x33000000u, 0x33000001u}) {
    check(bits);
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 1000000; ++i) check(rng());
}

TEST(QuantCommonTest, BatchConversionsMatchReference) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 100.0f);
  std::vector<float> x(1000);
  for (float& v : x) v = dist(rng);
  std::vector<uint8_t> a(2 * x.size()), b(2 * x.size());
  StoreHalvesRef(x.data(), x.size(), a.data());
  StoreHalves(x.data(), x.size(), b.data());
  EXPECT_EQ(a, b);
  std::vector<float> fa(x.size()), fb(x.size());
  LoadHalvesRef(a.data(), x.size(), fa.data());
  LoadHalves(a.data(), x.size(), fb.data());
  EXPECT_EQ(0, std::memcmp(fa.data(), fb.data(), 4 * fa.size()));
}

TEST(QuantCommonTest, DirectedHalfRounding) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mag(-20.0f, 16.0f);
  for (int i = 0; i < 200000; ++i) {
    const float v = std::min(
        std::ldexp(1.0f + (rng() & 0xffff) / 65536.0f, static_cast<int>(mag(rng))), kHalfMax);
    const float up = HalfToFloat(HalfRoundUp(v));
    ASSERT_GE(up, v);
    ASSERT_LE(up, v * (1.0f + std::ldexp(1.0f, -10)) + std::ldexp(1.0f, -24)) << v;
    for (float s : {v, -v}) {
      const float down = HalfToFloat(HalfRoundDown(s));
      ASSERT_LE(down, s);
      ASSERT_GE(down, s - std::fabs(s) * std::ldexp(1.0f, -10) - std::ldexp(1.0f, -24)) << s;
    }
  }
  EXPECT_EQ(HalfRoundUp(0.0f), 0x0000);
  EXPECT_EQ(HalfRoundUp(1e9f), kHalfMaxBits);
  EXPECT_EQ(HalfRoundDown(-65504.0f), 0xfbff);
  EXPECT_EQ(HalfRoundDown(-1e-30f), 0x8001);
  EXPECT_EQ(HalfRoundDown(0.0f), 0x0000);
  EXPECT_EQ(HalfSaturate(1e9f), kHalfMaxBits);
  EXPECT_EQ(HalfSaturate(-1e9f), 0xfbff);
}

// HalvesFinite checks four halves per word: every one of the 65536 halves alone, and each
// non-finite pattern at every position of short and odd-length runs of finite values.
TEST(QuantCommonTest, HalvesFiniteSeesEveryNonFiniteValueAnywhere) {
  for (uint32_t h = 0; h < 65536; ++h) {
    std::vector<uint8_t> one(8, 0);  // a word: the value in lane 2, zeros beside it
    one[4] = static_cast<uint8_t>(h);
    one[5] = static_cast<uint8_t>(h >> 8);
    ASSERT_EQ(HalvesFinite(one.data(), 4), std::isfinite(HalfToFloat(static_cast<uint16_t>(h))))
        << std::hex << h;
  }
  for (uint16_t bad : {0x7c00, 0xfc00, 0x7e00, 0xffff, 0x7c01}) {
    for (size_t n = 1; n <= 13; ++n) {
      std::vector<uint8_t> run(2 * n);
      for (size_t i = 0; i < n; ++i) StoreU16(run.data() + 2 * i, i % 2 ? 0x7bff : 0x8401);
      ASSERT_TRUE(HalvesFinite(run.data(), n)) << n;
      for (size_t at = 0; at < n; ++at) {
        std::vector<uint8_t> r = run;
        StoreU16(r.data() + 2 * at, bad);
        EXPECT_FALSE(HalvesFinite(r.data(), n)) << std::hex << bad << " n " << n << " at " << at;
      }
    }
  }
}

TEST(QuantCommonTest, BitPackingLayoutIsLsbFirst) {
  const uint8_t v4[] = {0x1, 0x2, 0x3, 0xf, 0x5};
  uint8_t out[3];
  PackBitsRef(v4, 5, 4, out);
  EXPECT_EQ(out[0], 0x21);
  EXPECT_EQ(out[1], 0xf3);
  EXPECT_EQ(out[2], 0x05);
  const uint8_t v3[] = {0x7, 0x0, 0x5};  // bits 111 000 101 -> stream 1,1,1,0,0,0,1,0 | 1
  uint8_t out3[2];
  PackBitsRef(v3, 3, 3, out3);
  EXPECT_EQ(out3[0], 0x47);
  EXPECT_EQ(out3[1], 0x01);
  const uint8_t v2[] = {0x1, 0x2, 0x3, 0x0};
  uint8_t out2[1];
  PackBitsRef(v2, 4, 2, out2);
  EXPECT_EQ(out2[0], 0x39);
}

TEST(QuantCommonTest, FastPackingEqualsReferenceAndRoundTrips) {
  std::mt19937 rng(5);
  for (int bits = 1; bits <= 8; ++bits) {
    for (size_t n = 0; n < 70; ++n) {
      std::vector<uint8_t> v(n);
      for (uint8_t& x : v) x = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      const size_t bytes = PackedBytes(n, bits);
      std::vector<uint8_t> a(bytes + 1, 0xaa), b(bytes + 1, 0xaa);
      PackBitsRef(v.data(), n, bits, a.data());
      PackBits(v.data(), n, bits, b.data());
      ASSERT_EQ(a, b) << "bits " << bits << " n " << n;
      ASSERT_EQ(a[bytes], 0xaa) << "wrote past the packed size";
      std::vector<uint8_t> ua(n), ub(n);
      UnpackBitsRef(a.data(), n, bits, ua.data());
      UnpackBits(a.data(), n, bits, ub.data());
      ASSERT_EQ(ua, v);
      ASSERT_EQ(ub, v);
    }
  }
}

TEST(QuantCommonTest, FloatKeysPreserveOrder) {
  const float xs[] = {-std::numeric_limits<float>::max(), -1.5f, -1e-40f, -0.0f, 0.0f, 1e-40f, 2.0f,
                      std::numeric_limits<float>::max()};
  for (size_t i = 0; i + 1 < std::size(xs); ++i) {
    EXPECT_LT(FloatKey(xs[i]), FloatKey(xs[i + 1])) << xs[i];
    EXPECT_EQ(std::bit_cast<uint32_t>(KeyFloat(FloatKey(xs[i]))), std::bit_cast<uint32_t>(xs[i]));
  }
  const float v[] = {3.0f, -7.0f, 2.0f, 0.0f, 6.5f};
  float lo, hi;
  MinMaxFast(v, 5, &lo, &hi);
  EXPECT_EQ(lo, -7.0f);
  EXPECT_EQ(hi, 6.5f);
  EXPECT_EQ(AbsMaxFast(v, 5), 7.0f);
}

TEST(QuantCommonTest, UniformParamsContainTheGroup) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-1000.0f, 1000.0f);
  for (int i = 0; i < 100000; ++i) {
    float lo = u(rng), hi = u(rng);
    if (lo > hi) std::swap(lo, hi);
    const int bits = 2 + i % 7;
    const int levels = (1 << bits) - 1;
    const UniformParams p = ChooseUniform(lo, hi, levels);
    ASSERT_LE(p.min, lo);
    ASSERT_GE(static_cast<double>(p.min) + static_cast<double>(levels) * p.scale,
              hi - 1e-6 * std::fabs(hi) - 1e-7);
    ASSERT_LE(p.scale, (hi - lo + std::fabs(lo) * 0.002f) / levels * 1.002f + 1e-6f);
  }
}

}  // namespace
}  // namespace kvwire::baseline
