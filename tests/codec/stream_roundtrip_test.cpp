// Stream round trips (docs/FORMAT.md): exact passthrough, chunking by alignment and order,
// inspection, determinism across threads, paged sources and destinations, whole-sequence views,
// the real codecs, the fp16 copy path, and frames one by one.
#include "kvwire/stream.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "codec/stream_format.h"
#include "codec/stream_test_util.h"

namespace kvwire {
namespace {

namespace fmt = format;
using namespace stream_testing;

// A paged fp16 view of `shape`: blocks of `block` tokens in per-(layer, K|V) pools of
// table.size() blocks each, which `pool` receives (zero-filled).
Result<KvView> PagedView(const KvShape& shape, uint32_t block, const std::vector<int32_t>& table,
                         std::vector<std::vector<uint8_t>>* pool) {
  const size_t row = size_t{shape.kv_heads} * shape.head_dim * 2;
  pool->assign(2 * shape.layers, std::vector<uint8_t>(table.size() * block * row));
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    k.push_back((*pool)[2 * l].data());
    v.push_back((*pool)[2 * l + 1].data());
  }
  return KvView::Paged(shape, DType::kF16, block, static_cast<uint32_t>(table.size()), k, v, table);
}

TEST_F(StreamTest, RoundTripIsExactWithPassthroughCodec) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 1);
  for (uint32_t chunk_tokens : {0u, 1u, 3u, 4u, 6u, 100u}) {
    const auto bytes = SmallStream(cache, chunk_tokens);
    std::vector<float> got;
    ASSERT_TRUE(DecodeFully(bytes, &got).ok()) << chunk_tokens;
    EXPECT_EQ(got, ReadAll(cache.view())) << chunk_tokens;
    auto decoded = DecodeStream(bytes);
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(decoded->dtype(), DType::kF32);
    EXPECT_EQ(decoded->metadata().model_fingerprint, "test-model");
    EXPECT_EQ(decoded->metadata().rope_style, "neox");
    EXPECT_EQ(decoded->metadata().positions_start, 3);
    EXPECT_EQ(ReadAll(decoded->view()), ReadAll(cache.view()));
  }
}

TEST_F(StreamTest, ChunkingFollowsAlignmentAndOrder) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 2);
  // chunk_tokens 3: level 0 (align 1) -> 3+3; level 1 (align 2) -> rounded to 4 -> 4+2.
  const auto bytes = SmallStream(cache, 3);
  auto reader = StreamReader::Open(bytes);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->info().levels, (std::vector<std::string>{"test-f32", "test-f32:align=2"}));
  std::vector<std::tuple<uint32_t, int, uint32_t, uint32_t, int>> seen;
  for (;;) {
    auto c = (*reader)->Next();
    if (!c.ok()) {
      EXPECT_EQ(c.status().code(), StatusCode::kNotFound) << c.status().ToString();
      break;
    }
    seen.emplace_back(c->header.layer, static_cast<int>(c->header.kind), c->header.token_begin,
                      c->header.tokens, c->header.level);
  }
  const std::vector<std::tuple<uint32_t, int, uint32_t, uint32_t, int>> want = {
      {0, 0, 0, 3, 0}, {0, 0, 3, 3, 0}, {0, 1, 0, 3, 0}, {0, 1, 3, 3, 0},
      {1, 0, 0, 4, 1}, {1, 0, 4, 2, 1}, {1, 1, 0, 4, 1}, {1, 1, 4, 2, 1}};
  EXPECT_EQ(seen, want);
  // After the end: kNotFound again, not a crash or a new error.
  EXPECT_EQ((*reader)->Next().status().code(), StatusCode::kNotFound);
}

