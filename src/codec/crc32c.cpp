// CRC32C (Castagnoli; reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF), as in
// iSCSI (RFC 3720) and ext4. `crc` is the value a previous call returned (0 to start), so
// Crc32c(b, Crc32c(a)) == Crc32c(a || b).
//
// The build targets x86-64-v2, which has SSE4.2: the crc32 instruction does 8 bytes per
// instruction. The slicing-by-8 table version is the fallback for other targets and the
// reference the hardware path is tested against.
#include <array>
#include <cstring>

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

uint32_t Crc32cHardware(std::span<const uint8_t> data, uint32_t crc) {
  uint64_t c = ~crc;
  const uint8_t* p = data.data();
  size_t n = data.size();
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

}  // namespace format

uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc) {
#if defined(__SSE4_2__)
  return format::Crc32cHardware(data, crc);
#else
  return format::Crc32cPortable(data, crc);
#endif
}

}  // namespace kvwire
