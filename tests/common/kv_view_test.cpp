// KvView over the memory layouts engines use: every read and write equals a gather / scatter
// written from the layout's index formula, and strides that would alias are refused.
#include "kvwire/kv_view.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/fp16.h"

namespace kvwire {
namespace {

// Physical layouts of one layer's tensor, as an engine allocates it.
enum class Layout {
  kContiguousNhd,    // (2, tokens, H, D), through KvView::Contiguous
  kContiguousHnd,    // (2, H, tokens, D), no block table
  kFlashNhd,         // (2, num_blocks, block_size, H, D), through KvView::Paged
  kFlashNhdStrided,  // the same, through KvView::Strided
  kFlashHnd,         // vLLM HND: allocated (2, num_blocks, H, block_size, D)
  kFlashInferNhd,    // (num_blocks, 2, block_size, H, D)
  kFlashInferHnd,    // (num_blocks, 2, H, block_size, D)
};

const char* LayoutName(Layout l) {
  switch (l) {
    case Layout::kContiguousNhd:
      return "ContiguousNhd";
    case Layout::kContiguousHnd:
      return "ContiguousHnd";
    case Layout::kFlashNhd:
      return "FlashNhd";
    case Layout::kFlashNhdStrided:
      return "FlashNhdStrided";
    case Layout::kFlashHnd:
      return "FlashHnd";
    case Layout::kFlashInferNhd:
      return "FlashInferNhd";
    case Layout::kFlashInferHnd:
      return "FlashInferHnd";
  }
  return "?";
}

bool Paged(Layout l) { return l != Layout::kContiguousNhd && l != Layout::kContiguousHnd; }

constexpr uint32_t kLayers = 2, kHeads = 3, kDim = 8, kTokens = 45, kBlock = 16, kBlocks = 7;
const std::vector<int32_t> kTable = {5, 0, 3};  // 45 tokens: 3 blocks, the last partly used

// One layer's buffer and the element offset of (kind, token, head, d) in it, from the layout's
// index formula (not from KvView).
struct Memory {
  Layout layout;
  DType dtype;
  std::vector<std::vector<uint8_t>> layers;

  size_t Elements() const {
    return Paged(layout) ? size_t{2} * kBlocks * kBlock * kHeads * kDim
                         : size_t{2} * kTokens * kHeads * kDim;
  }

  size_t Offset(int kind, uint32_t t, uint32_t h, uint32_t d) const {
    const size_t b = Paged(layout) ? size_t(kTable[t / kBlock]) : 0, s = t % kBlock;
    switch (layout) {
      case Layout::kContiguousNhd:
        return ((kind * size_t{kTokens} + t) * kHeads + h) * kDim + d;
      case Layout::kContiguousHnd:
        return ((kind * size_t{kHeads} + h) * kTokens + t) * kDim + d;
      case Layout::kFlashNhd:
      case Layout::kFlashNhdStrided:
        return (((kind * size_t{kBlocks} + b) * kBlock + s) * kHeads + h) * kDim + d;
      case Layout::kFlashHnd:
        return (((kind * size_t{kBlocks} + b) * kHeads + h) * kBlock + s) * kDim + d;
      case Layout::kFlashInferNhd:
        return (((b * 2 + kind) * kBlock + s) * kHeads + h) * kDim + d;
      case Layout::kFlashInferHnd:
        return (((b * 2 + kind) * kHeads + h) * kBlock + s) * kDim + d;
    }
    return 0;
  }

