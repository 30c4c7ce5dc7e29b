// The static rANS coder (src/codec/rans.h) and fraqtl's table-driven payload (entropy=rans,
// payload version 2).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <set>

#include "codec/fraqtl_codec_impl.h"
#include "codec/fraqtl_math.h"
#include "codec/fraqtl_rans_kernels.h"
#include "codec/fraqtl_toy.h"
#include "codec/lloyd_max.h"
#include "codec/quant_common.h"
#include "codec/rans.h"
#include "kvwire/stream.h"

namespace kvwire {
namespace {

using namespace fraqtl_toy;

uint32_t LoadU32Le(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

TEST(Rans, SymbolCostIsLog2) {
  EXPECT_EQ(rans::SymbolCost(4096), 0u);
  EXPECT_EQ(rans::SymbolCost(2048), rans::kCostOne);
  EXPECT_EQ(rans::SymbolCost(1), 12 * rans::kCostOne);
  for (uint32_t f = 1; f <= 4096; ++f) {
    const double exact = -std::log2(f / 4096.0) * rans::kCostOne;
    EXPECT_NEAR(rans::SymbolCost(f), exact, 1.0) << f;
    if (f > 1) {
      EXPECT_LE(rans::SymbolCost(f), rans::SymbolCost(f - 1));
    }
  }
}

TEST(Rans, NormalizeKeepsEveryCellAndSums) {
  const std::vector<double> skewed = {1e-9, 0.0, 0.5, 0.49, 1e-12, 0.01};
  const auto f = rans::NormalizeFrequencies(skewed);
  uint32_t sum = 0;
  for (uint16_t v : f) {
    EXPECT_GE(v, 1);
    sum += v;
  }
  EXPECT_EQ(sum, rans::kProbScale);
  EXPECT_GT(f[2], f[3]);
  rans::Table t;
  EXPECT_TRUE(rans::BuildTable(f, &t));
  EXPECT_FALSE(rans::BuildTable(std::vector<uint16_t>{4096}, &t));    // one symbol
  EXPECT_FALSE(rans::BuildTable(std::vector<uint16_t>{4095, 0}, &t));  // a zero
  EXPECT_FALSE(rans::BuildTable(std::vector<uint16_t>{100, 100}, &t)); // wrong sum
}

// Symbols of frequency 1 (the encoder's division by 1, which PutAll does without a branch)
// in every lane and after every kind of state: PutAll writes Put's bytes, and they decode.
TEST(Rans, FrequencyOneSymbolsEncodeAsPutDoes) {
  std::vector<double> p = {1e-9, 0.5, 1e-9, 0.25, 0.25, 1e-9};
  rans::Table t;
  ASSERT_TRUE(rans::BuildTable(rans::NormalizeFrequencies(p), &t));
  ASSERT_EQ(t.freq[0], 1u);
  ASSERT_EQ(t.freq[5], 1u);
  std::mt19937 rng(3);
  std::vector<uint32_t> sym;
  for (int k = 0; k < 997; ++k) sym.push_back(rng() % 4 == 0 ? (rng() % 2 ? 0 : 5) : rng() % 6);
  rans::BlockEncoder enc;
  enc.Reserve(sym.size());
  for (size_t k = sym.size(); k-- > 0;) enc.Put(static_cast<uint32_t>(k), sym[k], t);
  std::vector<uint8_t> want, got;
  enc.Finish(&want);
  std::vector<const rans::EncSym*> entries;
  for (uint32_t s : sym) entries.push_back(&t.enc[s]);
  for (bool vector : {false, true}) {  // the scalar steps, and AVX-512 groups where there is
    std::vector<uint8_t> bytes;
    enc.PutAll(entries.data(), entries.size(), vector);
    enc.Finish(&bytes);
    EXPECT_EQ(bytes, want) << "vector " << vector;
    got = bytes;
  }
  rans::BlockDecoder dec(got);
  std::vector<uint32_t> offs(sym.size(), 0), out(sym.size());
  dec.Decode(t.slots.data(), offs.data(), offs.size(), out.data());
  EXPECT_EQ(out, sym);
  EXPECT_TRUE(dec.Ok());
}

// Random symbols under random tables of every size, each symbol with its own table: the
// decoder (scalar, AVX2 groups, several blocks side by side) gets them back, ends in its
// initial state, and the block's size is what the costs said within a few bytes.
TEST(Rans, RoundTripSideBySideAndSizeFromCosts) {
  std::mt19937 rng(5);
  std::vector<rans::Table> tables;
  std::vector<uint32_t> pool;
  std::vector<uint32_t> offset;
  for (int b = 1; b <= 8; ++b) {
    std::vector<double> p(size_t{1} << b);
    std::exponential_distribution<double> e(1.0);
    for (double& v : p) v = e(rng);
    if (b == 8) p[3] = 1e-9;  // a symbol of frequency 1 (the encoder's division by 1)
    rans::Table t;
    ASSERT_TRUE(rans::BuildTable(rans::NormalizeFrequencies(p), &t));
    offset.push_back(static_cast<uint32_t>(pool.size()));
    pool.insert(pool.end(), t.slots.begin(), t.slots.end());
    tables.push_back(std::move(t));
  }
  constexpr int kBlocks = 3;
  std::vector<std::vector<uint32_t>> sym(kBlocks), tab(kBlocks);
  std::vector<std::vector<uint8_t>> bytes(kBlocks);
  for (int s = 0; s < kBlocks; ++s) {
    const size_t n = 1000 + 333 * s;  // not a multiple of the lanes
    uint64_t cost = 0;
    for (size_t k = 0; k < n; ++k) {
      const uint32_t t = rng() % tables.size();
      // Draw from the table's own distribution so the size check is meaningful.
      const uint32_t slot = rng() % rans::kProbScale;
      uint32_t v = 0;
      while (tables[t].cum[v] + tables[t].freq[v] <= slot) ++v;
      sym[s].push_back(v);
      tab[s].push_back(t);
      cost += tables[t].cost[v];
    }
    rans::BlockEncoder enc;
    enc.Reserve(n);
    for (size_t k = n; k-- > 0;) enc.Put(static_cast<uint32_t>(k), sym[s][k], tables[tab[s][k]]);
    enc.Finish(&bytes[s]);
    // PutAll of the same symbols writes the same bytes.
    std::vector<const rans::EncSym*> entries;
    for (size_t k = 0; k < n; ++k) entries.push_back(&tables[tab[s][k]].enc[sym[s][k]]);
    for (bool vector : {false, true}) {
      std::vector<uint8_t> all;
      enc.PutAll(entries.data(), n, vector);
      enc.Finish(&all);
      EXPECT_EQ(all, bytes[s]) << "block " << s << " vector " << vector;
    }
    const double predicted = 24.0 + static_cast<double>(cost) / rans::kCostOne / 8.0;
    EXPECT_NEAR(static_cast<double>(bytes[s].size()), predicted, 16.0);
  }
  // One at a time, then side by side in uneven pieces.
  for (int s = 0; s < kBlocks; ++s) {
    rans::BlockDecoder dec(bytes[s]);
    std::vector<uint32_t> offs, out(sym[s].size());
    for (uint32_t t : tab[s]) offs.push_back(offset[t]);
    dec.Decode(pool.data(), offs.data(), offs.size(), out.data());
    EXPECT_EQ(out, sym[s]);
    EXPECT_TRUE(dec.Ok());
  }
  std::vector<rans::BlockDecoder> decs;
  for (int s = 0; s < kBlocks; ++s) decs.emplace_back(bytes[s]);
  std::vector<std::vector<uint32_t>> offs(kBlocks), out(kBlocks);
  for (int s = 0; s < kBlocks; ++s) {
    for (uint32_t t : tab[s]) offs[s].push_back(offset[t]);
    out[s].resize(sym[s].size());
  }
  size_t done[kBlocks] = {};
  for (size_t piece : {size_t{5}, size_t{64}, size_t{3}, size_t{200}, size_t{4000}}) {
    rans::BlockDecoder* dp[kBlocks];
    const uint32_t* op[kBlocks];
    uint32_t* o[kBlocks];
    size_t n[kBlocks];
    for (int s = 0; s < kBlocks; ++s) {
      dp[s] = &decs[s];
      n[s] = std::min(piece + s, sym[s].size() - done[s]);
      op[s] = offs[s].data() + done[s];
      o[s] = out[s].data() + done[s];
      done[s] += n[s];
    }
    rans::BlockDecoder::DecodeSideBySide(dp, kBlocks, pool.data(), op, n, o);
  }
  for (int s = 0; s < kBlocks; ++s) {
    EXPECT_EQ(done[s], sym[s].size());
    EXPECT_EQ(out[s], sym[s]) << s;
    EXPECT_TRUE(decs[s].Ok()) << s;
  }
  // A changed byte, a missing word or extra bytes leave a block that does not end cleanly.
  for (size_t at : {size_t{0}, size_t{7}, size_t{40}, bytes[0].size() - 1}) {
    std::vector<uint8_t> bad = bytes[0];
    bad[at] ^= 0x10;
    rans::BlockDecoder dec(bad);
    std::vector<uint32_t> offs0, o(sym[0].size());
    for (uint32_t t : tab[0]) offs0.push_back(offset[t]);
    dec.Decode(pool.data(), offs0.data(), offs0.size(), o.data());
    EXPECT_FALSE(dec.Ok() && o == sym[0]) << "byte " << at;
  }
  for (size_t cut : {size_t{2}, size_t{4}}) {
    std::vector<uint8_t> bad(bytes[0].begin(), bytes[0].end() - static_cast<long>(cut));
    rans::BlockDecoder dec(bad);
    std::vector<uint32_t> offs0, o(sym[0].size());
    for (uint32_t t : tab[0]) offs0.push_back(offset[t]);
    dec.Decode(pool.data(), offs0.data(), offs0.size(), o.data());
    EXPECT_FALSE(dec.Ok());
  }
}

// The bucket table finds the same symbol as the threshold count for every value: the Gaussian
// codebooks and random calibrated-like ones, values on, beside and between the thresholds,
// tiny and huge ones; through PriceColumn (AVX2 where present) with and without the table.
TEST(FraqtlRans, BucketQuantizerEqualsTheThresholdCount) {
  std::mt19937 rng(11);
  std::vector<std::vector<float>> books;
  for (int b = 1; b <= 8; ++b) books.push_back(baseline::GaussianLloydMax(b).thresholds);
  for (int b = 2; b <= 8; ++b) {
    for (int rep = 0; rep < 4; ++rep) {
      std::normal_distribution<float> nd(0.0f, rep == 3 ? 1e-3f : 1.0f);
      std::vector<float> th((size_t{1} << b) - 1);
      for (float& t : th) t = nd(rng);
      std::sort(th.begin(), th.end());
      if (rep == 2 && th.size() > 4) th[2] = std::nextafter(th[1], 1e30f);  // a tiny gap
      books.push_back(th);
    }
  }
  int with_table = 0;
  for (const std::vector<float>& th : books) {
    const int b = static_cast<int>(std::lround(std::log2(th.size() + 1)));
    const fraqtl::internal::QuantLut lut = fraqtl::internal::BuildQuantLut(th, b);
    with_table += lut.fixups >= 0;
    // The Gaussian codebooks from 3 bits up (fraqtl's default) get a table.
    if (&th - books.data() < 8 && b >= 3) {
      EXPECT_GE(lut.fixups, 0) << "bits " << b;
    }
    std::vector<float> z;
    for (float t : th) {
      for (float v : {t, std::nextafter(t, -1e30f), std::nextafter(t, 1e30f)}) z.push_back(v);
    }
    std::normal_distribution<float> wide(0.0f, 3.0f);
    for (int i = 0; i < 2000; ++i) z.push_back(wide(rng) * (th.back() - th.front() + 1e-6f));
    for (float v : {0.0f, -0.0f, 1e30f, -1e30f, 3e38f, -3e38f, 1e-40f}) z.push_back(v);
    while (z.size() % 8 != 5) z.push_back(0.5f);  // a tail beside whole groups
    std::vector<uint32_t> cost(size_t{1} << b);
    for (size_t v = 0; v < cost.size(); ++v) cost[v] = static_cast<uint32_t>(v * 7 + 1);
    uint64_t want_cost = 0;
    std::vector<uint16_t> want(z.size()), got(z.size()), got_lut(z.size());
    for (size_t i = 0; i < z.size(); ++i) {
      want[i] = static_cast<uint16_t>(fraqtl::internal::QuantizeRef(th, z[i]));
      want_cost += cost[want[i]];
    }
    const uint64_t c0 = fraqtl::internal::PriceColumn(b, z.data(), 1, z.size(), th.data(), 1.0f,
                                                      nullptr, 1, got.data(), 1, cost.data(),
                                                      nullptr);
    const uint64_t c1 = fraqtl::internal::PriceColumn(b, z.data(), 1, z.size(), th.data(), 1.0f,
                                                      nullptr, 1, got_lut.data(), 1, cost.data(),
                                                      nullptr, &lut);
    EXPECT_EQ(got, want) << "bits " << b;
    EXPECT_EQ(got_lut, want) << "bits " << b << ", fixups " << lut.fixups;
    EXPECT_EQ(c0, want_cost);
    EXPECT_EQ(c1, want_cost);
  }
  EXPECT_GE(with_table, 12);  // the table is used, not only the search
}

// Pricing through every kernel (contiguous and strided, the vector ones; with gains and
// skipped rows, the scalar one) at every width, with tails of every length: the
// symbols of QuantizeRef and their exact cost sum. Costs near their largest (2^20), over more
// coefficients than a lane may sum before it is flushed, so a sum that wraps shows. (GCC 12 at
// -O3 was seen to drop terms of a scalar loop that sums cost[comparison]: this checks the
// tails, where such loops run.)
TEST(FraqtlRans, ColumnsPriceExactlyThroughEveryKernel) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.5f);
  for (int b = 1; b <= 8; ++b) {
    const std::vector<float> th = baseline::GaussianLloydMax(b).thresholds;
    const fraqtl::internal::QuantLut lut = fraqtl::internal::BuildQuantLut(th, b);
    std::vector<uint32_t> cost(size_t{1} << b);
    for (size_t v = 0; v < cost.size(); ++v) cost[v] = (1u << 20) - 1 - static_cast<uint32_t>(v);
    for (size_t n : {size_t{16 * 1024 * 3 + 13}, size_t{1}, size_t{4}, size_t{7}, size_t{8},
                     size_t{13}, size_t{15}, size_t{16}, size_t{21}, size_t{31}, size_t{45}}) {
      std::vector<float> z(n);
      for (float& v : z) v = nd(rng);
      std::vector<float> z2(2 * n), ones(n, 1.0f);
      for (size_t i = 0; i < n; ++i) z2[2 * i] = z[i];
      const std::vector<uint8_t> keep(n, 0);
      for (float sigma : {1.0f, 0.37f, 0.0f}) {
        uint64_t want_cost = 0;
        std::vector<uint16_t> want(n);
        for (size_t i = 0; i < n; ++i) {
          want[i] = static_cast<uint16_t>(
              fraqtl::internal::QuantizeRef(th, sigma > 0.0f ? z[i] / sigma : 0.0f));
          want_cost += cost[want[i]];
        }
        const std::string where = "bits " + std::to_string(b) + " n " + std::to_string(n) +
                                  " sigma " + std::to_string(sigma);
        for (const fraqtl::internal::QuantLut* l :
             {static_cast<const fraqtl::internal::QuantLut*>(nullptr), &lut}) {
          std::vector<uint16_t> got(n), got2(2 * n), got3(n);
          EXPECT_EQ(fraqtl::internal::PriceColumn(b, z.data(), 1, n, th.data(), sigma, nullptr, 1,
                                                  got.data(), 1, cost.data(), nullptr, l),
                    want_cost)
              << where << " contiguous";
          EXPECT_EQ(got, want) << where << " contiguous";
          EXPECT_EQ(fraqtl::internal::PriceColumn(b, z2.data(), 2, n, th.data(), sigma, nullptr, 1,
                                                  got2.data(), 2, cost.data(), nullptr, l),
                    want_cost)
              << where << " strided";
          for (size_t i = 0; i < n; ++i) got3[i] = got2[2 * i];
          EXPECT_EQ(got3, want) << where << " strided";
          EXPECT_EQ(fraqtl::internal::PriceColumn(b, z.data(), 1, n, th.data(), sigma, ones.data(),
                                                  1, got.data(), 1, cost.data(), keep.data(), l),
                    want_cost)
              << where << " gains";
          EXPECT_EQ(got, want) << where << " gains";
        }
      }
    }
  }
}

// The gathered table entries of a token's symbols are those of the scalar loop, for list
// lengths around the eight columns a step takes, at the last token of each column too.
TEST(FraqtlRans, GatheredSymbolsEqualTheScalarLoop) {
  if (!fraqtl::internal::HaveAvx2()) GTEST_SKIP() << "SKIPPED: no AVX2 on this CPU";
  std::mt19937 rng(9);
  const size_t ld = 48, tokens = 32, columns = 21;
  std::vector<uint16_t> idx(columns * ld);
  for (uint16_t& v : idx) v = static_cast<uint16_t>(rng() % 256);
  std::vector<rans::EncSym> tables(columns * 256);
  std::vector<const rans::EncSym*> enc;
  std::vector<int32_t> off;
  for (size_t c = 0; c < columns; ++c) {
    enc.push_back(tables.data() + 256 * ((c * 7) % columns));
    off.push_back(static_cast<int32_t>(((c * 5) % columns) * ld));
  }
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{16}, size_t{21}}) {
    for (size_t t : {size_t{0}, size_t{5}, tokens - 1}) {
      std::vector<const rans::EncSym*> got(n, nullptr), want(n);
      for (size_t c = 0; c < n; ++c) want[c] = enc[c] + idx[off[c] + t];
      fraqtl::internal::FlattenSymbolsAvx2(idx.data(), off.data(), enc.data(), n, t, got.data());
      EXPECT_EQ(got, want) << "n " << n << " token " << t;
    }
  }
}

