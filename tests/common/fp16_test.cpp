// fp16/bf16 conversions of common/fp16.h: exhaustive round trips and round-to-nearest-even.
#include "common/fp16.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kvwire/kv_view.h"

namespace kvwire {
namespace {

bool IsHalfNan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

TEST(Fp16Test, EveryHalfRoundTripsExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t half = static_cast<uint16_t>(h);
    const float f = HalfToFloat(half);
    if (IsHalfNan(half)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(IsHalfNan(FloatToHalf(f))) << std::hex << h;
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), half) << std::hex << h << " -> " << f;
    ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << std::hex << h;
  }
}

TEST(Fp16Test, DecodesKnownValues) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(std::bit_cast<uint32_t>(HalfToFloat(0x8000)), 0x80000000u);
}

// Between every two adjacent finite halves of one sign: the midpoint goes to the even one, and
// one float ulp either side goes to the nearer one.
TEST(Fp16Test, RoundsToNearestEvenAtEveryMidpoint) {
  for (uint32_t sign : {0u, 0x8000u}) {
    for (uint32_t m = 0; m < 0x7bff; ++m) {
      const uint16_t lo = static_cast<uint16_t>(sign | m),
                     hi = static_cast<uint16_t>(sign | (m + 1));
      const float a = HalfToFloat(lo), b = HalfToFloat(hi);
      const float mid = 0.5f * (a + b);  // exact: a float has 13 more mantissa bits than a half
      ASSERT_EQ(static_cast<double>(mid), 0.5 * (static_cast<double>(a) + b));
      const uint16_t even = (lo & 1u) == 0 ? lo : hi;
      ASSERT_EQ(FloatToHalf(mid), even) << std::hex << m;
      const float toward_a = std::nextafter(mid, a), toward_b = std::nextafter(mid, b);
      ASSERT_EQ(FloatToHalf(toward_a), lo) << std::hex << m;
      ASSERT_EQ(FloatToHalf(toward_b), hi) << std::hex << m;
    }
  }
}

TEST(Fp16Test, OverflowUnderflowAndSpecials) {
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.99f), 0x7bff);  // below the midpoint to 65536
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);   // the midpoint: ties to even = infinity
  EXPECT_EQ(FloatToHalf(1e30f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e30f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_TRUE(IsHalfNan(FloatToHalf(std::numeric_limits<float>::quiet_NaN())));
  const float tiny = std::ldexp(1.0f, -25);  // half of the smallest subnormal
  EXPECT_EQ(FloatToHalf(tiny), 0x0000);      // tie -> even (0)
  EXPECT_EQ(FloatToHalf(std::nextafter(tiny, 1.0f)), 0x0001);
  EXPECT_EQ(FloatToHalf(3.0f * tiny), 0x0002);  // tie between 1 and 2 -> 2
  EXPECT_EQ(FloatToHalf(-tiny), 0x8000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  // The largest subnormal rounds up into the smallest normal.
  EXPECT_EQ(FloatToHalf(std::nextafter(std::ldexp(1.0f, -14), 0.0f)), 0x0400);
}

TEST(Fp16Test, RoundToHalfIsIdempotent) {
  for (float f : {0.1f, -3.14159f, 1e-6f, 12345.678f, 65504.0f}) {
    const float r = RoundToHalf(f);
    EXPECT_EQ(RoundToHalf(r), r);
    EXPECT_LE(std::fabs(r - f), std::fabs(f) * std::ldexp(1.0f, -11) + std::ldexp(1.0f, -25));
  }
}

TEST(Bf16Test, EveryBf16RoundTripsAndTiesGoToEven) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(f))));
      continue;
    }
    ASSERT_EQ(FloatToBf16(f), b);
  }
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie, even below
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie, even above
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
}

// KvView's fp16 rows (vector conversions where the CPU has them) give exactly the scalar
// conversions: every half to float, and floats around every rounding boundary, subnormals,
// overflow, infinities and NaNs (which take the scalar path) back to half.
TEST(Fp16Test, KvViewRowsConvertLikeTheScalarFunctions) {
  constexpr uint32_t kRow = 64;  // kv_heads 1 x head_dim 64
  std::vector<uint16_t> halves(65536);
  for (uint32_t h = 0; h < 65536; ++h) halves[h] = static_cast<uint16_t>(h);
  const uint32_t tokens = 65536 / kRow;
  KvShape shape{1, tokens, 1, kRow};
  std::vector<uint16_t> v(halves.size());
  auto view = KvView::Contiguous(shape, DType::kF16, {halves.data()}, {v.data()});
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  std::vector<float> f(halves.size());
  ASSERT_TRUE(view->ReadF32(0, KvKind::kKey, 0, tokens, f.data()).ok());
  for (uint32_t h = 0; h < 65536; ++h) {
    ASSERT_EQ(std::bit_cast<uint32_t>(f[h]), std::bit_cast<uint32_t>(HalfToFloatFast(halves[h])))
        << std::hex << h;
  }
  // Floats: each half's value, its neighbours one ulp either side, the midpoints to the next
  // half and their neighbours, plus random bit patterns (NaNs with payloads among them).
  std::vector<float> in;
  for (uint32_t h = 0; h < 65536 && in.size() < 65536 * 4; h += 3) {
    const float x = HalfToFloat(static_cast<uint16_t>(h));
    const uint32_t b = std::bit_cast<uint32_t>(x);
    for (uint32_t d : {0u, 1u, 0xfffu, 0x1000u, 0x1001u}) in.push_back(std::bit_cast<float>(b + d));
    in.push_back(std::bit_cast<float>(b - 1));
  }
  std::mt19937 rng(3);
  while (in.size() % kRow != 0 || in.size() < 65536 * 5) in.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  const uint32_t n_tokens = static_cast<uint32_t>(in.size() / kRow);
  std::vector<uint16_t> k_out(in.size()), v_out(in.size());
  KvShape shape2{1, n_tokens, 1, kRow};
  auto out = KvView::Contiguous(shape2, DType::kF16, {k_out.data()}, {v_out.data()});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_TRUE(out->WriteF32(0, KvKind::kValue, 0, n_tokens, in.data()).ok());
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(v_out[i], FloatToHalfFast(in[i])) << std::hex << std::bit_cast<uint32_t>(in[i]);
  }
}

}  // namespace
}  // namespace kvwire