  Result<KvView> View() {
    const KvShape shape{kLayers, kTokens, kHeads, kDim};
    const int64_t e = static_cast<int64_t>(DTypeSize(dtype));
    std::vector<void*> k, v;
    // K starts at the buffer; V at the offset of (V, block 0 or token 0, head 0, element 0).
    for (uint32_t l = 0; l < kLayers; ++l) {
      uint8_t* p = layers[l].data();
      size_t v_offset = 0;
      switch (layout) {
        case Layout::kContiguousNhd:
        case Layout::kContiguousHnd:
          v_offset = size_t{kTokens} * kHeads * kDim;
          break;
        case Layout::kFlashNhd:
        case Layout::kFlashNhdStrided:
        case Layout::kFlashHnd:
          v_offset = size_t{kBlocks} * kBlock * kHeads * kDim;
          break;
        case Layout::kFlashInferNhd:
        case Layout::kFlashInferHnd:
          v_offset = size_t{kBlock} * kHeads * kDim;
          break;
      }
      k.push_back(p);
      v.push_back(p + v_offset * e);
    }
    if (layout == Layout::kContiguousNhd) return KvView::Contiguous(shape, dtype, k, v);
    if (layout == Layout::kFlashNhd) {
      return KvView::Paged(shape, dtype, kBlock, kBlocks, k, v, kTable);
    }
    StridedKv d;
    d.shape = shape;
    d.dtype = dtype;
    d.k = k;
    d.v = v;
    const int64_t D = kDim * e;
    switch (layout) {
      case Layout::kContiguousHnd:
        d.strides = {0, D, D * kTokens};
        break;
      case Layout::kFlashNhdStrided:
        d.strides = {D * kHeads * kBlock, D * kHeads, D};
        break;
      case Layout::kFlashHnd:
        d.strides = {D * kHeads * kBlock, D, D * kBlock};
        break;
      case Layout::kFlashInferNhd:
        d.strides = {2 * D * kHeads * kBlock, D * kHeads, D};
        break;
      case Layout::kFlashInferHnd:
        d.strides = {2 * D * kHeads * kBlock, D, D * kBlock};
        break;
      default:
        break;
    }
    if (Paged(layout)) {
      d.block_size = kBlock;
      d.num_blocks = kBlocks;
      d.block_table = kTable;
    }
    return KvView::Strided(d);
  }
};

// Random finite values of the dtype, as raw bytes.
void FillRandom(Memory& m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const size_t e = DTypeSize(m.dtype);
  m.layers.assign(kLayers, std::vector<uint8_t>(m.Elements() * e));
  for (auto& buf : m.layers) {
    for (size_t i = 0; i < m.Elements(); ++i) {
      const float f = normal(rng);
      if (m.dtype == DType::kF32) {
        std::memcpy(&buf[i * 4], &f, 4);
      } else {
        const uint16_t h = m.dtype == DType::kF16 ? FloatToHalf(f) : FloatToBf16(f);
        std::memcpy(&buf[i * 2], &h, 2);
      }
    }
  }
}

float ElementToF32(DType dtype, const uint8_t* p) {
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return dtype == DType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
}

struct Param {
  Layout layout;
  DType dtype;
};

class KvViewLayoutTest : public ::testing::TestWithParam<Param> {};

// Token ranges that start and end inside blocks, span blocks, and cover everything.
const std::vector<std::pair<uint32_t, uint32_t>> kRanges = {
    {0, kTokens}, {3, 20}, {16, 16}, {31, 14}, {44, 1}};

TEST_P(KvViewLayoutTest, ReadsEqualTheReferenceGather) {
  Memory m{GetParam().layout, GetParam().dtype, {}};
  FillRandom(m, 7);
  auto view = m.View();
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  const size_t e = DTypeSize(m.dtype);
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      for (auto [begin, n] : kRanges) {
        std::vector<uint8_t> raw(size_t{n} * view->row_bytes());
        std::vector<float> f32(size_t{n} * kHeads * kDim);
        ASSERT_TRUE(view->ReadRaw(l, KvKind(kind), begin, n, raw.data()).ok());
        ASSERT_TRUE(view->ReadF32(l, KvKind(kind), begin, n, f32.data()).ok());
        for (uint32_t t = 0; t < n; ++t) {
          for (uint32_t h = 0; h < kHeads; ++h) {
            for (uint32_t d = 0; d < kDim; ++d) {
              const size_t packed = (size_t{t} * kHeads + h) * kDim + d;
              const uint8_t* ref = &m.layers[l][m.Offset(kind, begin + t, h, d) * e];
              ASSERT_EQ(std::memcmp(&raw[packed * e], ref, e), 0)
                  << "layer " << l << " kind " << kind << " token " << begin + t << " head " << h
                  << " d " << d;
              ASSERT_EQ(f32[packed], ElementToF32(m.dtype, ref));
            }
          }
        }
      }
    }
  }
}