TEST_F(StreamTest, ChunksAlignInSequenceCoordinates) {
  // The stream starts at sequence token 3; alignment 4 puts boundaries at sequence tokens 4, 8,
  // 12: stream tokens [0,1) [1,5) [5,9) [9,10).
  const KvShape shape{1, 10, 1, 2};
  const KvCache cache = MakeCache(shape, DType::kF32, 30);
  StreamInfo info = MakeInfo(shape, DType::kF32, {"test-f32:align=4"});
  info.token_begin = 3;
  auto bytes = EncodeStream(cache.view(), info, StreamWriterOptions{3, 1, CodecImpl::kOptimized});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto reader = StreamReader::Open(*bytes);
  ASSERT_TRUE(reader.ok());
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  for (auto c = (*reader)->Next(); c.ok(); c = (*reader)->Next()) {
    if (c->header.kind == KvKind::kKey)
      ranges.emplace_back(c->header.token_begin, c->header.tokens);
  }
  EXPECT_EQ(ranges, (std::vector<std::pair<uint32_t, uint32_t>>{{0, 1}, {1, 4}, {5, 4}, {9, 1}}));
  EXPECT_TRUE(DecodeFully(*bytes).ok());
  // A chunk boundary off the alignment is refused by the reader (CRCs recomputed).
  Parsed p = Split(*bytes);
  p.chunks[0].h.tokens = 2;
  p.chunks[0].payload.resize(2 * 2 * 4);
  p.chunks[1].h.token_begin = 2;
  p.chunks[1].h.tokens = 3;
  p.chunks[1].payload.resize(3 * 2 * 4);
  ExpectCode(Join(p), StatusCode::kCorrupt, "alignment");
  // And by EncodeChunk.
  auto w = StreamWriter::Create(info);
  ASSERT_TRUE(w.ok());
  std::vector<uint8_t> frame;
  EXPECT_EQ((*w)->EncodeChunk(cache.view(), 0, KvKind::kKey, 4, 2, 0, &frame).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE((*w)->EncodeChunk(cache.view(), 0, KvKind::kKey, 5, 2, 0, &frame).ok());
}

TEST_F(StreamTest, InspectSummaryAddsUp) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 3);
  const auto bytes = SmallStream(cache, 4);
  auto sum = InspectStream(bytes);
  ASSERT_TRUE(sum.ok()) << sum.status().ToString();
  EXPECT_EQ(sum->bytes, bytes.size());
  EXPECT_EQ(sum->header_bytes + sum->chunk_header_bytes + sum->payload_bytes + sum->trailer_bytes,
            sum->bytes);
  EXPECT_EQ(sum->chunks, 8u);
  EXPECT_EQ(sum->chunk_header_bytes, 8u * kChunkHeaderBytes);
  EXPECT_EQ(sum->payload_bytes, kSmall.elements() * 4);
  EXPECT_EQ(sum->chunks_per_level, (std::vector<uint32_t>{4, 4}));
  EXPECT_EQ(sum->payload_bytes_per_level,
            (std::vector<uint64_t>{kSmall.elements() * 2, kSmall.elements() * 2}));
  // All-in bits/element: all bytes x 8 / (layers x 2 x kv_heads x head_dim x tokens).
  EXPECT_DOUBLE_EQ(sum->bits_per_element, bytes.size() * 8.0 / (2 * 2 * 2 * 4 * 6));
  EXPECT_GT(sum->bits_per_element, 32.0);  // passthrough plus every header: more than 32
}

TEST_F(StreamTest, DeterministicAcrossThreadsAndRuns) {
  const KvShape shape{3, 37, 2, 8};
  const KvCache cache = MakeCache(shape, DType::kF16, 4);
  std::vector<uint8_t> first;
  for (int run = 0; run < 2; ++run) {
    for (int threads : {1, 2, 4}) {
      auto bytes = EncodeStream(cache.view(), MakeInfo(shape, DType::kF16, {"test-f32"}),
                                StreamWriterOptions{5, threads, CodecImpl::kOptimized});
      ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
      if (first.empty()) first = *bytes;
      EXPECT_EQ(*bytes, first) << "threads " << threads << " run " << run;
    }
  }
  EXPECT_TRUE(DecodeFully(first).ok());
}

