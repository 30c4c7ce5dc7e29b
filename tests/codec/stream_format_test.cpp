// The stream format's building blocks (docs/FORMAT.md): CRC32C (portable, instruction, lanes and
// folding paths), the fp16 finiteness scan fused with it, and the little-endian chunk header.
#include "kvwire/stream.h"

#include <gtest/gtest.h>

#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "codec/quant_common.h"
#include "codec/stream_format.h"
#include "codec/stream_test_util.h"

namespace kvwire {
namespace {

namespace fmt = format;
using namespace stream_testing;

TEST(Crc32cTest, KnownVectors) {
  // The check value of the CRC catalogue and the test vectors of RFC 3720 B.4.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<uint8_t>(i);
    down[i] = static_cast<uint8_t>(31 - i);
  }
  for (auto* f : {&Crc32c, &fmt::Crc32cPortable, &fmt::Crc32cHardware}) {
    EXPECT_EQ(f({}, 0), 0u);
    EXPECT_EQ(f(Bytes("123456789"), 0), 0xE3069283u);
    EXPECT_EQ(f(zeros, 0), 0x8A9136AAu);
    EXPECT_EQ(f(ones, 0), 0x62A8AB43u);
    EXPECT_EQ(f(up, 0), 0x46DD794Eu);
    EXPECT_EQ(f(down, 0), 0x113FDB5Cu);
  }
}

TEST(Crc32cTest, HardwareMatchesPortableAtEveryLengthAndAlignment) {
#if defined(__x86_64__)
  EXPECT_TRUE(fmt::Crc32cHardwareAvailable()) << "the build targets x86-64-v2: SSE4.2 expected";
#endif
  std::mt19937 rng(7);
  std::vector<uint8_t> data(600);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t len = 0; offset + len <= data.size(); len += (len < 70 ? 1 : 37)) {
      std::span<const uint8_t> s(data.data() + offset, len);
      ASSERT_EQ(fmt::Crc32cHardware(s, 0x1234u), fmt::Crc32cPortable(s, 0x1234u))
          << "offset " << offset << " len " << len;
    }
  }
}

// Long inputs run in three interleaved lanes of 4 KiB joined by a shift table: lengths around
// every multiple of the 12 KiB round, at odd offsets, from a non-zero start.
TEST(Crc32cTest, HardwareLanesMatchPortable) {
  std::mt19937 rng(11);
  std::vector<uint8_t> data(5 * 12288 + 64);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset : {0u, 3u}) {
    for (size_t round = 1; round <= 4; ++round) {
      for (size_t len : {round * 12288 - 1, round * 12288, round * 12288 + 1, round * 12288 + 13}) {
        std::span<const uint8_t> s(data.data() + offset, len);
        ASSERT_EQ(fmt::Crc32cHardware(s, 0x9e3779b9u), fmt::Crc32cPortable(s, 0x9e3779b9u))
            << "offset " << offset << " len " << len;
        ASSERT_EQ(fmt::Crc32cHardware(s, 0), fmt::Crc32cPortable(s, 0));
      }
    }
  }
}

// The crc32-instruction path alone, which Crc32cHardware skips for long inputs when it folds:
// the same lengths as above.
TEST(Crc32cTest, InstructionPathMatchesPortable) {
  std::mt19937 rng(13);
  std::vector<uint8_t> data(4 * 12288 + 64);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset : {0u, 5u}) {
    for (size_t len : {0u, 1u, 7u, 8u, 511u, 512u, 4097u, 12287u, 12288u, 12301u, 36864u, 49000u}) {
      std::span<const uint8_t> s(data.data() + offset, len);
      ASSERT_EQ(fmt::Crc32cInstruction(s, 0x51ed270bu), fmt::Crc32cPortable(s, 0x51ed270bu))
          << "offset " << offset << " len " << len;
    }
  }
}

// Folding (AVX-512 + VPCLMULQDQ) takes inputs of 512 bytes and more in 256-byte steps, then
// 16-byte blocks, then hands the last 0-15 bytes to the instruction: every length from 480 to
// 4 KiB, at every offset 0-15, from zero and non-zero registers, and long inputs. On a CPU
// without those instructions this checks the instruction path again, and says so.
TEST(Crc32cTest, FoldingMatchesPortableAtEveryLength) {
  if (!fmt::Crc32cFoldAvailable())
    std::cout << "[ NOTE     ] this CPU lacks AVX-512/VPCLMULQDQ: Crc32cHardware does not fold "
                 "here, so this test checks the crc32-instruction path only\n";
  std::mt19937 rng(17);
  std::vector<uint8_t> data(70000);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t len = 480; len <= 4096; ++len) {
      std::span<const uint8_t> s(data.data() + offset, len);
      ASSERT_EQ(fmt::Crc32cHardware(s, 0), fmt::Crc32cPortable(s, 0))
          << "offset " << offset << " len " << len;
      if (len % 7 == 0) {
        ASSERT_EQ(fmt::Crc32cHardware(s, 0xdeadbeefu), fmt::Crc32cPortable(s, 0xdeadbeefu))
            << "offset " << offset << " len " << len;
      }
    }
  }
  for (size_t len : {65536u, 65537u, 69999u - 3u}) {
    std::span<const uint8_t> s(data.data() + 3, len);
    ASSERT_EQ(fmt::Crc32cHardware(s, 0x0badf00du), fmt::Crc32cPortable(s, 0x0badf00du)) << len;
  }
  // All-zero and all-one data (no lucky cancellation from random bytes).
  std::vector<uint8_t> zeros(3000, 0), ones(3000, 0xff);
  EXPECT_EQ(fmt::Crc32cHardware(zeros, 0), fmt::Crc32cPortable(zeros, 0));
  EXPECT_EQ(fmt::Crc32cHardware(ones, 0x1u), fmt::Crc32cPortable(ones, 0x1u));
}