// Each vector RoPE gives the floats of Rope::Rotate, both pair layouts, both directions, and
// rope_dim not a multiple of the pairs it rotates at once (the scalar tail).
void CheckVectorRope(void (*rotate)(const fraqtl::Rope&, float*, const float*, const float*, bool),
                     const char* name) {
  SCOPED_TRACE(name);
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (uint32_t rope_dim : {6u, 8u, 16u, 40u, 48u, 64u, 128u, 100u}) {
    for (bool neox : {false, true}) {
      fraqtl::Rope rope;
      rope.theta = 10000.0;
      rope.neox = neox;
      rope.rope_dim = rope_dim;
      rope.CacheFrequencies();
      for (int64_t pos : {int64_t{0}, int64_t{1}, int64_t{77}, int64_t{4095}, int64_t{123456}}) {
        std::vector<float> c(rope_dim / 2), sn(rope_dim / 2);
        rope.Angles(pos, c.data(), sn.data());
        for (bool undo : {false, true}) {
          std::vector<float> x(rope_dim + 3);
          for (float& v : x) v = nd(rng);
          std::vector<float> want = x, got = x;
          rope.Rotate(want.data(), c.data(), sn.data(), undo);
          rotate(rope, got.data(), c.data(), sn.data(), undo);
          for (size_t i = 0; i < x.size(); ++i) {
            ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0)
                << "rope_dim " << rope_dim << (neox ? " neox" : " interleaved") << " pos " << pos
                << (undo ? " undo" : "") << " at " << i << ": " << got[i] << " vs " << want[i];
          }
        }
      }
    }
  }
}

