// Stable numeric ids of the baseline codec families, written in every chunk header
// (docs/FORMAT.md). An id names a family; the family's parameters (bit-width, group, window,
// rank, seed) travel in the canonical spec string of the stream header. Never renumber an id;
// retire it instead.
//
//   id  family          spec examples                  bits/element (all-in, per chunk)
//   --  --------------  -----------------------------  ---------------------------------------
//    1  fp16            fp16                           16
//    2  int8            int8                           8 + 16/head_dim
//    3  q8_0            q8_0                           8.5
//    4  q4_0            q4_0                           4.5
//    5  kivi<b>         kivi2:g=32,r=32, kivi4         b + 32/G (quantized tokens), 16 (window),
//                                                      + 32 bits per chunk (quantized-token count)
//    6  int<b>-token    int2-token .. int8-token       b + 32/head_dim (+ padding to a byte)
//    7  int<b>-channel  int2-channel .. int8-channel   b + 32/tokens (+ padding to a byte)
//    8  rank-<r>        rank-8, rank-16, rank-32       16 r/head_dim + 16 (r + 1)/tokens
//    9  turbo<b>        turbo2 .. turbo4, turbo3:seed=7  b + 16/head_dim (+ padding to a byte)
//   16  fraqtl@B        fraqtl@2.5, fraqtl@1:sink=1      B (target, all-in; needs a profile)
//
// Ids 1-15 are reserved for baselines; other codecs (fraqtl, ...) take ids from 16 up.
#pragma once

#include <cstdint>

namespace kvwire::baseline {

inline constexpr uint16_t kIdFp16 = 1;
inline constexpr uint16_t kIdInt8 = 2;
inline constexpr uint16_t kIdQ8_0 = 3;
inline constexpr uint16_t kIdQ4_0 = 4;
inline constexpr uint16_t kIdKivi = 5;
inline constexpr uint16_t kIdIntToken = 6;
inline constexpr uint16_t kIdIntChannel = 7;
inline constexpr uint16_t kIdRank = 8;
inline constexpr uint16_t kIdTurbo = 9;
inline constexpr uint16_t kIdFraqtl = 16;  // src/codec/fraqtl_codec.cpp

}  // namespace kvwire::baseline
