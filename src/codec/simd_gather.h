// Eight 32-bit table lookups as one AVX2 vector, by eight scalar loads instead of
// vpgatherdd / vgatherdps. The values are the same; on the AMD EPYC (Zen 4 class, AVX-512) that
// kvwire's CPU numbers come from, the loads cost less: the fraqtl decoder, whose rANS states wait
// on their lookups, took a fifth less time (docs/benchmarks.md, "CPU codec speed").
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

namespace kvwire::simd {

__attribute__((target("avx2"), always_inline)) inline __m256i GatherU32(const uint32_t* base,
                                                                       __m256i idx) {
  alignas(32) int32_t at[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(at), idx);
  const __m128i lo = _mm_setr_epi32(static_cast<int>(base[at[0]]), static_cast<int>(base[at[1]]),
                                    static_cast<int>(base[at[2]]), static_cast<int>(base[at[3]]));
  const __m128i hi = _mm_setr_epi32(static_cast<int>(base[at[4]]), static_cast<int>(base[at[5]]),
                                    static_cast<int>(base[at[6]]), static_cast<int>(base[at[7]]));
  return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

__attribute__((target("avx2"), always_inline)) inline __m256 GatherF32(const float* base,
                                                                      __m256i idx) {
  alignas(32) int32_t at[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(at), idx);
  const __m128 lo = _mm_setr_ps(base[at[0]], base[at[1]], base[at[2]], base[at[3]]);
  const __m128 hi = _mm_setr_ps(base[at[4]], base[at[5]], base[at[6]], base[at[7]]);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

}  // namespace kvwire::simd

#endif
