// CRC32C (Castagnoli; reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF), as in
// iSCSI (RFC 3720) and ext4. `crc` is the value a previous call returned (0 to start), so
// Crc32c(b, Crc32c(a)) == Crc32c(a || b).
//
// The build targets x86-64-v2, which has SSE4.2: the crc32 instruction does 8 bytes per
// instruction, in three interleaved lanes on long inputs. On CPUs with AVX-512 and VPCLMULQDQ
// (found at run time), inputs of 512 bytes and more are first folded by carry-less
// multiplication, 256 bytes per step. The slicing-by-8 table version is the fallback for other
// targets and the reference both fast paths are tested against.
#include <algorithm>
#include <array>
#include <cstring>

#include "codec/quant_common.h"
#include "codec/stream_format.h"
#include "kvwire/stream.h"

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif
#if defined(__SSE4_2__) && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KVWIRE_CRC_FOLD 1
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

#if defined(KVWIRE_CRC_FOLD)

// Folding with carry-less multiplication, on CPUs with VPCLMULQDQ and AVX-512 (checked at run
// time; the build's x86-64-v2 baseline has neither). The crc32 instruction does at most 8 bytes
// a cycle; folding does 256 bytes per loop turn in 16 independent 128-bit lanes.
//
// The arithmetic. A 16-byte block loaded little-endian holds its polynomial bit-reversed: the
// first byte's low bit is the highest power. Let a block be H x^64 + L (H: its first 8 bytes).
// Moving it D bits further along the message multiplies it by x^D, and modulo the CRC
// polynomial P that is H (x^(D+64) mod P) + L (x^D mod P): two products of at most 96 bits, so
// the sum fits a block again and is added to the block found D bits on. With bit-reversed
// operands, clmul(rev64(H), rev33(k)) = rev128(H k x^32); so the constants are
// rev33(x^(D+32) mod P) for H and rev33(x^(D-32) mod P) for L. (Checked against the bytewise
// CRC by the tests for every length up to 4 KiB and at many offsets.)
//
// Whatever remains after folding is one block R with R = message (mod P), the initial register
// having been added to the first 4 bytes, as a CRC register is; the CRC of R from a zero
// register is the CRC of the message.
constexpr uint64_t kPolyNormal = 0x11EDC6F41ull;

constexpr uint64_t XPowModP(unsigned n) {
  uint64_t r = 1;
  for (unsigned i = 0; i < n; ++i) {
    r <<= 1;
    if (r & (1ull << 32)) r ^= kPolyNormal;
  }
  return r;
}

constexpr uint64_t Reverse33(uint64_t v) {
  uint64_t r = 0;
  for (int i = 0; i < 33; ++i)
    if ((v >> i) & 1u) r |= 1ull << (32 - i);
  return r;
}

// The (H, L) constants that move a block D bits on.
constexpr uint64_t FoldHi(unsigned d) { return Reverse33(XPowModP(d + 32)); }
constexpr uint64_t FoldLo(unsigned d) { return Reverse33(XPowModP(d - 32)); }

constexpr size_t kFoldMinBytes = 512;

__attribute__((target("pclmul,sse4.2"))) inline __m128i Fold128(__m128i r, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(r, k, 0x00), _mm_clmulepi64_si128(r, k, 0x11));
}

// The constants for distance D in each of a register's four 128-bit lanes (computed at compile
// time: as a run-time argument, XPowModP's loop would run on every call).
template <unsigned D>
__attribute__((target("avx512f"))) inline __m512i FoldConsts512() {
  constexpr uint64_t hi = FoldHi(D), lo = FoldLo(D);
  return _mm512_set_epi64(lo, hi, lo, hi, lo, hi, lo, hi);
}

__attribute__((target("avx512f,vpclmulqdq"))) inline __m512i Fold512(__m512i r, __m512i k) {
  return _mm512_xor_si512(_mm512_clmulepi64_epi128(r, k, 0x00),
                          _mm512_clmulepi64_epi128(r, k, 0x11));
}