TEST(Crc32cTest, Continues) {
  const auto all = Bytes("the quick brown fox jumps over the lazy dog");
  for (size_t cut = 0; cut <= all.size(); ++cut) {
    std::span<const uint8_t> a(all.data(), cut), b(all.data() + cut, all.size() - cut);
    EXPECT_EQ(Crc32c(b, Crc32c(a)), Crc32c(all));
    EXPECT_EQ(fmt::Crc32cPortable(b, fmt::Crc32cPortable(a)), Crc32c(all));
  }
}

// The fused pass gives the CRC of the bytes and the finiteness of the halves in them that two
// separate passes give: lengths around its 12 KiB blocks, a non-finite value in the first block,
// a later block, the last half, or only in an odd trailing byte (not a half: still finite).
TEST(Crc32cTest, FiniteHalvesMatchesSeparatePasses) {
  std::mt19937 rng(5);
  std::vector<uint8_t> data(3 * 12288 + 64);
  for (size_t i = 0; i < data.size(); i += 2) {
    const uint16_t h = static_cast<uint16_t>(rng()) & 0xbfff;  // exponent never all ones
    std::memcpy(&data[i], &h, 2);
  }
  int non_finite_cases = 0;
  for (size_t len : {0u, 2u, 7u, 12286u, 12288u, 12290u, 24576u, 24577u, 36866u}) {
    for (long bad_at : {-1L, 0L, 12290L, long(len) - 2, long(len) - 1}) {
      if (bad_at >= long(len)) continue;
      std::vector<uint8_t> d(data.begin(), data.begin() + len);
      if (bad_at >= 0 && bad_at % 2 == 0 && size_t(bad_at) + 2 <= len) {
        const uint16_t inf = 0x7c00;
        std::memcpy(&d[bad_at], &inf, 2);
      } else if (bad_at >= 0) {
        d[bad_at] = 0x7c;  // the high byte of the last half, or a lone trailing byte (finite)
      }
      bool finite = false;
      const uint32_t crc = fmt::Crc32cFiniteHalves(d, 0x5eedu, &finite);
      EXPECT_EQ(crc, Crc32c(d, 0x5eedu)) << "len " << len << " bad at " << bad_at;
      const bool want = baseline::HalvesFinite(d.data(), d.size() / 2);
      EXPECT_EQ(finite, want) << "len " << len << " bad at " << bad_at;
      non_finite_cases += !want;
    }
  }
  EXPECT_GE(non_finite_cases, 10);  // the cases above do reach the non-finite branch
}

// The vector and word loops of HalvesFinite against the scalar definition: every length up to
// 100 halves at odd and even byte offsets, with one non-finite value (+inf, -inf, NaN) at each
// position, or none.
TEST(HalvesFiniteTest, MatchesTheScalarDefinition) {
  std::mt19937 rng(9);
  std::vector<uint16_t> halves(100);
  for (auto& h : halves) h = static_cast<uint16_t>(rng()) & 0xbbff;  // finite
  const uint16_t specials[] = {0x7c00, 0xfc00, 0x7e01};
  int refused = 0;
  for (size_t offset : {0u, 1u}) {
    for (size_t n = 0; n <= halves.size(); ++n) {
      for (long bad = -1; bad < long(n); ++bad) {
        std::vector<uint8_t> d(offset + 2 * n, 0xff);
        if (n > 0) std::memcpy(d.data() + offset, halves.data(), 2 * n);
        if (bad >= 0) std::memcpy(&d[offset + 2 * bad], &specials[bad % 3], 2);
        const bool want = baseline::HalvesFiniteRef(d.data() + offset, n);
        ASSERT_EQ(baseline::HalvesFinite(d.data() + offset, n), want)
            << "offset " << offset << " n " << n << " non-finite at " << bad;
        refused += !want;
      }
    }
  }
  EXPECT_EQ(refused, 2 * (100 * 101 / 2));  // every planted value is found by the reference
}

TEST(StreamFormatTest, LittleEndianLayout) {
  ChunkHeader h;
  h.layer = 0x01020304;
  h.kind = KvKind::kValue;
  h.level = 5;
  h.codec_id = 0x0607;
  h.token_begin = 0x08090a0b;
  h.tokens = 0x0c0d0e0f;
  h.payload_bytes = 0x10111213;
  h.payload_crc32c = 0x14151617;
  uint8_t b[kChunkHeaderBytes];
  fmt::EncodeChunkHeader(h, 0x18191a1b, b);
  const uint8_t expect[36] = {'K',  'V',  'W',  'C',  4,    3,    2,    1,    1,
                              5,    7,    6,    0x0b, 0x0a, 9,    8,    0x0f, 0x0e,
                              0x0d, 0x0c, 0x13, 0x12, 0x11, 0x10, 0x17, 0x16, 0x15,
                              0x14, 0x1b, 0x1a, 0x19, 0x18, 0,    0,    0,    0};
  EXPECT_EQ(0, std::memcmp(b, expect, 36));
  EXPECT_EQ(fmt::LoadLE32(b + 36), Crc32c({b, 36}));
  const fmt::ChunkWire w = fmt::DecodeChunkHeader(b);
  EXPECT_EQ(w.h.layer, h.layer);
  EXPECT_EQ(w.h.tokens, h.tokens);
  EXPECT_EQ(w.stream_tag, 0x18191a1bu);
}

}  // namespace
}  // namespace kvwire