// The repeat search's row key: the AVX2 version computes the scalar definition, rows on one
// grid share a key (values that round alike, however they differ below the grid step), and
// products too large for 16 bits (an infinite scale) saturate alike in both versions.
TEST(FraqtlRans, RowGridKeysEqualTheScalarDefinition) {
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float sc = 16384.0f;  // 2^(14 - e) for e = 0: values in (-1, 1)
  std::vector<float> x(64), y(64);
  std::set<uint64_t> keys;
  for (int trial = 0; trial < 200; ++trial) {
    for (float& v : x) v = u(rng);
    for (size_t d : {1, 5, 8, 64}) {
      EXPECT_EQ(fraqtl::internal::RowGridKey(x.data(), d, sc, 0),
                fraqtl::internal::RowGridKeyScalar(x.data(), d, sc, 0))
          << d;
    }
    // The same grid: each value moved by less than a quarter of a step.
    for (size_t j = 0; j < x.size(); ++j) {
      const float step = 1.0f / sc;
      const float on = std::nearbyint(x[j] * sc) / sc;
      y[j] = on + step * 0.25f * u(rng);
    }
    for (size_t j = 0; j < x.size(); ++j) x[j] = std::nearbyint(x[j] * sc) / sc;
    EXPECT_EQ(fraqtl::internal::RowGridKey(x.data(), 64, sc, 0),
              fraqtl::internal::RowGridKey(y.data(), 64, sc, 0));
    EXPECT_NE(fraqtl::internal::RowGridKey(x.data(), 64, sc, 0),
              fraqtl::internal::RowGridKey(x.data(), 64, sc, 1))
        << "the exponent is part of the key";
    keys.insert(fraqtl::internal::RowGridKey(x.data(), 64, sc, 0));
  }
  EXPECT_EQ(keys.size(), 200u) << "distinct grids, distinct keys";
  // An infinite scale (rows of values below 2^-113): every product saturates.
  const float inf = std::numeric_limits<float>::infinity();
  for (float& v : x) v = u(rng) * 1e-36f;
  x[3] = 0.0f;  // 0 * inf: not a number, also saturated
  EXPECT_EQ(fraqtl::internal::RowGridKey(x.data(), 64, inf, -120),
            fraqtl::internal::RowGridKeyScalar(x.data(), 64, inf, -120));
}