TEST_F(StreamTest, PagedAndContiguousSourcesGiveIdenticalBytes) {
  const KvShape shape{2, 21, 2, 4};
  const KvCache cache = MakeCache(shape, DType::kF16, 5);
  const uint32_t block = 4, blocks = 8;  // 6 blocks needed, 8 allocated, order shuffled
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(9));
  const size_t row = cache.view().row_bytes();
  std::vector<std::vector<uint8_t>> pool(2 * shape.layers,
                                         std::vector<uint8_t>(size_t{blocks} * block * row, 0xEE));
  std::vector<void*> k, v;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    k.push_back(pool[2 * l].data());
    v.push_back(pool[2 * l + 1].data());
  }
  auto paged = KvView::Paged(shape, DType::kF16, block, blocks, k, v, table);
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      for (uint32_t t = 0; t < shape.tokens; ++t) {
        std::memcpy(paged->Row(l, kind, t), cache.view().Row(l, kind, t), row);
      }
    }
  }
  const StreamInfo info = MakeInfo(shape, DType::kF16, {"test-f32"});
  for (uint32_t chunk_tokens : {0u, 5u}) {
    const StreamWriterOptions opts{chunk_tokens, 2, CodecImpl::kOptimized};
    auto a = EncodeStream(cache.view(), info, opts);
    auto b = EncodeStream(*paged, info, opts);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b);

    // And decoding into a paged destination gives what decoding into a contiguous one gives.
    for (auto& p : pool) std::fill(p.begin(), p.end(), 0);
    auto reader = StreamReader::Open(*b);
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE((*reader)->DecodeAll(*paged).ok());
    EXPECT_EQ(ReadAll(*paged), ReadAll(cache.view()));
  }
}

TEST_F(StreamTest, WholeSequenceViewsAndTokenBegin) {
  // The stream carries sequence tokens [10, 16) of a 20-token sequence held in one view.
  const KvShape seq{1, 20, 1, 4};
  const KvCache cache = MakeCache(seq, DType::kF32, 6);
  StreamInfo info = MakeInfo(KvShape{1, 6, 1, 4}, DType::kF32, {"test-f32"});
  info.token_begin = 10;
  auto bytes = EncodeStream(cache.view(), info, StreamWriterOptions{4, 1, CodecImpl::kOptimized});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();

  // Into a view of exactly the carried tokens...
  auto small = DecodeStream(*bytes);
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  std::vector<float> want(6 * 4), got(6 * 4);
  ASSERT_TRUE(cache.view().ReadF32(0, KvKind::kValue, 10, 6, want.data()).ok());
  ASSERT_TRUE(small->view().ReadF32(0, KvKind::kValue, 0, 6, got.data()).ok());
  EXPECT_EQ(got, want);
  // ... and into a whole-sequence view, at the same places.
  auto whole = KvCache::Create(seq, DType::kF32);
  auto reader = StreamReader::Open(*bytes);
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE((*reader)->DecodeAll(whole->view()).ok());
  ASSERT_TRUE(whole->view().ReadF32(0, KvKind::kValue, 10, 6, got.data()).ok());
  EXPECT_EQ(got, want);
  // A view that fits neither way is refused.
  auto odd = KvCache::Create(KvShape{1, 12, 1, 4}, DType::kF32);
  EXPECT_EQ((*reader)->DecodeAll(odd->view()).code(), StatusCode::kInvalidArgument);
}

TEST_F(StreamTest, RealCodecsRoundTrip) {
  const KvShape shape{2, 80, 2, 64};
  const KvCache cache = MakeCache(shape, DType::kF16, 8);
  const std::vector<float> ref = ReadAll(cache.view());
  // Tolerances are loose on purpose: this checks the stream plumbing, the codec tests check
  // the codecs. rel = RMS error / RMS value.
  for (const auto& [spec, tol] : std::vector<std::pair<std::string, double>>{
           {"fp16", 1e-3}, {"int8", 0.02}, {"q8_0", 0.02}, {"q4_0", 0.2}, {"kivi2", 0.6}}) {
    ASSERT_TRUE(Registered(spec));
    std::vector<uint8_t> first;
    for (int threads : {1, 3}) {
      auto bytes = EncodeStream(cache.view(), MakeInfo(shape, DType::kF16, {spec}),
                                StreamWriterOptions{32, threads, CodecImpl::kOptimized});
      ASSERT_TRUE(bytes.ok()) << spec << ": " << bytes.status().ToString();
      if (first.empty()) first = *bytes;
      EXPECT_EQ(*bytes, first) << spec << " not deterministic across threads";
    }
    std::vector<float> got;
    ASSERT_TRUE(DecodeFully(first, &got).ok()) << spec;
    double err = 0, norm = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      err += (got[i] - ref[i]) * double(got[i] - ref[i]);
      norm += ref[i] * double(ref[i]);
    }
    EXPECT_LT(std::sqrt(err / norm), tol) << spec;
    auto sum = InspectStream(first);
    ASSERT_TRUE(sum.ok());
    EXPECT_DOUBLE_EQ(sum->bits_per_element, first.size() * 8.0 / shape.elements());
  }
}

