// Kernels and constants of fraqtl's table-driven payload (entropy=rans, payload version 2,
// docs/FORMAT.md 6.8.1), shared by fraqtl_rans_encode.cpp, fraqtl_rans_decode.cpp and
// fraqtl_rans_tables.cpp. Not installed.
//
// Every rotation output is one chain of fused multiply-adds in ascending order: the scalar
// kernels use std::fma, the AVX2 ones _mm256_fmadd_ps, so both give the same floats.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "codec/fraqtl_math.h"
#include "codec/rans.h"
#include "codec/scratch.h"

namespace kvwire::fraqtl::internal {

// Distortion of a protected (fp16) coefficient in the allocation (as fraqtl_alloc.cpp).
inline constexpr double kProtectedDistortion = 1e-7;
// Cost of a protected coefficient: two bytes of the uniform table.
inline constexpr uint64_t kProtectedCost = uint64_t{16} * rans::kCostOne;
inline constexpr uint8_t kFlagRepeats = 1;  // payload flags bit 0: a repeat section follows

// out[0, n) = sum over j in [0, d) of m[j * n + c] * x[j] (m: [d][n], the kept rows of F
// transposed), each out[c] a chain of fused multiply-adds from 0 in ascending j. n is a
// multiple of 8.
void ProjectScalar(const float* m, const float* x, size_t d, size_t n, float* out);

// out[0, d) = mean + sum over c < k of rows[c][0, d) * z[c] (rows: the coded columns of G, each
// [d]), the sum a chain of fused multiply-adds from 0 in ascending c (MulRowsSimd is the vector
// version).
void AccumulateScalar(const float* const* rows, const float* z, size_t k, const float* mean,
                      size_t d, float* out);

// Up to kMulRows rows at once: out[r][c] = add[c] (when add is given) + the sum over j in
// [0, k) of a[j][c] * x[r][j], the sum a chain of fused multiply-adds from 0 in ascending j, for
// c in [0, n), n a multiple of 8. The projection (a = the kept rows of F transposed, x = rows)
// and the inverse (a = the coded columns of G, x = coefficients) are both this product; rows
// that share `a` share its loads, so several rows cost little more than one. The same floats
// as ProjectScalar and AccumulateScalar row by row, whichever version runs.
inline constexpr int kMulRows = 4;
// With AVX2 and FMA (requires HaveAvx2Fma()).
void MulRowsAvx2(const float* const* a, size_t k, const float* const* x, int rows, size_t n,
                 const float* add, float* const* out);
// With AVX-512F, 16 columns to a register (requires HaveAvx512()).
void MulRowsAvx512(const float* const* a, size_t k, const float* const* x, int rows, size_t n,
                   const float* add, float* const* out);
// MulRowsAvx512 on coefficients that are dequantized as they are read: row r's value j is
// x[r][j] for j < prefix, else pool[off[j - prefix] + sym[r][j - prefix]] (DequantizeAvx2's
// value). The same floats as DequantizeAvx2 followed by MulRowsAvx512, one pass fewer.
void MulRowsDequantAvx512(const float* const* a, size_t k, const float* const* x, size_t prefix,
                          const float* pool, const int32_t* off, const uint32_t* const* sym,
                          int rows, size_t n, const float* add, float* const* out);
// MulRowsAvx512 on rows that are centred as they are read: row r's value j is
// x[r][j] - center[j] (one float subtraction). The same floats as subtracting into a copy and
// then the product, without the copy.
void MulRowsCenteredAvx512(const float* const* a, size_t k, const float* const* x,
                           const float* center, int rows, size_t n, float* const* out);
// The widest of the two this CPU has (requires HaveAvx2Fma()).
void MulRowsSimd(const float* const* a, size_t k, const float* const* x, int rows, size_t n,
                 const float* add, float* const* out);

// out[c] = pool[off[c] + sym[c]] for c < k: the coefficients of a row from its symbols, each
// direction's codebook (already times sigma) at pool + off[c]. Gathers eight at a time.
void DequantizeAvx2(const float* pool, const int32_t* off, const uint32_t* sym, size_t k,
                    float* out);

// rope.Rotate(x, c, s, undo) with AVX2 where the CPU has it: the same double products (exact),
// the same double sum and the same rounding to float, four pairs at a time.
void RopeRotate(const Rope& rope, float* x, const float* c, const float* s, bool undo);
// Its versions: four pairs at a time (requires HaveAvx2()), eight (requires HaveAvx512()).
void RopeRotateAvx2(const Rope& rope, float* x, const float* c, const float* s, bool undo);
void RopeRotateAvx512(const Rope& rope, float* x, const float* c, const float* s, bool undo);

// rope.Angles for positions [first, first + n): position first + t's cos half, then sin half,
// at out + t * 2 * (rope_dim / 2): the same floats. With AVX-512, eight frequencies at a time:
// a polynomial sincos in double whose error (below 2^-50) is far inside the margin it is
// tested with (2^-40 of the value, or 2^-46), and the float that every value within that
// margin rounds to; where the margin straddles two floats (about one value in 30,000), or the
// angle is too large to reduce this way, the lane is computed as Rope::Angles computes it.
void RopeAnglesInto(const Rope& rope, int64_t first, size_t n, float* out);
// The AVX-512 version (requires HaveAvx512() and rope_dim / 2 a multiple of 8).
void RopeAnglesAvx512(const Rope& rope, int64_t first, size_t n, float* out);

bool HaveAvx2();
bool HaveAvx2Fma();
// AVX-512F (with AVX2 and FMA).
bool HaveAvx512();
// AVX2 and F16C.
bool HaveAvx2F16c();

// out[i] = the float of the fp16 value in[i], i < n; false when one is not finite (inf or NaN;
// out is still written). F16C where the CPU has it.
bool HalvesToFloatsFinite(const uint16_t* in, size_t n, float* out);

// out[i] = HalfSaturate(in[i]) for i < n (the value clamped to +-65504, then rounded to the
// nearest fp16, ties to even): the protected coefficients of a column, eight at a time with
// F16C where the CPU has it.
void SaturateToHalves(const float* in, size_t n, uint16_t* out);

// out[c] = the fp16 value whose bytes are the symbols q[2c] (low) and q[2c + 1] (high), each
// < 256, for c < n: the coefficients of protected directions. False when one is not finite (out
// is then unspecified). Requires HaveAvx2F16c().
bool HalvesFromByteSymbolsF16c(const uint32_t* q, size_t n, float* out);

// out[c] = enc[c] + the symbol of token t in column c, the column at base + off[c] (symbols of
// consecutive tokens adjacent), for c < n: a token's table entries, eight columns at a time.
// Requires HaveAvx2().
void FlattenSymbolsAvx2(const uint16_t* base, const int32_t* off, const rans::EncSym* const* enc,
                        size_t n, size_t t, const rans::EncSym** out);

// The largest |x[i]| over i < n (0 for n = 0); x finite. The maximum is exact, so the AVX2
// and scalar versions agree whatever the order.
float MaxAbs(const float* x, size_t n);

// The key of a row's grid: its first min(d, 8) values times sc rounded to the nearest integer
// (ties to even), each saturated to 16 bits, mixed with e into 64 bits. Rows whose grids are
// equal have equal keys; the repeat search hashes rows with it and compares candidates in full.
// One definition (the scalar loop); AVX2 computes the eight values at once.
uint64_t RowGridKey(const float* x, size_t d, float sc, int32_t e);
uint64_t RowGridKeyScalar(const float* x, size_t d, float sc, int32_t e);

// The number of thresholds (2^b - 1, ascending) strictly below u.
inline uint32_t QuantizeRef(const std::vector<float>& th, float u) {
  uint32_t v = 0;
  while (v < th.size() && u > th[v]) ++v;
  return v;
}


// The number of thresholds strictly below u, found through a table of buckets instead of a
// binary search: bucket q = clamp(trunc((u - lo) * inv_w), 0, top); `start[q]` counts the
// thresholds whose own bucket is below q (all of them are below u, since the bucket is
// monotone in u), and the at most `fixups` thresholds that share u's bucket are compared one by
// one (th padded with +inf). Exact for every finite u: the same symbols as QuantizeRef.
struct QuantLut {
  float lo = 0.0f, inv_w = 0.0f, top = 0.0f;
  int fixups = -1;              // -1: no table (a binary search is as fast)
  std::vector<uint32_t> start;  // [top + 1]
  std::vector<float> th;        // the thresholds, then +inf (fixups + 1 of them)
};
QuantLut BuildQuantLut(const std::vector<float>& th, int bits);
inline uint32_t QuantBucket(const QuantLut& q, float u) {
  const float t = std::min(std::max((u - q.lo) * q.inv_w, 0.0f), q.top);
  return static_cast<uint32_t>(t);
}

// The symbols of n coefficients z[t * zs] at b bits (the number of thresholds strictly below
// z / scale, scale = sigma times g[t * gs] when g is given, 0 where scale is 0), written to
// dst[t * ds]; returns their cost (table costs `cost`), less that of the rows where skip[t * gs]
// is set (repeats: not quantized at all). The same symbols as QuantizeRef.
// `lut` (optional) is th's QuantLut.
uint64_t PriceColumn(int b, const float* z, size_t zs, size_t n, const float* th, float sigma,
                     const float* g, size_t gs, uint16_t* dst, size_t ds, const uint32_t* cost,
                     const uint8_t* skip, const QuantLut* lut = nullptr);

inline size_t RoundUp8(size_t n) { return (n + 7) & ~size_t{7}; }

// Bits of a reference to one of `u` earlier rows.
inline int RefBits(size_t u) {
  int b = 0;
  while ((size_t{1} << b) < u) ++b;
  return b;
}

}  // namespace kvwire::fraqtl::internal