TEST(FraqtlRans, VectorRopeEqualsRopeRotate) {
  CheckVectorRope(fraqtl::internal::RopeRotate, "dispatched");
  if (!fraqtl::internal::HaveAvx2()) GTEST_SKIP() << "SKIPPED: no AVX2 on this CPU";
  CheckVectorRope(fraqtl::internal::RopeRotateAvx2, "avx2");
  if (!fraqtl::internal::HaveAvx512()) GTEST_SKIP() << "SKIPPED: no AVX-512F on this CPU";
  CheckVectorRope(fraqtl::internal::RopeRotateAvx512, "avx512");
}

// k rows of n values, normal with standard deviation 2, and pointers to them.
std::vector<std::vector<float>> RandomRows(size_t k, size_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<std::vector<float>> a(k, std::vector<float>(n));
  for (auto& row : a)
    for (float& v : row) v = nd(rng);
  return a;
}
std::vector<const float*> RowPointers(const std::vector<std::vector<float>>& a) {
  std::vector<const float*> p;
  for (const auto& row : a) p.push_back(row.data());
  return p;
}

// Each vector product gives AccumulateScalar's floats bit for bit, row by row, with and
// without the added mean, for widths that exercise every step of both versions (AVX2: 32- and
// 8-column pieces; AVX-512: 64-column pieces, then one to three 16-column vectors in one pass,
// the last one whole or masked to 8).
void CheckVectorProduct(void (*mul)(const float* const*, size_t, const float* const*, int, size_t,
                                    const float*, float* const*),
                        const char* name) {
  SCOPED_TRACE(name);
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (size_t n : {8u, 16u, 24u, 32u, 40u, 48u, 56u, 64u, 72u, 88u, 112u, 128u, 200u}) {
    for (size_t k : {1u, 7u, 33u}) {
      const std::vector<std::vector<float>> a = RandomRows(k, n, rng);
      const std::vector<const float*> ap = RowPointers(a);
      const std::vector<float> mean = RandomRows(1, n, rng)[0];
      for (int rows = 1; rows <= fraqtl::internal::kMulRows; ++rows) {
        std::vector<std::vector<float>> x(rows, std::vector<float>(k));
        for (auto& xr : x)
          for (float& v : xr) v = nd(rng);
        const float* adds[] = {nullptr, mean.data()};
        for (const float* add : adds) {
          std::vector<std::vector<float>> got(rows, std::vector<float>(n, -1.0f));
          const float* xs[fraqtl::internal::kMulRows];
          float* os[fraqtl::internal::kMulRows];
          for (int r = 0; r < rows; ++r) {
            xs[r] = x[r].data();
            os[r] = got[r].data();
          }
          mul(ap.data(), k, xs, rows, n, add, os);
          const std::vector<float> zero(n, 0.0f);
          for (int r = 0; r < rows; ++r) {
            std::vector<float> want(n);
            fraqtl::internal::AccumulateScalar(ap.data(), x[r].data(), k,
                                               add ? add : zero.data(), n, want.data());
            ASSERT_EQ(std::memcmp(got[r].data(), want.data(), 4 * n), 0)
                << "n " << n << " k " << k << " rows " << rows << (add ? " +mean" : "")
                << " row " << r;
          }
        }
      }
    }
  }
}

TEST(FraqtlRans, VectorProductsEqualTheScalarChain) {
  if (!fraqtl::internal::HaveAvx2Fma()) GTEST_SKIP() << "SKIPPED: no AVX2+FMA on this CPU";
  CheckVectorProduct(fraqtl::internal::MulRowsAvx2, "avx2");
}

TEST(FraqtlRans, Avx512ProductsEqualTheScalarChain) {
  if (!fraqtl::internal::HaveAvx512()) GTEST_SKIP() << "SKIPPED: no AVX-512F on this CPU";
  CheckVectorProduct(fraqtl::internal::MulRowsAvx512, "avx512");
}

// The product that dequantizes as it reads gives the floats of DequantizeAvx2 followed by the
// product, for protected prefixes of every kind (none, some, all) and every row count.
TEST(FraqtlRans, DequantizingProductEqualsDequantizeThenProduct) {
  if (!fraqtl::internal::HaveAvx512()) GTEST_SKIP() << "SKIPPED: no AVX-512F on this CPU";
  std::mt19937 rng(29);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> pool(40 * 16);
  for (float& v : pool) v = nd(rng);
  for (size_t n : {8u, 24u, 64u, 128u}) {
    for (size_t k : {1u, 9u, 40u}) {
      const std::vector<std::vector<float>> a = RandomRows(k, n, rng);
      const std::vector<const float*> ap = RowPointers(a);
      const std::vector<float> mean = RandomRows(1, n, rng)[0];
      for (size_t prefix : {size_t{0}, size_t{1}, k / 2, k}) {
        std::vector<int32_t> off(k - prefix);
        for (int32_t& o : off) o = static_cast<int32_t>(rng() % 40) * 16;
        for (int rows = 1; rows <= fraqtl::internal::kMulRows; ++rows) {
          std::vector<std::vector<float>> x(rows, std::vector<float>(k));
          std::vector<std::vector<uint32_t>> sym(rows, std::vector<uint32_t>(k - prefix));
          const float* xs[fraqtl::internal::kMulRows];
          const uint32_t* ss[fraqtl::internal::kMulRows];
          float* os[fraqtl::internal::kMulRows];
          float* ws[fraqtl::internal::kMulRows];
          std::vector<std::vector<float>> got(rows, std::vector<float>(n)), want = got;
          for (int r = 0; r < rows; ++r) {
            for (size_t j = 0; j < prefix; ++j) x[r][j] = nd(rng);
            for (uint32_t& v : sym[r]) v = rng() % 16;
            xs[r] = x[r].data();
            ss[r] = sym[r].data();
            os[r] = got[r].data();
            ws[r] = want[r].data();
          }
          fraqtl::internal::MulRowsDequantAvx512(ap.data(), k, xs, prefix, pool.data(), off.data(),
                                                 ss, rows, n, mean.data(), os);
          for (int r = 0; r < rows; ++r) {  // the two passes, into x's own values
            fraqtl::internal::DequantizeAvx2(pool.data(), off.data(), sym[r].data(), k - prefix,
                                             x[r].data() + prefix);
          }
          fraqtl::internal::MulRowsAvx512(ap.data(), k, xs, rows, n, mean.data(), ws);
          for (int r = 0; r < rows; ++r) {
            ASSERT_EQ(std::memcmp(got[r].data(), want[r].data(), 4 * n), 0)
                << "n " << n << " k " << k << " prefix " << prefix << " rows " << rows;
          }
        }
      }
    }
  }
}