TEST_F(StreamTest, Fp16SourceThroughFp16IsLossless) {
  ASSERT_TRUE(Registered("fp16"));
  const KvShape shape{2, 9, 3, 8};
  const KvCache cache = MakeCache(shape, DType::kF16, 10);
  auto bytes = EncodeStream(cache.view(), MakeInfo(shape, DType::kF16, {"fp16"}),
                            StreamWriterOptions{4, 2, CodecImpl::kOptimized});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto decoded = DecodeStream(*bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->dtype(), DType::kF16);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      const std::span<const uint8_t> a = cache.tensor(l, kind), b = decoded->tensor(l, kind);
      EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
  }
}

// EncodeChunkBorrowing lends the chunk's rows of a contiguous fp16 view at the fp16 level: the
// header it writes followed by the lent rows is EncodeChunkInto's frame, and the rows are the
// view's own memory. Elsewhere (paged rows, another level, float32 rows) it makes the whole frame.
TEST_F(StreamTest, BorrowedPayloadIsTheViewsRowsAndTheSameFrame) {
  const KvShape shape{2, 21, 2, 4};
  KvCache cache = MakeCache(shape, DType::kF16, 13);
  auto writer = StreamWriter::Create(MakeInfo(shape, DType::kF16, {"fp16", "int8"}));
  ASSERT_TRUE(writer.ok());
  const StreamWriter& w = **writer;
  EXPECT_TRUE(w.PayloadIsView(cache.view(), 0));
  EXPECT_FALSE(w.PayloadIsView(cache.view(), 1));
  std::vector<uint8_t> whole, head;
  std::span<const uint8_t> lent;
  for (uint8_t level : {0, 1}) {
    ASSERT_TRUE(w.EncodeChunkInto(cache.view(), 1, KvKind::kValue, 5, 9, level, &whole).ok());
    ASSERT_TRUE(
        w.EncodeChunkBorrowing(cache.view(), 1, KvKind::kValue, 5, 9, level, &head, &lent).ok());
    if (level == 0) {
      ASSERT_EQ(head.size(), kChunkHeaderBytes);
      EXPECT_EQ(lent.data(), cache.view().Row(1, KvKind::kValue, 5));
      head.insert(head.end(), lent.begin(), lent.end());
    } else {
      EXPECT_TRUE(lent.empty());
    }
    EXPECT_EQ(head, whole) << int(level);
  }
  // A paged cache (blocks of 4 tokens): a chunk within one block, or over blocks that follow
  // each other in memory, is lent; one over blocks apart is copied into the frame. The frame
  // is the same either way.
  const size_t row = cache.view().row_bytes();
  std::vector<std::vector<uint8_t>> pool;
  auto paged = PagedView(shape, 4, {3, 0, 6, 1, 2, 5, 4}, &pool);
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      ASSERT_TRUE(paged->WriteRaw(l, kind, 0, shape.tokens, cache.tensor(l, kind).data()).ok());
    }
  }
  EXPECT_TRUE(w.PayloadIsView(*paged, 0));
  struct Chunk {
    uint32_t begin, tokens;
    bool lent;
  };
  // Tokens 4-7: block 0; 5-13: blocks 0, 6, 1 (apart); 12-19: blocks 1, 2 (adjacent).
  for (const Chunk c : {Chunk{4, 4, true}, Chunk{5, 9, false}, Chunk{12, 8, true}}) {
    ASSERT_TRUE(
        w.EncodeChunkBorrowing(*paged, 1, KvKind::kValue, c.begin, c.tokens, 0, &head, &lent).ok());
    EXPECT_EQ(!lent.empty(), c.lent) << c.begin;
    if (c.lent) {
      EXPECT_EQ(lent.data(), paged->Row(1, KvKind::kValue, c.begin));
      head.insert(head.end(), lent.begin(), lent.end());
    }
    ASSERT_TRUE(
        w.EncodeChunkInto(cache.view(), 1, KvKind::kValue, c.begin, c.tokens, 0, &whole).ok());
    EXPECT_EQ(head, whole) << c.begin;
  }
  // A non-finite value: refused as EncodeChunkInto refuses it, nothing lent.
  const uint16_t inf = 0x7c00;
  std::memcpy(cache.tensor(1, KvKind::kValue).data() + 7 * row + 2, &inf, 2);
  const Status copied = w.EncodeChunkInto(cache.view(), 1, KvKind::kValue, 5, 9, 0, &whole);
  const Status borrowed =
      w.EncodeChunkBorrowing(cache.view(), 1, KvKind::kValue, 5, 9, 0, &head, &lent);
  EXPECT_EQ(copied.code(), StatusCode::kInvalidArgument) << copied.ToString();
  EXPECT_EQ(borrowed.ToString(), copied.ToString());
}

