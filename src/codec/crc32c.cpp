// CRC32C (Castagnoli; reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF), as in
// iSCSI (RFC 3720) and ext4. `crc` is the value a previous call returned (0 to start), so
// Crc32c(b, Crc32c(a)) == Crc32c(a || b).
//
// The build targets x86-64-v2, which has SSE4.2: the crc32 instruction does 8 bytes per
// instruction, in three interleaved lanes on long inputs. The slicing-by-8 table version is the fallback for other targets and the
// reference the hardware path is tested against.
#include <algorithm>
#include <array>
#include <cstring>

#include "codec/quant_common.h"
#include "codec/stream_format.h"
#include "kvwire/stream.h"

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace kvwire {
namespace format {
namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78u;

using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPolyReflected : c >> 1;
    t[0][i] = c;
  }
  // t[k][i]: CRC of byte i followed by k zero bytes.
  for (size_t k = 1; k < 8; ++k) {
    for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xffu];
  }
  return t;
}

constexpr Tables kTables = MakeTables();

}  // namespace

uint32_t Crc32cPortable(std::span<const uint8_t> data, uint32_t crc) {
  uint32_t c = ~crc;
  const uint8_t* p = data.data();
  size_t n = data.size();
  while (n >= 8) {
    // Little-endian word assembled byte by byte: correct on any host.
    const uint32_t lo = c ^ (uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
                             (uint32_t{p[3]} << 24));
    c = kTables[7][lo & 0xff] ^ kTables[6][(lo >> 8) & 0xff] ^ kTables[5][(lo >> 16) & 0xff] ^
        kTables[4][lo >> 24] ^ kTables[3][p[4]] ^ kTables[2][p[5]] ^ kTables[1][p[6]] ^
        kTables[0][p[7]];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ kTables[0][(c ^ *p++) & 0xffu];
  return ~c;
}

#if defined(__SSE4_2__)

namespace {

// Long inputs go through the crc32 instruction in three independent lanes of kLane bytes: one
// lane waits ~3 cycles per instruction for the one before, three fill the pipeline. The lanes'
// registers are then joined: with r(s, D) the register after D from state s, r is linear and
// r(s, A || B) = Shift(r(s, A)) ^ r(0, B), where Shift advances a register over kLane zero
// bytes (multiplies it by x^(8 kLane) modulo the polynomial).
constexpr size_t kLane = 4096;

struct LaneShift {
  std::array<std::array<uint32_t, 256>, 4> t;  // t[j][v]: Shift(v << 8j)
  LaneShift() {
    uint32_t basis[32];  // Shift(1 << i), by feeding kLane zero bytes
    for (int i = 0; i < 32; ++i) {
      uint32_t c = 1u << i;
      for (size_t k = 0; k < kLane; ++k) c = (c >> 8) ^ kTables[0][c & 0xffu];
      basis[i] = c;
    }
    for (int j = 0; j < 4; ++j) {
      for (uint32_t v = 0; v < 256; ++v) {
        uint32_t x = 0;
        for (int b = 0; b < 8; ++b) {
          if ((v >> b) & 1u) x ^= basis[8 * j + b];
        }
        t[j][v] = x;
      }
    }
  }
  uint32_t operator()(uint32_t c) const {
    return t[0][c & 0xffu] ^ t[1][(c >> 8) & 0xffu] ^ t[2][(c >> 16) & 0xffu] ^ t[3][c >> 24];
  }
};

uint64_t Load64(const uint8_t* p) {
  uint64_t word;
  std::memcpy(&word, p, 8);  // x86 is little-endian, as the CRC's byte order wants
  return word;
}

}  // namespace

uint32_t Crc32cHardware(std::span<const uint8_t> data, uint32_t crc) {
  uint64_t c = ~crc;
  const uint8_t* p = data.data();
  size_t n = data.size();
  if (n >= 3 * kLane) {
    static const LaneShift shift;
    do {
      uint64_t a = c, b = 0, d = 0;
      for (size_t i = 0; i < kLane; i += 8) {
        a = _mm_crc32_u64(a, Load64(p + i));
        b = _mm_crc32_u64(b, Load64(p + kLane + i));
        d = _mm_crc32_u64(d, Load64(p + 2 * kLane + i));
      }
      c = shift(shift(static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b)) ^
          static_cast<uint32_t>(d);
      p += 3 * kLane;
      n -= 3 * kLane;
    } while (n >= 3 * kLane);
  }
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);  // x86 is little-endian, as the CRC's byte order wants
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<uint32_t>(c);
  if (n >= 4) {
    uint32_t word;
    std::memcpy(&word, p, 4);
    c32 = _mm_crc32_u32(c32, word);
    p += 4;
    n -= 4;
  }
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}

bool Crc32cHardwareAvailable() { return true; }

#else

uint32_t Crc32cHardware(std::span<const uint8_t> data, uint32_t crc) {
  return Crc32cPortable(data, crc);
}

bool Crc32cHardwareAvailable() { return false; }

#endif

uint32_t Crc32cFiniteHalves(std::span<const uint8_t> data, uint32_t crc, bool* finite) {
  // 12 KiB: one step of the three-lane CRC, and well inside L1 for the finiteness check after.
  constexpr size_t kBlock = 12 << 10;
  bool ok = true;
  for (size_t at = 0; at < data.size(); at += kBlock) {
    const std::span<const uint8_t> block = data.subspan(at, std::min(kBlock, data.size() - at));
    crc = Crc32c(block, crc);
    ok = ok && baseline::HalvesFinite(block.data(), block.size() / 2);
  }
  *finite = ok;
  return crc;
}

}  // namespace format

uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc) {
#if defined(__SSE4_2__)
  return format::Crc32cHardware(data, crc);
#else
  return format::Crc32cPortable(data, crc);
#endif
}

}  // namespace kvwire