// The product that centres its rows as it reads them gives the floats of the product of the
// centred copies, for every row count and for widths through each of its column pieces.
TEST(FraqtlRans, CenteringProductEqualsCenterThenProduct) {
  if (!fraqtl::internal::HaveAvx512()) GTEST_SKIP() << "SKIPPED: no AVX-512F on this CPU";
  std::mt19937 rng(31);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (size_t n : {8u, 24u, 40u, 48u, 64u, 88u, 128u}) {
    for (size_t k : {1u, 9u, 64u}) {
      const std::vector<std::vector<float>> a = RandomRows(k, n, rng);
      const std::vector<const float*> ap = RowPointers(a);
      const std::vector<float> center = RandomRows(1, k, rng)[0];
      for (int rows = 1; rows <= fraqtl::internal::kMulRows; ++rows) {
        std::vector<std::vector<float>> x(rows, std::vector<float>(k)), xc = x;
        std::vector<std::vector<float>> got(rows, std::vector<float>(n, -1.0f)), want = got;
        const float* xs[fraqtl::internal::kMulRows];
        const float* cs[fraqtl::internal::kMulRows];
        float* os[fraqtl::internal::kMulRows];
        float* ws[fraqtl::internal::kMulRows];
        for (int r = 0; r < rows; ++r) {
          for (size_t j = 0; j < k; ++j) {
            x[r][j] = nd(rng) + center[j];
            xc[r][j] = x[r][j] - center[j];
          }
          xs[r] = x[r].data();
          cs[r] = xc[r].data();
          os[r] = got[r].data();
          ws[r] = want[r].data();
        }
        fraqtl::internal::MulRowsCenteredAvx512(ap.data(), k, xs, center.data(), rows, n, os);
        fraqtl::internal::MulRowsAvx512(ap.data(), k, cs, rows, n, nullptr, ws);
        for (int r = 0; r < rows; ++r) {
          ASSERT_EQ(std::memcmp(got[r].data(), want[r].data(), 4 * n), 0)
              << "n " << n << " k " << k << " rows " << rows << " row " << r;
        }
      }
    }
  }
}

// Protected coefficients to fp16: floats spread over every exponent and sign (and the values
// around the saturation point, the subnormal halves, infinities and NaNs), in runs of every
// length up to 19 (vector body and tail), equal HalfSaturate bit for bit.
TEST(FraqtlRans, SaturatedHalvesEqualHalfSaturate) {
  std::vector<float> v;
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 4093) {
    uint32_t b = static_cast<uint32_t>(bits);
    float f;
    std::memcpy(&f, &b, 4);
    v.push_back(f);
  }
  for (float f :
       {65504.0f, 65505.0f, 65519.0f, 65520.0f, 1e30f, 5.96e-8f, 2.98e-8f, 6.1e-5f,
        std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(), 0.0f}) {
    v.push_back(f);
    v.push_back(-f);
  }
  std::vector<uint16_t> got(v.size());
  for (size_t len = 1; len <= 19; ++len) {
    for (size_t i = 0; i < v.size(); i += len) {
      const size_t n = std::min(len, v.size() - i);
      fraqtl::internal::SaturateToHalves(v.data() + i, n, got.data() + i);
    }
    for (size_t i = 0; i < v.size(); ++i) {
      ASSERT_EQ(got[i], baseline::HalfSaturate(v[i])) << "float " << v[i] << " run length " << len;
    }
  }
}

// Protected coefficients from their two byte symbols: every fp16 bit pattern, in runs of every
// length up to 19 (vector body and tail), equals HalfToFloat; a non-finite one anywhere in a run
// is reported.
TEST(FraqtlRans, HalvesFromByteSymbolsEqualHalfToFloat) {
  if (!fraqtl::internal::HaveAvx2F16c()) GTEST_SKIP() << "SKIPPED: no AVX2+F16C on this CPU";
  std::vector<uint16_t> finite, other;
  for (uint32_t h = 0; h < 65536; ++h) ((h & 0x7c00u) == 0x7c00u ? other : finite).push_back(h);
  auto symbols = [](const uint16_t* h, size_t n) {
    std::vector<uint32_t> q(2 * n);
    for (size_t c = 0; c < n; ++c) {
      q[2 * c] = h[c] & 0xffu;
      q[2 * c + 1] = h[c] >> 8;
    }
    return q;
  };
  for (size_t n = 1; n <= 19; ++n) {
    for (size_t at = 0; at + n <= finite.size(); at += n) {
      const std::vector<uint32_t> q = symbols(finite.data() + at, n);
      float got[19];
      ASSERT_TRUE(fraqtl::internal::HalvesFromByteSymbolsF16c(q.data(), n, got)) << at;
      for (size_t c = 0; c < n; ++c) {
        const float want = HalfToFloat(finite[at + c]);
        ASSERT_EQ(std::memcmp(&got[c], &want, 4), 0) << std::hex << finite[at + c];
      }
    }
    for (size_t pos = 0; pos < n; ++pos) {
      for (uint16_t bad : {other.front(), other[other.size() / 2], other.back()}) {
        std::vector<uint16_t> h(finite.begin() + 1000, finite.begin() + 1000 + n);
        h[pos] = bad;
        const std::vector<uint32_t> q = symbols(h.data(), n);
        float got[19];
        EXPECT_FALSE(fraqtl::internal::HalvesFromByteSymbolsF16c(q.data(), n, got))
            << "n " << n << " at " << pos << " " << std::hex << bad;
      }
    }
  }
}

// The cached angles are Rope::Angles' floats for any range, across pages, for two ropes.
TEST(FraqtlRans, CachedPositionAnglesEqualRopeAngles) {
  for (uint32_t rope_dim : {8u, 64u}) {
    fraqtl::Rope rope;
    rope.theta = rope_dim == 8 ? 500000.0 : 10000.0;
    rope.rope_dim = rope_dim;
    rope.CacheFrequencies();
    const uint32_t half = rope_dim / 2;
    for (int64_t first :
         {int64_t{0}, int64_t{100}, int64_t{255}, int64_t{256}, int64_t{8000}, int64_t{70001}}) {
      for (uint32_t tokens : {1u, 300u, 1000u}) {
        const float* cs = fraqtl::internal::PositionAngles(rope, first, tokens);
        std::vector<float> c(half), sn(half);
        for (uint32_t t = 0; t < tokens; ++t) {
          rope.Angles(first + t, c.data(), sn.data());
          ASSERT_EQ(std::memcmp(cs + size_t{t} * 2 * half, c.data(), 4 * half), 0) << first + t;
          ASSERT_EQ(std::memcmp(cs + size_t{t} * 2 * half + half, sn.data(), 4 * half), 0);
        }
      }
    }
  }
}