// Folds the whole 16-byte blocks of [p, p + n) (n >= kFoldMinBytes) with `reg` (the CRC
// register before them) and returns the register after them; *used is the bytes consumed.
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2"))) uint32_t FoldBlocks(
    const uint8_t* p, size_t n, uint32_t reg, size_t* used) {
  const __m512i k2048 = FoldConsts512<2048>();
  __m512i a0 = _mm512_loadu_si512(p);
  __m512i a1 = _mm512_loadu_si512(p + 64);
  __m512i a2 = _mm512_loadu_si512(p + 128);
  __m512i a3 = _mm512_loadu_si512(p + 192);
  a0 = _mm512_xor_si512(a0, _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, reg));
  size_t at = 256;
  for (; at + 256 <= n; at += 256) {
    a0 = _mm512_xor_si512(Fold512(a0, k2048), _mm512_loadu_si512(p + at));
    a1 = _mm512_xor_si512(Fold512(a1, k2048), _mm512_loadu_si512(p + at + 64));
    a2 = _mm512_xor_si512(Fold512(a2, k2048), _mm512_loadu_si512(p + at + 128));
    a3 = _mm512_xor_si512(Fold512(a3, k2048), _mm512_loadu_si512(p + at + 192));
  }
  // Lane j of a0 is 3 x 512 bits before lane j of a3, of a1 2 x 512, of a2 512.
  __m512i z =
      _mm512_xor_si512(Fold512(a0, FoldConsts512<1536>()), Fold512(a1, FoldConsts512<1024>()));
  z = _mm512_xor_si512(z, Fold512(a2, FoldConsts512<512>()));
  z = _mm512_xor_si512(z, a3);
  // The four lanes of z are consecutive blocks: move the first three onto the last.
  constexpr uint64_t kLo128 = FoldLo(128), kHi128 = FoldHi(128);
  constexpr uint64_t kLo256 = FoldLo(256), kHi256 = FoldHi(256);
  constexpr uint64_t kLo384 = FoldLo(384), kHi384 = FoldHi(384);
  const __m512i k_lanes =
      _mm512_set_epi64(0, 0, kLo128, kHi128, kLo256, kHi256, kLo384, kHi384);
  __m128i moved[4], last[4];
  _mm512_storeu_si512(moved, Fold512(z, k_lanes));  // lane 3: zero
  _mm512_storeu_si512(last, z);
  __m128i r = _mm_xor_si128(_mm_xor_si128(moved[0], moved[1]), _mm_xor_si128(moved[2], last[3]));
  const __m128i k128 =
      _mm_set_epi64x(static_cast<long long>(kLo128), static_cast<long long>(kHi128));
  for (; at + 16 <= n; at += 16) {
    r = _mm_xor_si128(Fold128(r, k128),
                      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + at)));
  }
  *used = at;
  uint64_t c = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(r)));
  c = _mm_crc32_u64(c, static_cast<uint64_t>(_mm_extract_epi64(r, 1)));
  return static_cast<uint32_t>(c);
}

bool FoldSupported() {
  // __builtin_cpu_init first: this may run during another object's static initialization,
  // before libgcc's own constructor has filled in the CPU model.
  static const bool ok = (__builtin_cpu_init(), true) && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("vpclmulqdq") &&
                         __builtin_cpu_supports("pclmul");
  return ok;
}

#endif  // KVWIRE_CRC_FOLD

// The crc32-instruction path over [p, p + n) from register `c`; returns the final register.
uint32_t InstructionRegister(const uint8_t* p, size_t n, uint64_t c) {
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
    c = _mm_crc32_u64(c, Load64(p));
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
  return c32;
}

}  // namespace

uint32_t Crc32cInstruction(std::span<const uint8_t> data, uint32_t crc) {
  return ~InstructionRegister(data.data(), data.size(), ~crc);
}

uint32_t Crc32cHardware(std::span<const uint8_t> data, uint32_t crc) {
  uint32_t c = ~crc;
  const uint8_t* p = data.data();
  size_t n = data.size();
#if defined(KVWIRE_CRC_FOLD)
  if (n >= kFoldMinBytes && FoldSupported()) {
    size_t used = 0;
    c = FoldBlocks(p, n, c, &used);
    p += used;
    n -= used;
  }
#endif
  return ~InstructionRegister(p, n, c);
}

bool Crc32cFoldAvailable() {
#if defined(KVWIRE_CRC_FOLD)
  return FoldSupported();
#else
  return false;
#endif
}

bool Crc32cHardwareAvailable() { return true; }

#else

uint32_t Crc32cHardware(std::span<const uint8_t> data, uint32_t crc) {
  return Crc32cPortable(data, crc);
}

uint32_t Crc32cInstruction(std::span<const uint8_t> data, uint32_t crc) {
  return Crc32cPortable(data, crc);
}

bool Crc32cHardwareAvailable() { return false; }

bool Crc32cFoldAvailable() { return false; }

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