TEST_P(KvViewLayoutTest, WritesTouchExactlyTheRangeWritten) {
  for (const bool f32 : {false, true}) {
    for (auto [begin, n] : kRanges) {
      Memory m{GetParam().layout, GetParam().dtype, {}};
      FillRandom(m, 11);
      const auto before = m.layers;
      Memory src{GetParam().layout, GetParam().dtype, {}};
      FillRandom(src, 12);  // values to write: the same layout's elements, gathered
      auto view = m.View();
      auto src_view = src.View();
      ASSERT_TRUE(view.ok() && src_view.ok());
      const size_t e = DTypeSize(m.dtype);
      const uint32_t l = 1;
      const int kind = 1;
      std::vector<uint8_t> raw(size_t{n} * view->row_bytes());
      std::vector<float> values(size_t{n} * kHeads * kDim);
      ASSERT_TRUE(src_view->ReadRaw(l, KvKind(kind), begin, n, raw.data()).ok());
      ASSERT_TRUE(src_view->ReadF32(l, KvKind(kind), begin, n, values.data()).ok());
      if (f32) {
        ASSERT_TRUE(view->WriteF32(l, KvKind(kind), begin, n, values.data()).ok());
      } else {
        ASSERT_TRUE(view->WriteRaw(l, KvKind(kind), begin, n, raw.data()).ok());
      }
      // Expected: the old bytes, with the range's elements replaced by the source's (exact:
      // values of the dtype convert to float and back unchanged).
      auto expected = before;
      for (uint32_t t = begin; t < begin + n; ++t) {
        for (uint32_t h = 0; h < kHeads; ++h) {
          for (uint32_t d = 0; d < kDim; ++d) {
            const size_t off = m.Offset(kind, t, h, d) * e;
            std::memcpy(&expected[l][off], &src.layers[l][off], e);
          }
        }
      }
      EXPECT_EQ(m.layers[0], expected[0]) << "layer 0 changed";
      EXPECT_EQ(m.layers[1], expected[1])
          << (f32 ? "WriteF32" : "WriteRaw") << " of tokens [" << begin << ", " << begin + n << ")";
    }
  }
}