// The vector angles are Rope::Angles' floats: positions from 0 to past the range the
// vector reduction handles (|angle| * 2 / pi >= 2^20 goes the scalar way), negative ones, the
// frequencies of two thetas, and enough values that lanes whose margin straddles two floats
// (about one in 30,000) occur and are computed exactly.
TEST(FraqtlRans, VectorAnglesEqualRopeAngles) {
  std::mt19937 rng(5);
  for (const double theta : {10000.0, 500000.0}) {
    for (uint32_t rope_dim : {16u, 64u, 128u}) {
      fraqtl::Rope rope;
      rope.theta = theta;
      rope.rope_dim = rope_dim;
      rope.CacheFrequencies();
      const uint32_t half = rope_dim / 2;
      std::vector<int64_t> firsts = {0, -700, 1647000, 5000000000};
      for (int i = 0; i < 40; ++i) firsts.push_back(static_cast<int64_t>(rng() % 3000000));
      std::vector<float> got(size_t{256} * rope_dim), want(half * 2);
      for (const int64_t first : firsts) {
        auto check = [&](const char* path) {
          for (size_t t = 0; t < 256; ++t) {
            rope.Angles(first + static_cast<int64_t>(t), want.data(), want.data() + half);
            ASSERT_EQ(std::memcmp(got.data() + t * rope_dim, want.data(), 4 * rope_dim), 0)
                << path << ": theta " << theta << ", rope_dim " << rope_dim << ", position "
                << first + static_cast<int64_t>(t);
          }
        };
        fraqtl::internal::RopeAnglesInto(rope, first, 256, got.data());
        check("RopeAnglesInto");
        if (fraqtl::internal::HaveAvx512()) {
          fraqtl::internal::RopeAnglesAvx512(rope, first, 256, got.data());
          check("AVX-512");
        }
      }
    }
  }
  if (!fraqtl::internal::HaveAvx512()) {
    std::cout << "[  NOTE    ] no AVX-512 on this CPU: only the scalar angles were compared\n";
  }
}

// Every budget from 0.25 to 6 b/e: reference and optimized paths give the same bytes and the
// same values, the stream lands within 1 % of its budget, and the error falls as bits rise.
TEST(FraqtlRans, OnePassHitsEveryBudgetWithinOnePercent) {
  Profile p = ToyProfile(true);
  // As a calibrated profile: the stream header then carries the model's fingerprint, which
  // the codec's estimate of the header counts.
  p.model_fingerprint = "sha256:" + std::string(64, 'a');
  const uint32_t T = 2048;
  KvShape shape{kLayers, T, kHeads, kDim};
  auto cache = KvCache::Create(shape, DType::kF32);
  ASSERT_TRUE(cache.ok());
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (KvKind k : {KvKind::kKey, KvKind::kValue}) {
      const auto x = ToyData(T, 300 + l * 2 + static_cast<uint32_t>(k));
      std::memcpy(cache->tensor(l, k).data(), x.data(), x.size() * 4);
    }
  }
  double prev = 1e300;
  for (double target : {0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0}) {
    char spec[48];
    std::snprintf(spec, sizeof(spec), "fraqtl@%g:entropy=rans", target);
    auto codec = CreateCodec(spec, &p);
    ASSERT_TRUE(codec.ok()) << codec.status().ToString();
    ASSERT_NE((*codec)->Spec().find("entropy=rans"), std::string::npos) << (*codec)->Spec();
    StreamInfo info;
    info.shape = shape;
    info.dtype = DType::kF32;
    info.metadata.rope_style = "interleaved";
    info.metadata.model_fingerprint = p.model_fingerprint;
    info.profile_id = *p.Id();
    info.levels = {(*codec)->Spec()};
    StreamWriterOptions one, three;
    three.threads = 3;
    auto s1 = EncodeStream(cache->view(), info, one, &p);
    ASSERT_TRUE(s1.ok()) << s1.status().ToString();
    auto s3 = EncodeStream(cache->view(), info, three, &p);
    ASSERT_TRUE(s3.ok());
    EXPECT_EQ(*s1, *s3) << spec;
    const double bpe = double(s1->size()) * 8 / double(shape.elements());
    EXPECT_NEAR(bpe, target, 0.01 * target) << spec;
    auto dec = DecodeStream(*s1, &p);
    ASSERT_TRUE(dec.ok()) << dec.status().ToString();
    double err = 0, sig = 0;
    for (uint32_t l = 0; l < kLayers; ++l) {
      const auto x = cache->tensor(l, KvKind::kValue), y = dec->tensor(l, KvKind::kValue);
      const auto* xf = reinterpret_cast<const float*>(x.data());
      const auto* yf = reinterpret_cast<const float*>(y.data());
      for (size_t i = 0; i < x.size() / 4; ++i) {
        err += (yf[i] - xf[i]) * (yf[i] - xf[i]);
        sig += xf[i] * xf[i];
      }
    }
    EXPECT_LT(err / sig, prev) << spec;
    prev = err / sig;
    // Reference and optimized chunk by chunk.
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      const ChunkDesc d = Desc(1, kind, 300);
      const auto x = ToyData(300, 9);
      std::vector<uint8_t> a, b;
      ASSERT_TRUE((*codec)->Encode(d, x.data(), &a, CodecImpl::kReference).ok());
      ASSERT_TRUE((*codec)->Encode(d, x.data(), &b, CodecImpl::kOptimized).ok());
      ASSERT_EQ(a, b) << spec;
      std::vector<float> ya(x.size()), yb(x.size());
      ASSERT_TRUE((*codec)->Decode(d, a, ya.data(), CodecImpl::kReference).ok());
      ASSERT_TRUE((*codec)->Decode(d, a, yb.data(), CodecImpl::kOptimized).ok());
      ASSERT_EQ(ya, yb) << spec;
    }
  }
  EXPECT_LT(prev, 1e-3);
}

// At 16 b/e the ladder runs out (every direction at 8 bits or fp16) before the budget does.
TEST(FraqtlRans, FullPrecisionChunkStaysBelowBudget) {
  const Profile p = ToyProfile(false);
  auto codec = std::move(CreateCodec("fraqtl@16:entropy=rans", &p)).value();
  const auto x = ToyData(64, 4);
  const ChunkDesc d = Desc(0, KvKind::kValue, 64);
  std::vector<uint8_t> a;
  ASSERT_TRUE(codec->Encode(d, x.data(), &a).ok());
  EXPECT_LT(a.size() * 8.0, 16.0 * static_cast<double>(d.elements()));
  std::vector<float> y(x.size());
  ASSERT_TRUE(codec->Decode(d, a, y.data()).ok());
  double err = 0, sig = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err += (y[i] - x[i]) * (y[i] - x[i]);
    sig += x[i] * x[i];
  }
  EXPECT_LT(err / sig, 1e-4);
}