// An fp16 view at the fp16 level is copied, not converted (Codec::PayloadIsHalves): the bytes,
// the decoded values and the errors must be those of the conversion path (CodecImpl::kReference
// always converts), for contiguous and paged views, with the awkward values fp16 has.
TEST_F(StreamTest, Fp16CopyPathMatchesTheConversionPath) {
  const KvShape shape{2, 21, 2, 4};
  KvCache cache = MakeCache(shape, DType::kF16, 12);
  const uint16_t specials[] = {0x0000, 0x8000, 0x0001, 0x83ff, 0x0400, 0x7bff, 0xfbff, 0x3c00};
  for (size_t i = 0; i < std::size(specials); ++i) {
    std::memcpy(cache.tensor(1, KvKind::kValue).data() + 2 * (5 * i + 1), &specials[i], 2);
  }
  std::vector<int32_t> table(7);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(3));
  const size_t row = cache.view().row_bytes();
  std::vector<std::vector<uint8_t>> pool;
  auto paged = PagedView(shape, 4, table, &pool);
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  auto copy_into = [&](const KvView& to, const KvView& from) {
    for (uint32_t l = 0; l < shape.layers; ++l) {
      for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
        std::vector<uint8_t> rows(size_t{shape.tokens} * row);
        ASSERT_TRUE(from.ReadRaw(l, kind, 0, shape.tokens, rows.data()).ok());
        ASSERT_TRUE(to.WriteRaw(l, kind, 0, shape.tokens, rows.data()).ok());
      }
    }
  };
  copy_into(*paged, cache.view());
  const StreamInfo info = MakeInfo(shape, DType::kF16, {"fp16"});
  for (uint32_t chunk_tokens : {0u, 5u}) {
    auto converted = EncodeStream(cache.view(), info, {chunk_tokens, 1, CodecImpl::kReference});
    ASSERT_TRUE(converted.ok()) << converted.status().ToString();
    for (const KvView& src : {cache.view(), *paged}) {
      auto copied = EncodeStream(src, info, {chunk_tokens, 2, CodecImpl::kOptimized});
      ASSERT_TRUE(copied.ok()) << copied.status().ToString();
      EXPECT_EQ(*copied, *converted);
    }
    // Decoding: copied into fp16 rows (contiguous and paged) and converted, the same halves.
    for (CodecImpl impl : {CodecImpl::kOptimized, CodecImpl::kReference}) {
      auto out = KvCache::Create(shape, DType::kF16);
      ASSERT_TRUE(out.ok());
      auto reader = StreamReader::Open(*converted);
      ASSERT_TRUE(reader.ok());
      ASSERT_TRUE((*reader)->DecodeAll(out->view(), impl).ok());
      for (auto& p : pool) std::fill(p.begin(), p.end(), 0);
      ASSERT_TRUE((*reader)->DecodeAll(*paged, impl).ok());
      auto back = KvCache::Create(shape, DType::kF16);
      ASSERT_TRUE(back.ok());
      copy_into(back->view(), *paged);
      for (uint32_t l = 0; l < shape.layers; ++l) {
        for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
          const auto a = cache.tensor(l, kind), b = out->tensor(l, kind), c = back->tensor(l, kind);
          EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << l;
          EXPECT_TRUE(std::equal(a.begin(), a.end(), c.begin(), c.end())) << l;
        }
      }
    }
  }

  // A non-finite input is refused with the same error either way: NaN at layer 1 V, token 7,
  // head 1, dim 2 (+inf, -inf and NaN all have the exponent bits set).
  const uint16_t nan = 0x7e00;
  std::memcpy(cache.tensor(1, KvKind::kValue).data() + 2 * ((7 * 2 + 1) * 4 + 2), &nan, 2);
  const Status copied = EncodeStream(cache.view(), info, {5, 1, CodecImpl::kOptimized}).status();
  const Status converted = EncodeStream(cache.view(), info, {5, 1, CodecImpl::kReference}).status();
  EXPECT_EQ(copied.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(copied.ToString(), converted.ToString());
  EXPECT_NE(copied.message().find("token 2, head 1, dim 2"), std::string::npos)
      << copied.ToString();  // token 7 is token 2 of the chunk [5, 10)

  // A payload holding a non-finite value (CRCs fixed up) is kCorrupt either way, same message.
  std::memcpy(cache.tensor(1, KvKind::kValue).data() + 2 * ((7 * 2 + 1) * 4 + 2), &specials[7], 2);
  auto good = EncodeStream(cache.view(), info, {5, 1, CodecImpl::kOptimized});
  ASSERT_TRUE(good.ok());
  Parsed parts = Split(*good);
  parts.chunks.back().payload[1] = 0x7c;  // first element: +inf
  const std::vector<uint8_t> bad = Join(parts);
  std::string messages[2];
  int i = 0;
  for (CodecImpl impl : {CodecImpl::kOptimized, CodecImpl::kReference}) {
    auto out = KvCache::Create(shape, DType::kF16);
    auto reader = StreamReader::Open(bad);
    ASSERT_TRUE(reader.ok());
    const Status s = (*reader)->DecodeAll(out->view(), impl);
    EXPECT_EQ(s.code(), StatusCode::kCorrupt) << s.ToString();
    EXPECT_NE(s.message().find("non-finite"), std::string::npos) << s.ToString();
    messages[i++] = s.ToString();
  }
  EXPECT_EQ(messages[0], messages[1]);

  // ParseFrame marks an fp16-level frame's halves as checked, and only when they are finite.
  auto writer = StreamWriter::Create(info);
  ASSERT_TRUE(writer.ok());
  std::vector<uint8_t> header, frame;
  ASSERT_TRUE((*writer)->WriteHeader(&header).ok());
  ASSERT_TRUE((*writer)->EncodeChunk(cache.view(), 1, KvKind::kValue, 5, 5, 0, &frame).ok());
  // EncodeChunkInto makes the same frame in a buffer that held other bytes: one of the frame's
  // size (which the fp16 level overwrites without zero-filling), a larger one, an empty one.
  for (size_t size : {frame.size(), frame.size() + 100, size_t{0}}) {
    std::vector<uint8_t> reused(size, 0xab);
    ASSERT_TRUE((*writer)->EncodeChunkInto(cache.view(), 1, KvKind::kValue, 5, 5, 0, &reused).ok());
    EXPECT_EQ(reused, frame) << size;
  }
  auto frames = StreamReader::Open(header);
  ASSERT_TRUE(frames.ok());
  auto ref = (*frames)->ParseFrame(frame);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  EXPECT_TRUE(ref->payload_finite_halves);
  frame[kChunkHeaderBytes + 1] = 0x7c;  // +inf or NaN in the first element
  const uint32_t fixed = Crc32c({frame.data() + kChunkHeaderBytes, frame.size() - kChunkHeaderBytes});
  fmt::StoreLE32(frame.data() + fmt::chunk::kPayloadCrc, fixed);
  fmt::StoreLE32(frame.data() + fmt::chunk::kHeaderCrc, Crc32c({frame.data(), fmt::chunk::kHeaderCrc}));
  ref = (*frames)->ParseFrame(frame);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  EXPECT_FALSE(ref->payload_finite_halves);
  auto out = KvCache::Create(shape, DType::kF16);
  const Status refused = (*frames)->DecodeChunk(*ref, out->view());
  EXPECT_EQ(refused.code(), StatusCode::kCorrupt) << refused.ToString();
}