std::vector<Param> AllParams() {
  std::vector<Param> out;
  for (Layout l :
       {Layout::kContiguousNhd, Layout::kContiguousHnd, Layout::kFlashNhd, Layout::kFlashNhdStrided,
        Layout::kFlashHnd, Layout::kFlashInferNhd, Layout::kFlashInferHnd}) {
    for (DType d : {DType::kF16, DType::kBF16, DType::kF32}) out.push_back({l, d});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Layouts, KvViewLayoutTest, ::testing::ValuesIn(AllParams()),
                         [](const ::testing::TestParamInfo<Param>& p) {
                           return std::string(LayoutName(p.param.layout)) + "_" +
                                  std::string(DTypeName(p.param.dtype));
                         });

TEST(KvViewStridesTest, RowsContiguousOnlyForNhd) {
  for (Layout l : {Layout::kFlashNhd, Layout::kFlashHnd, Layout::kFlashInferHnd}) {
    Memory m{l, DType::kF16, {}};
    FillRandom(m, 1);
    auto view = m.View();
    ASSERT_TRUE(view.ok());
    EXPECT_EQ(view->rows_contiguous(), l == Layout::kFlashNhd) << LayoutName(l);
  }
}

// RawSpan: the tokens' bytes as one piece exactly where they lie so, and nowhere else.
TEST(KvViewStridesTest, RawSpanIsTheRowsWhereTheyLieAsOnePiece) {
  const KvShape shape{2, 10, 2, 4};
  auto cache = KvCache::Create(shape, DType::kF16);
  ASSERT_TRUE(cache.ok());
  const KvView c = cache->view();
  const size_t row = c.row_bytes();
  const auto whole = c.RawSpan(1, KvKind::kValue, 0, 10);
  EXPECT_EQ(whole.data(), c.Row(1, KvKind::kValue, 0));
  EXPECT_EQ(whole.size(), 10 * row);
  const auto part = c.RawSpan(1, KvKind::kKey, 3, 4);
  EXPECT_EQ(part.data(), c.Row(1, KvKind::kKey, 3));
  EXPECT_EQ(part.size(), 4 * row);
  EXPECT_TRUE(c.RawSpan(1, KvKind::kKey, 3, 0).empty());  // no tokens
  EXPECT_TRUE(c.RawSpan(1, KvKind::kKey, 7, 4).empty());  // past the end
  EXPECT_TRUE(c.RawSpan(2, KvKind::kKey, 0, 1).empty());  // no such layer
  // Paged, blocks of 4 tokens: tokens 0-3 in block 2, 4-7 in block 3, 8-9 in block 0.
  std::vector<std::vector<uint8_t>> mem(4, std::vector<uint8_t>(4 * 4 * row));
  const std::vector<uint8_t>& k = mem[0];
  const std::vector<int32_t> table = {2, 3, 0};
  auto paged = KvView::Paged(shape, DType::kF16, 4, 4, {mem[0].data(), mem[1].data()},
                             {mem[2].data(), mem[3].data()}, table);
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  EXPECT_EQ(paged->RawSpan(0, KvKind::kKey, 1, 3).data(), k.data() + (2 * 4 + 1) * row);
  EXPECT_EQ(paged->RawSpan(0, KvKind::kKey, 2, 5).size(), 5 * row);  // blocks 2, 3 adjacent
  EXPECT_TRUE(paged->RawSpan(0, KvKind::kKey, 6, 3).empty());        // blocks 3, 0 apart
  // Head-major rows are never one piece.
  Memory m{Layout::kFlashHnd, DType::kF16, {}};
  FillRandom(m, 2);
  auto hnd = m.View();
  ASSERT_TRUE(hnd.ok());
  EXPECT_TRUE(hnd->RawSpan(0, KvKind::kKey, 0, 1).empty());
}

// A flash-attention HND description over 16-bit elements, for the rejection tests to break.
StridedKv HndDescription(std::vector<uint8_t>& buf) {
  const int64_t D = kDim * 2;
  StridedKv d;
  d.shape = {1, kTokens, kHeads, kDim};
  d.dtype = DType::kF16;
  d.k = {buf.data()};
  d.v = {buf.data() + buf.size() / 2};
  d.strides = {D * kHeads * kBlock, D, D * kBlock};
  d.block_size = kBlock;
  d.num_blocks = kBlocks;
  d.block_table = kTable;
  return d;
}

void ExpectRefused(const StridedKv& d, const std::string& words) {
  auto view = KvView::Strided(d);
  ASSERT_FALSE(view.ok());
  EXPECT_EQ(view.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(view.status().message().find(words), std::string::npos) << view.status().message();
}

TEST(KvViewStridesTest, RefusesAliasingAndMeaninglessStrides) {
  std::vector<uint8_t> buf(size_t{2} * kBlocks * kBlock * kHeads * kDim * 2);
  ASSERT_TRUE(KvView::Strided(HndDescription(buf)).ok());

  StridedKv d = HndDescription(buf);
  d.strides.token = kDim;  // half a head: slots overlap within a head
  ExpectRefused(d, "token slot stride");
  d = HndDescription(buf);
  d.strides.head = kDim * 2 * (kBlock - 1);  // the last slot of head h is the first of h + 1
  ExpectRefused(d, "share memory");
  d = HndDescription(buf);
  d.strides.block = d.strides.head;  // blocks overlap heads
  ExpectRefused(d, "share memory");
  d = HndDescription(buf);
  d.strides.block = 0;
  ExpectRefused(d, "block stride 0");
  d = HndDescription(buf);
  d.strides.head = -d.strides.head;
  ExpectRefused(d, "head stride -");
  d = HndDescription(buf);
  d.strides.token = kDim * 2 + 1;  // not a multiple of the element
  ExpectRefused(d, "multiple");
  d = HndDescription(buf);
  const std::vector<int32_t> bad_table = {5, 7, 3};
  d.block_table = bad_table;
  ExpectRefused(d, "outside [0, 7)");
  d = HndDescription(buf);
  d.v = {nullptr};
  ExpectRefused(d, "null pointer");
  d = HndDescription(buf);
  d.num_blocks = 0;
  ExpectRefused(d, "num_blocks");
}

TEST(KvViewStridesTest, StridesOfDimensionsOfOneEntryDoNotMatter) {
  std::vector<uint8_t> buf(size_t{2} * kTokens * kDim * 2);
  StridedKv d;
  d.shape = {1, kTokens, 1, kDim};  // one kv head: its stride is never used
  d.dtype = DType::kF16;
  d.k = {buf.data()};
  d.v = {buf.data() + buf.size() / 2};
  d.strides = {0, kDim * 2, 0};
  auto view = KvView::Strided(d);
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  EXPECT_TRUE(view->rows_contiguous());
  d.strides.token = 0;  // but tokens do repeat
  ExpectRefused(d, "token stride 0");
}

}  // namespace
}  // namespace kvwire