// fp16 input read where it lies (EncodeHalves) gives Encode's payload of the same values as
// float32, byte for byte, through both implementations: K with RoPE undone and V, sink and
// window tokens passing through, rows that repeat, a chunk past token 0; a non-finite half in a
// coded row or in a passing-through one gives Encode's error. Codecs without a reader of their
// own (int4-token) take the default conversion, with the same result.
TEST(FraqtlRans, HalvesInputEncodesAsFloats) {
  const Profile p = ToyProfile(true);
  const uint32_t T = 300;
  std::vector<float> x = ToyData(T, 31);
  for (uint32_t t = 40; t < 80; ++t) {  // repeats: tokens 40-79 copy tokens 0-39
    std::memcpy(&x[size_t{t} * kHeads * kDim], &x[size_t{t - 40} * kHeads * kDim],
                sizeof(float) * kHeads * kDim);
  }
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = FloatToHalf(x[i]);
    x[i] = HalfToFloat(h[i]);  // the floats the halves are
  }
  for (const char* spec : {"fraqtl@2:entropy=rans", "fraqtl@1:sink=4,window=16,entropy=rans",
                           "fraqtl@2:entropy=zstd", "int4-token"}) {
    auto codec = std::move(CreateCodec(spec, &p)).value();
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      ChunkDesc d = Desc(1, kind, T);
      d.token_begin = 20;
      d.seq_tokens = T + 20;
      for (CodecImpl impl : {CodecImpl::kReference, CodecImpl::kOptimized}) {
        std::vector<uint8_t> a, b;
        ASSERT_TRUE(codec->Encode(d, x.data(), &a, impl).ok()) << spec;
        ASSERT_TRUE(codec->EncodeHalves(d, h.data(), &b, impl).ok()) << spec;
        ASSERT_EQ(a, b) << spec << " " << KvKindName(kind);
      }
      for (size_t bad : {size_t{5} * kHeads * kDim + 3, size_t{T - 2} * kHeads * kDim}) {
        std::vector<uint16_t> hb = h;
        hb[bad] = 0x7c00;  // +inf
        std::vector<float> xb = x;
        xb[bad] = std::numeric_limits<float>::infinity();
        std::vector<uint8_t> a, b;
        const Status sa = codec->Encode(d, xb.data(), &a);
        const Status sb = codec->EncodeHalves(d, hb.data(), &b);
        ASSERT_FALSE(sb.ok()) << spec << " element " << bad;
        EXPECT_EQ(sa.ToString(), sb.ToString());
      }
    }
  }
}

TEST(FraqtlRans, CorruptPayloadsAreRefused) {
  const Profile p = ToyProfile(false);
  auto codec = std::move(CreateCodec("fraqtl@2:window=1,entropy=rans", &p)).value();
  const auto x = ToyData(48, 2);
  const ChunkDesc d = Desc(0, KvKind::kKey, 48);
  std::vector<uint8_t> a;
  ASSERT_TRUE(codec->Encode(d, x.data(), &a).ok());
  ASSERT_EQ(a[0], 2);  // payload version 2
  std::vector<float> y(x.size());
  ASSERT_TRUE(codec->Decode(d, a, y.data()).ok());
  for (size_t n : {size_t{0}, size_t{15}, a.size() - 1, a.size() - 2}) {
    EXPECT_FALSE(codec->Decode(d, std::span(a).first(n), y.data()).ok()) << n;
  }
  // Header fields: version, flags, steps (beyond the ladder), extra tokens, section length.
  for (size_t i : {size_t{0}, size_t{1}, size_t{7}, size_t{11}, size_t{12}}) {
    std::vector<uint8_t> b = a;
    b[i] ^= 0x40;
    EXPECT_FALSE(codec->Decode(d, b, y.data()).ok()) << "byte " << i;
  }
  // Every byte of the index section: refused, or (rarely) decodes to other values; never a
  // crash, never the original values silently.
  const size_t section = a.size() - (16 + size_t{kHeads} * kDim * 2);  // one fp16 token
  size_t refused = 0, changed = 0;
  for (size_t i = a.size() - section; i < a.size(); ++i) {
    std::vector<uint8_t> b = a;
    b[i] ^= 0x01;
    std::vector<float> z(x.size());
    if (!codec->Decode(d, b, z.data()).ok()) {
      ++refused;
    } else if (z != y) {
      ++changed;
    }
  }
  EXPECT_GT(refused, section / 2);
  EXPECT_EQ(refused + changed, section);
}

TEST(FraqtlRans, SpecDefaultsAndRefusals) {
  const Profile p = ToyProfile(true);
  EXPECT_NE((*CreateCodec("fraqtl@2", &p))->Spec().find("entropy=rans"), std::string::npos);
  EXPECT_NE((*CreateCodec("fraqtl@2:sign=1", &p))->Spec().find("entropy=zstd"), std::string::npos);
  auto c = CreateCodec("fraqtl@2:entropy=rans", &p);
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*c)->Spec().find("entropy=rans"), std::string::npos);
  // The sign sketch and delta groups exist in the bit-packed payload only.
  EXPECT_EQ(CreateCodec("fraqtl@2:sign=1,entropy=rans", &p).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateCodec("fraqtl@2:delta=8,entropy=rans", &p).status().code(),
            StatusCode::kInvalidArgument);
  // The canonical spec reproduces itself.
  EXPECT_EQ((*CreateCodec((*c)->Spec(), &p))->Spec(), (*c)->Spec());
}

}  // namespace
}  // namespace kvwire