TEST_F(StreamTest, FramesOneByOne) {
  const KvCache cache = MakeCache(kSmall, DType::kF32, 11);
  auto writer = StreamWriter::Create(MakeInfo(kSmall, DType::kF32, {"test-f32"}));
  ASSERT_TRUE(writer.ok());
  std::vector<uint8_t> header, frame;
  ASSERT_TRUE((*writer)->WriteHeader(&header).ok());
  ASSERT_TRUE((*writer)->EncodeChunk(cache.view(), 1, KvKind::kValue, 2, 3, 0, &frame).ok());
  auto reader = StreamReader::Open(header);  // the header alone is enough for frames
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto ref = (*reader)->ParseFrame(frame, 1000);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  EXPECT_EQ(ref->header.layer, 1u);
  EXPECT_EQ(ref->header.token_begin, 2u);
  auto dst = KvCache::Create(kSmall, DType::kF32);
  ASSERT_TRUE((*reader)->DecodeChunk(*ref, dst->view()).ok());
  std::vector<float> want(3 * 8), got(3 * 8);
  ASSERT_TRUE(cache.view().ReadF32(1, KvKind::kValue, 2, 3, want.data()).ok());
  ASSERT_TRUE(dst->view().ReadF32(1, KvKind::kValue, 2, 3, got.data()).ok());
  EXPECT_EQ(got, want);
  // EncodeChunkInto replaces what its buffer held (EncodeChunk appends); a codec that is not
  // fp16 writes the same frame into a reused buffer.
  std::vector<uint8_t> reused(3 * frame.size(), 0xcd);
  ASSERT_TRUE((*writer)->EncodeChunkInto(cache.view(), 1, KvKind::kValue, 2, 3, 0, &reused).ok());
  EXPECT_EQ(reused, frame);
  // Next() on a header-only buffer: the stream is truncated.
  EXPECT_EQ((*reader)->Next().status().code(), StatusCode::kTruncated);

  // A damaged frame, a short frame, a long frame, a frame of another stream.
  for (size_t i = 0; i < frame.size(); ++i) {
    auto bad = frame;
    bad[i] ^= 0x20;
    EXPECT_FALSE((*reader)->ParseFrame(bad).ok()) << "flip at " << i;
  }
  EXPECT_EQ((*reader)->ParseFrame({frame.data(), frame.size() - 1}).status().code(),
            StatusCode::kTruncated);
  auto longer = frame;
  longer.push_back(0);
  EXPECT_EQ((*reader)->ParseFrame(longer).status().code(), StatusCode::kCorrupt);
  StreamInfo other_info = MakeInfo(kSmall, DType::kF32, {"test-f32"});
  other_info.metadata.model_fingerprint = "another-model";
  auto other = StreamWriter::Create(other_info);
  ASSERT_TRUE(other.ok());
  std::vector<uint8_t> foreign;
  ASSERT_TRUE((*other)->EncodeChunk(cache.view(), 1, KvKind::kValue, 2, 3, 0, &foreign).ok());
  auto refused = (*reader)->ParseFrame(foreign);
  EXPECT_EQ(refused.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(refused.status().message().find("another stream"), std::string::npos);
}

}  // namespace
}  // namespace kvwire