namespace kvwire {
namespace {

// Rows drawn from a small vocabulary, as a model's first layer gives for repeated tokens: the
// repeats are coded as references, V's repeats decode to exactly their first occurrence, both
// paths agree, the freed bits buy precision, and a damaged repeat section is refused.
TEST(FraqtlRans, RepeatedRowsAreCodedOnce) {
  const Profile p = ToyProfile(true);
  const uint32_t T = 600;  // more than one block of 2 x 16 elements per token
  const auto vocab = ToyData(12, 21);
  std::mt19937 rng(3);
  std::vector<uint32_t> word(T);
  std::vector<float> values(size_t{T} * kHeads * kDim);
  for (uint32_t t = 0; t < T; ++t) {
    word[t] = rng() % 12;
    std::memcpy(&values[size_t{t} * kHeads * kDim], &vocab[size_t{word[t]} * kHeads * kDim],
                sizeof(float) * kHeads * kDim);
  }
  const std::vector<float>& x = values;
  const auto fresh = ToyData(T, 22);  // the same chunk without repeats
  // K as a model stores it: each row rotated by RoPE at its position (the codec undoes it).
  std::vector<float> keys = x;
  fraqtl::Rope rope;
  rope.theta = p.rope_theta;
  rope.rope_dim = p.rope_dim;
  std::vector<float> cs(kDim);
  for (uint32_t t = 0; t < T; ++t) {
    rope.Angles(Desc(0, KvKind::kKey, T).positions_start + t, cs.data(), cs.data() + kDim / 2);
    for (uint32_t h = 0; h < kHeads; ++h) {
      rope.Rotate(&keys[(size_t{t} * kHeads + h) * kDim], cs.data(), cs.data() + kDim / 2, false);
    }
  }
  auto codec = std::move(CreateCodec("fraqtl@1:entropy=rans", &p)).value();
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    ChunkDesc d = Desc(0, kind, T);
    const std::vector<float>& in = kind == KvKind::kKey ? keys : values;
    std::vector<uint8_t> a, b, c;
    ASSERT_TRUE(codec->Encode(d, in.data(), &a, CodecImpl::kReference).ok());
    ASSERT_TRUE(codec->Encode(d, in.data(), &b, CodecImpl::kOptimized).ok());
    ASSERT_EQ(a, b);
    ASSERT_TRUE(codec->Encode(d, fresh.data(), &c).ok());
    EXPECT_EQ(a[1] & 1, 1) << "repeat flag";
    EXPECT_EQ(c[1] & 1, 0) << "no repeats in fresh data";
    // More steps of the ladder for the same budget.
    uint32_t steps_a, steps_c;
    std::memcpy(&steps_a, a.data() + 4, 4);
    std::memcpy(&steps_c, c.data() + 4, 4);
    EXPECT_GT(steps_a, steps_c + 20);
    // Not above the budget (below it once the ladder runs out: 12 distinct rows per block).
    EXPECT_LE(double(a.size()), 1.01 * double(c.size()));
    std::vector<float> ya(x.size()), yb(x.size());
    ASSERT_TRUE(codec->Decode(d, a, ya.data(), CodecImpl::kReference).ok());
    ASSERT_TRUE(codec->Decode(d, a, yb.data(), CodecImpl::kOptimized).ok());
    ASSERT_EQ(ya, yb);
    double err = 0, sig = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      err += (ya[i] - in[i]) * (ya[i] - in[i]);
      sig += in[i] * in[i];
    }
    EXPECT_LT(err / sig, 1e-3);
    if (kind == KvKind::kValue) {  // no RoPE: a repeat is its first occurrence, bit for bit
      const size_t block = 65536 / (kHeads * kDim);
      for (uint32_t t = 1; t < T; ++t) {
        for (uint32_t s = static_cast<uint32_t>(t / block * block); s < t; ++s) {
          if (word[s] != word[t]) continue;
          for (size_t j = 0; j < size_t{kHeads} * kDim; ++j) {
            ASSERT_EQ(ya[size_t{t} * kHeads * kDim + j], ya[size_t{s} * kHeads * kDim + j]);
          }
          break;
        }
      }
    }
    // The repeat section sits after the header (no pass-through tokens, no gains).
    const uint32_t rep_bytes = LoadU32Le(a.data() + 16);
    for (size_t i = 20; i < 20 + rep_bytes; i += 7) {
      std::vector<uint8_t> bad = a;
      bad[i] ^= 0x80;
      std::vector<float> y(x.size());
      const Status st = codec->Decode(d, bad, y.data());
      EXPECT_TRUE(!st.ok() || y != ya) << "byte " << i;
    }
    std::vector<uint8_t> bad = a;
    bad[16] ^= 1;  // its length
    std::vector<float> y(x.size());
    EXPECT_FALSE(codec->Decode(d, bad, y.data()).ok());
  }
}

}  // namespace
}  // namespace kvwire

namespace kvwire {
namespace {

using namespace fraqtl_toy;

// Profile::Id() remembers ids by content digest: a profile changed in place (any field
// Serialize writes) gets the id of its new bytes, never the remembered one; equal content,
// equal id and digest.
TEST(ProfileId, RemembersByContentAndFollowsChanges) {
  Profile p = ToyProfile(true);
  const std::string id = *p.Id();
  EXPECT_EQ(*p.Id(), id);
  Profile same = ToyProfile(true);
  EXPECT_EQ(ProfileContentDigest(same), ProfileContentDigest(p));
  EXPECT_EQ(*same.Id(), id);
  std::vector<std::function<void(Profile&)>> changes = {
      [](Profile& q) { q.notes = "x"; },
      [](Profile& q) { q.basis(1, ProfileSlot::kValue, 1).variance.back() *= 0.5; },
      [](Profile& q) { q.basis(0, ProfileSlot::kKey, 0).forward[5] = 1e-3f; },
      [](Profile& q) { q.levels[0].budgets[2] = 2.5; },
      [](Profile& q) { q.levels[0].kl = 0.25; },
      [](Profile& q) { q.rope_theta = 5e5; },
  };
  for (size_t i = 0; i < changes.size(); ++i) {
    Profile q = ToyProfile(true);
    changes[i](q);
    auto bytes = q.Serialize();
    ASSERT_TRUE(bytes.ok()) << i << ": " << bytes.status().ToString();
    EXPECT_NE(ProfileContentDigest(q), ProfileContentDigest(p)) << i;
    EXPECT_EQ(*q.Id(), ProfileIdOfBytes(*bytes)) << i;
    EXPECT_NE(*q.Id(), id) << i;
  }
}

// Codecs of one profile share what they derive from it (bases, tables, ladders): a codec made
// after others gives the bytes and values of one made alone, and a codec of a changed profile
// does not pick up the old profile's tables.
TEST(FraqtlShared, CodecsOfOneProfileShareAndAChangedProfileDoesNot) {
  const Profile p = ToyProfile(true);
  const ChunkDesc d = Desc(1, KvKind::kValue, 200);
  const auto x = ToyData(200, 21);
  auto first = CreateCodec("fraqtl@1.5", &p);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  std::vector<uint8_t> a;
  ASSERT_TRUE((*first)->Encode(d, x.data(), &a, CodecImpl::kOptimized).ok());
  for (int i = 0; i < 3; ++i) {
    auto again = CreateCodec("fraqtl@1.5", &p);
    ASSERT_TRUE(again.ok());
    std::vector<uint8_t> b;
    ASSERT_TRUE((*again)->Encode(d, x.data(), &b, CodecImpl::kOptimized).ok());
    EXPECT_EQ(a, b);
    std::vector<float> ya(x.size()), yb(x.size());
    ASSERT_TRUE((*first)->Decode(d, a, ya.data(), CodecImpl::kOptimized).ok());
    ASSERT_TRUE((*again)->Decode(d, b, yb.data(), CodecImpl::kOptimized).ok());
    EXPECT_EQ(ya, yb);
  }
  // Halving every V variance of layer 1 changes its ladder and its coefficients' scale: the
  // new profile's codec must code differently, exactly as a codec built in a fresh process
  // would (its reference path builds nothing shared: same bytes).
  Profile q = ToyProfile(true);
  for (uint32_t h = 0; h < kHeads; ++h)
    for (double& v : q.basis(1, ProfileSlot::kValue, h).variance) v *= 0.25;
  auto changed = CreateCodec("fraqtl@1.5", &q);
  ASSERT_TRUE(changed.ok());
  std::vector<uint8_t> c, c_ref;
  ASSERT_TRUE((*changed)->Encode(d, x.data(), &c, CodecImpl::kOptimized).ok());
  ASSERT_TRUE((*changed)->Encode(d, x.data(), &c_ref, CodecImpl::kReference).ok());
  EXPECT_NE(c, a);
  EXPECT_EQ(c, c_ref);
}

}  // namespace
}  // namespace kvwire
