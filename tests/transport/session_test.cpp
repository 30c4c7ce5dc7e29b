// Sender/Receiver sessions, instantiated per backend; plus reconnect/resume through a cuttable
// TCP proxy (tcp backend only).
#include "kvwire/session.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <future>
#include <optional>
#include <random>
#include <thread>

#include "codec/fraqtl_toy.h"
#include "fuzz/test_codecs.h"
#include "kvwire/profile.h"
#include "kvwire/stream.h"
#include "transport/configured_backends.h"
#include "transport/control.h"
#include "transport/tcp_proxy.h"

namespace kvwire {
namespace {

std::vector<uint8_t> Key() { return std::vector<uint8_t>(32, 0x5a); }

KvCache RandomCache(const KvShape& shape, uint32_t seed, DType dtype = DType::kF16) {
  auto c = KvCache::Create(shape, dtype);
  EXPECT_TRUE(c.ok());
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> buf(shape.tensor_elements());
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      for (float& x : buf) x = dist(rng);
      EXPECT_TRUE(c->view().WriteF32(l, kind, 0, shape.tokens, buf.data()).ok());
    }
  }
  return std::move(*c);
}

bool SameBytes(const KvCache& a, const KvCache& b) {
  for (uint32_t l = 0; l < a.shape().layers; ++l)
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      auto x = a.tensor(l, kind), y = b.tensor(l, kind);
      if (x.size() != y.size() || std::memcmp(x.data(), y.data(), x.size()) != 0) return false;
    }
  return true;
}

class SessionTest : public ::testing::TestWithParam<std::string> {
 protected:
  ReceiverOptions RecvOpts() {
    ReceiverOptions o;
    o.backend = GetParam();
    static std::atomic<int> n{0};
    o.transport.address = GetParam() == "inproc" ? "session-" + std::to_string(n++) : "127.0.0.1:0";
    o.transport.key = Key();
    o.transport.node_name = "decode";
    return o;
  }
  // The backend receives chunks into the destination (Connection::SetLanding).
  static bool Lands() { return GetParam() == "tcp" || GetParam() == "ucx"; }
  SenderOptions SendOpts(const Receiver& r) {
    SenderOptions o;
    o.backend = GetParam();
    o.transport.address = r.address();
    o.transport.key = Key();
    o.transport.node_name = "prefill";
    return o;
  }
};

TEST_P(SessionTest, Fp16RoundTripIsExactLayerByLayer) {
  auto r = Receiver::Listen(RecvOpts());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto s = Sender::Connect(SendOpts(**r));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const KvShape shape{4, 100, 2, 16};
  KvCache src = RandomCache(shape, 1);
  SendRequestOptions ro;
  ro.request_id = 11;
  ro.levels = {{"fp16", 16, 0}};
  ro.chunk_tokens = 32;
  auto req = (*s)->Open(src.view(), ro);
  ASSERT_TRUE(req.ok()) << req.status().ToString();
  EXPECT_TRUE((*req)->Poll().in_progress());

  auto in = (*r)->NextRequest(5000);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_EQ(in->request_id, 11u);
  EXPECT_EQ(in->info.shape, shape);
  EXPECT_EQ(in->peer, "prefill");
  auto dst = KvCache::Create(shape, DType::kF16);
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE((*r)->SetDestination(11, dst->view()).ok());
  for (uint32_t l = 0; l < shape.layers; ++l) {
    ASSERT_TRUE((*req)->PushLayer(l).ok());
    ASSERT_TRUE((*r)->WaitLayer(11, l, 10000).ok()) << "layer " << l;
  }
  EXPECT_FALSE((*req)->PushLayer(0).ok());  // each layer once, in order
  ASSERT_TRUE((*req)->Wait(10000).ok()) << (*req)->Poll().ToString();
  ASSERT_TRUE((*r)->Wait(11, 10000).ok());
  EXPECT_TRUE(SameBytes(src, *dst));
  auto rs = (*r)->stats(11);
  ASSERT_TRUE(rs.ok());
  EXPECT_EQ(rs->chunks, 4u * 2 * 4);
  // tcp and ucx put every chunk straight into the contiguous fp16 destination; inproc copies.
  EXPECT_EQ(rs->landed_chunks, Lands() ? rs->chunks : 0u);
  EXPECT_EQ((*req)->stats().chunks, 4u * 2 * 4);
  EXPECT_TRUE((*r)->Release(11).ok());
}

// Where a chunk's rows lie back to back in an fp16 destination (a contiguous cache, a chunk
// within one block, blocks that follow each other), tcp reads it there and ucx pulls or copies
// it there; anywhere else (blocks apart, bf16, receive_in_place off) it goes through a buffer
// first. The bytes are the same either way.
TEST_P(SessionTest, Fp16ChunksAreReadIntoTheDestinationWhereTheirRowsLieBackToBack) {
  const KvShape shape{2, 64, 2, 16};
  KvCache src = RandomCache(shape, 4);
  struct Case {
    const char* name;
    bool in_place;
    uint32_t chunk_tokens;
    std::vector<int32_t> table;  // blocks of 16 tokens; empty: a contiguous cache
    DType dtype;
    uint64_t landed;  // on tcp and ucx, of 2 x 2 x (64 / chunk_tokens) chunks
  };
  const std::vector<Case> cases = {
      {"contiguous", true, 16, {}, DType::kF16, 16},
      {"off", false, 16, {}, DType::kF16, 0},
      {"bf16", true, 16, {}, DType::kBF16, 0},
      {"a block per chunk", true, 16, {3, 0, 2, 1}, DType::kF16, 16},
      // 32-token chunks: over blocks {3, 0} and {2, 1} they lie apart; over {1, 2} they follow
      // each other, over {0, 4} not.
      {"blocks apart", true, 32, {3, 0, 2, 1}, DType::kF16, 0},
      {"adjacent blocks", true, 32, {1, 2, 0, 4}, DType::kF16, 4},
  };
  uint64_t id = 40;
  for (const Case& c : cases) {
    ReceiverOptions ro = RecvOpts();
    ro.receive_in_place = c.in_place;
    auto r = Receiver::Listen(ro);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    auto s = Sender::Connect(SendOpts(**r));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    SendRequestOptions q;
    q.request_id = ++id;
    q.levels = {{"fp16", 16, 0}};
    q.chunk_tokens = c.chunk_tokens;
    auto req = (*s)->Open(src.view(), q);
    ASSERT_TRUE(req.ok()) << req.status().ToString();
    auto in = (*r)->NextRequest(5000);
    ASSERT_TRUE(in.ok()) << in.status().ToString();
    auto cache = KvCache::Create(shape, c.dtype);
    ASSERT_TRUE(cache.ok());
    const uint32_t block = 16, blocks = 5;
    const size_t block_bytes = size_t{block} * shape.kv_heads * shape.head_dim * 2;
    std::vector<std::vector<uint8_t>> store(2 * shape.layers,
                                            std::vector<uint8_t>(blocks * block_bytes, 0));
    std::vector<void*> kp, vp;
    for (uint32_t l = 0; l < shape.layers; ++l) {
      kp.push_back(store[2 * l].data());
      vp.push_back(store[2 * l + 1].data());
    }
    auto view = c.table.empty() ? Result<KvView>(cache->view())
                                : KvView::Paged(shape, c.dtype, block, blocks, kp, vp, c.table);
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    ASSERT_TRUE((*r)->SetDestination(q.request_id, *view).ok());
    ASSERT_TRUE((*req)->PushAll().ok());
    ASSERT_TRUE((*req)->Wait(10000).ok()) << c.name << ": " << (*req)->Poll().ToString();
    ASSERT_TRUE((*r)->Wait(q.request_id, 10000).ok()) << c.name;
    auto rs = (*r)->stats(q.request_id);
    ASSERT_TRUE(rs.ok());
    EXPECT_EQ(rs->landed_chunks, Lands() ? c.landed : 0u) << c.name;
    std::vector<float> a(shape.tensor_elements()), b(shape.tensor_elements());
    for (uint32_t l = 0; l < shape.layers; ++l) {
      for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
        ASSERT_TRUE(src.view().ReadF32(l, kind, 0, shape.tokens, a.data()).ok());
        ASSERT_TRUE(view->ReadF32(l, kind, 0, shape.tokens, b.data()).ok());
        if (c.dtype == DType::kF16) {
          ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << c.name << " layer " << l;
        } else {
          for (size_t i = 0; i < a.size(); ++i) {
            ASSERT_NEAR(a[i], b[i], std::abs(a[i]) * 4e-3) << c.name << " layer " << l;
          }
        }
      }
    }
  }
}

// Chunks large enough to go by rendezvous over ucx (256 KiB here) land in the destination too,
// where the receiver takes them in place; without receive_in_place they arrive whole (chunk
// header and rows in one buffer). The same bytes either way, over a few requests on one
// connection.
TEST_P(SessionTest, LargeFp16ChunksLandInTheDestinationOrArriveWhole) {
  const KvShape shape{2, 2048, 2, 64};
  KvCache src = RandomCache(shape, 6);
  for (bool in_place : {true, false}) {
    ReceiverOptions ro = RecvOpts();
    ro.receive_in_place = in_place;
    auto r = Receiver::Listen(ro);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    auto s = Sender::Connect(SendOpts(**r));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    for (uint64_t id = 1; id <= 3; ++id) {
      SendRequestOptions q;
      q.request_id = id;
      q.levels = {{"fp16", 16, 0}};
      q.chunk_tokens = 1024;
      auto req = (*s)->Open(src.view(), q);
      ASSERT_TRUE(req.ok()) << req.status().ToString();
      auto in = (*r)->NextRequest(5000);
      ASSERT_TRUE(in.ok()) << in.status().ToString();
      auto dst = KvCache::Create(shape, DType::kF16);
      ASSERT_TRUE(dst.ok());
      ASSERT_TRUE((*r)->SetDestination(id, dst->view()).ok());
      ASSERT_TRUE((*req)->PushAll().ok());
      ASSERT_TRUE((*req)->Wait(10000).ok()) << (*req)->Poll().ToString();
      ASSERT_TRUE((*r)->Wait(id, 10000).ok());
      EXPECT_TRUE(SameBytes(src, *dst)) << "in place " << in_place << ", request " << id;
      auto rs = (*r)->stats(id);
      ASSERT_TRUE(rs.ok());
      EXPECT_EQ(rs->chunks, 2u * 2 * 2);
      EXPECT_EQ(rs->landed_chunks, in_place && Lands() ? rs->chunks : 0u) << in_place;
      EXPECT_TRUE((*r)->Release(id).ok());
    }
  }
}

// A decode node that closes its Receiver as soon as Wait says a request is done must not cut
// off the last ack and the RequestDone on their way to the sender (over ucx, before they were
// queued ahead of Wait's return, three closes in four lost them and the sender waited forever).
TEST_P(SessionTest, AReceiverClosedRightAfterWaitStillCompletesItsSender) {
  const KvShape shape{2, 40, 2, 16};
  KvCache src = RandomCache(shape, 3);
  for (int round = 0; round < 8; ++round) {
    auto r = Receiver::Listen(RecvOpts());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    auto s = Sender::Connect(SendOpts(**r));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    SendRequestOptions ro;
    ro.request_id = 7;
    ro.levels = {{"fp16", 16, 0}};
    auto req = (*s)->Open(src.view(), ro);
    ASSERT_TRUE(req.ok()) << req.status().ToString();
    ASSERT_TRUE((*req)->PushAll().ok());
    auto in = (*r)->NextRequest(5000);
    ASSERT_TRUE(in.ok()) << in.status().ToString();
    auto dst = KvCache::Create(shape, DType::kF16);
    ASSERT_TRUE(dst.ok());
    ASSERT_TRUE((*r)->SetDestination(7, dst->view()).ok());
    ASSERT_TRUE((*r)->Wait(7, 10000).ok());
    (*r)->Close();
    const Status done = (*req)->Wait(10000);
    ASSERT_TRUE(done.ok()) << "round " << round << ": " << done.ToString();
    EXPECT_TRUE(SameBytes(src, *dst));
  }
}

TEST_P(SessionTest, PagedDestinationAndLateSetDestination) {
  auto r = Receiver::Listen(RecvOpts());
  ASSERT_TRUE(r.ok());
  auto s = Sender::Connect(SendOpts(**r));
  ASSERT_TRUE(s.ok());
  const KvShape shape{3, 50, 2, 8};
  KvCache src = RandomCache(shape, 2, DType::kF32);
  SendRequestOptions ro;
  ro.request_id = 5;
  ro.levels = {{"fp16", 16, 0}};
  ro.chunk_tokens = 16;
  auto req = (*s)->Open(src.view(), ro);
  ASSERT_TRUE(req.ok()) << req.status().ToString();
  ASSERT_TRUE((*req)->PushAll().ok());
  auto in = (*r)->NextRequest(5000);
  ASSERT_TRUE(in.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // chunks arrive and are buffered
  // Paged destination, fp32, blocks of 8 tokens in a shuffled table.
  const uint32_t block = 8, blocks = 10;
  std::vector<int32_t> table = {9, 2, 7, 0, 4, 1, 8};  // ceil(50/8) = 7
  std::vector<std::vector<float>> kstore(shape.layers), vstore(shape.layers);
  std::vector<void*> kp, vp;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    kstore[l].assign(size_t{blocks} * block * shape.kv_heads * shape.head_dim, 0.f);
    vstore[l].assign(kstore[l].size(), 0.f);
    kp.push_back(kstore[l].data());
    vp.push_back(vstore[l].data());
  }
  auto paged = KvView::Paged(shape, DType::kF32, block, blocks, kp, vp, table);
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  ASSERT_TRUE((*r)->SetDestination(5, *paged).ok());
  ASSERT_TRUE((*r)->Wait(5, 10000).ok());
  ASSERT_TRUE((*req)->Wait(10000).ok());
  std::vector<float> a(shape.tensor_elements()), b(shape.tensor_elements());
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      ASSERT_TRUE(src.view().ReadF32(l, kind, 0, shape.tokens, a.data()).ok());
      ASSERT_TRUE(paged->ReadF32(l, kind, 0, shape.tokens, b.data()).ok());
      for (size_t i = 0; i < a.size(); ++i) {
        // fp16 on the wire: within half an fp16 ulp.
        ASSERT_NEAR(a[i], b[i], std::abs(a[i]) * 1e-3 + 1e-6) << "layer " << l << " i " << i;
      }
    }
}

TEST_P(SessionTest, Concurrent256RequestsOnOneConnectionWithSmallWindow) {
  auto r = Receiver::Listen(RecvOpts());
  ASSERT_TRUE(r.ok());
  SenderOptions so = SendOpts(**r);
  so.max_inflight_bytes = 32 << 10;  // forces back-pressure
  auto s = Sender::Connect(so);
  ASSERT_TRUE(s.ok());
  constexpr int kRequests = 256;  // the promise: 256 concurrent requests on one connection
  const KvShape shape{2, 40, 2, 16};
  std::vector<KvCache> src, dst;
  std::vector<std::shared_ptr<SendRequest>> reqs;
  for (int i = 0; i < kRequests; ++i) {
    src.push_back(RandomCache(shape, 100 + i));
    dst.push_back(std::move(*KvCache::Create(shape, DType::kF16)));
  }
  std::thread receiver([&] {
    for (int i = 0; i < kRequests; ++i) {
      auto in = (*r)->NextRequest(10000);
      ASSERT_TRUE(in.ok()) << in.status().ToString();
      ASSERT_TRUE((*r)->SetDestination(in->request_id, dst[in->request_id - 1].view()).ok());
    }
  });
  for (int i = 0; i < kRequests; ++i) {
    SendRequestOptions ro;
    ro.request_id = i + 1;
    ro.levels = {{"fp16", 16, 0}};
    ro.chunk_tokens = 8;
    auto q = (*s)->Open(src[i].view(), ro);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    ASSERT_TRUE((*q)->PushAll().ok());
    reqs.push_back(*q);
  }
  receiver.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(reqs[i]->Wait(20000).ok()) << i << ": " << reqs[i]->Poll().ToString();
    ASSERT_TRUE((*r)->Wait(i + 1, 10000).ok());
    EXPECT_TRUE(SameBytes(src[i], dst[i])) << i;
  }
}

TEST_P(SessionTest, LevelsFromTheLadderAreDecodedAsChosen) {
  auto r = Receiver::Listen(RecvOpts());
  ASSERT_TRUE(r.ok());
  auto s = Sender::Connect(SendOpts(**r));
  ASSERT_TRUE(s.ok());
  const KvShape shape{2, 64, 2, 32};
  KvCache src = RandomCache(shape, 3);
  SendRequestOptions ro;
  ro.request_id = 9;
  ro.levels = {{"fp16", 16, 0}, {"q8_0", 8.5, 0.0001}, {"q4_0", 4.5, 0.01}};
  ro.max_kl = 0.001;  // no deadline: cheapest level within the budget = q8_0
  ro.chunk_tokens = 32;
  auto req = (*s)->Open(src.view(), ro);
  ASSERT_TRUE(req.ok()) << req.status().ToString();
  auto in = (*r)->NextRequest(5000);
  ASSERT_TRUE(in.ok());
  ASSERT_EQ(in->levels.size(), 3u);
  auto dst = KvCache::Create(shape, DType::kF32);
  ASSERT_TRUE((*r)->SetDestination(9, dst->view()).ok());
  ASSERT_TRUE((*req)->PushAll().ok());
  ASSERT_TRUE((*req)->Wait(10000).ok()) << (*req)->Poll().ToString();
  auto st = (*req)->stats();
  EXPECT_EQ(st.chunks_per_level[1], st.chunks);
  auto rs = (*r)->stats(9);
  ASSERT_TRUE(rs.ok());
  EXPECT_EQ(rs->chunks_per_level[1], rs->chunks);
  std::vector<float> a(shape.tensor_elements()), b(shape.tensor_elements());
  ASSERT_TRUE(src.view().ReadF32(1, KvKind::kValue, 0, shape.tokens, a.data()).ok());
  ASSERT_TRUE(dst->view().ReadF32(1, KvKind::kValue, 0, shape.tokens, b.data()).ok());
  double err = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err += (a[i] - b[i]) * (a[i] - b[i]);
    ref += a[i] * a[i];
  }
  EXPECT_LT(err / ref, 1e-3);  // 8-bit blocks
  EXPECT_GT(err, 0);           // and not passthrough
}

TEST_P(SessionTest, SenderTimesOutWhenTheReceiverStalls) {
  ReceiverOptions rop = RecvOpts();
  auto r = Receiver::Listen(rop);
  ASSERT_TRUE(r.ok());
  SenderOptions so = SendOpts(**r);
  so.stall_timeout_ms = 300;
  so.max_inflight_bytes = 8 << 10;
  auto s = Sender::Connect(so);
  ASSERT_TRUE(s.ok());
  const KvShape shape{4, 64, 2, 16};
  KvCache src = RandomCache(shape, 4);
  SendRequestOptions ro;
  ro.request_id = 1;
  ro.levels = {{"fp16", 16, 0}};
  ro.chunk_tokens = 16;
  auto req = (*s)->Open(src.view(), ro);
  ASSERT_TRUE(req.ok());
  ASSERT_TRUE((*req)->PushAll().ok());
  // The receiver never sets a destination: chunks are buffered, never acknowledged, while the
  // receiver answers pings. The request fails for that (not the Wait timing out), and the
  // sender did not take the live connection for a broken one.
  Status st = (*req)->Wait(5000);
  EXPECT_EQ(st.code(), StatusCode::kTimeout) << st.ToString();
  EXPECT_NE(st.message().find("acknowledged nothing for 300 ms"), std::string::npos)
      << st.ToString();
  EXPECT_EQ((*req)->stats().reconnects, 0u);
}

TEST_P(SessionTest, ReceiverTimesOutWhenTheSenderDisappears) {
  ReceiverOptions rop = RecvOpts();
  rop.stall_timeout_ms = 400;
  auto r = Receiver::Listen(rop);
  ASSERT_TRUE(r.ok());
  auto s = Sender::Connect(SendOpts(**r));
  ASSERT_TRUE(s.ok());
  const KvShape shape{4, 64, 2, 16};
  KvCache src = RandomCache(shape, 8);
  SendRequestOptions ro;
  ro.request_id = 2;
  ro.levels = {{"fp16", 16, 0}};
  auto req = (*s)->Open(src.view(), ro);
  ASSERT_TRUE(req.ok());
  ASSERT_TRUE((*req)->PushLayer(0).ok());  // then the sender goes away
  auto in = (*r)->NextRequest(5000);
  ASSERT_TRUE(in.ok());
  auto dst = KvCache::Create(shape, DType::kF16);
  ASSERT_TRUE((*r)->SetDestination(2, dst->view()).ok());
  EXPECT_TRUE((*r)->WaitLayer(2, 0, 5000).ok());
  (*s)->Close();
  Status st = (*r)->Wait(2, 5000);
  EXPECT_FALSE(st.ok() || st.in_progress()) << st.ToString();
}

// A KV the sender cannot encode (a NaN at the fp16 level) fails the request at both ends, at
// once: the receiver hears why from the sender instead of waiting out its stall timeout.
TEST_P(SessionTest, ARequestTheSenderCannotEncodeFailsAtTheReceiverAtOnce) {
  ReceiverOptions rop = RecvOpts();
  rop.stall_timeout_ms = 60000;
  auto r = Receiver::Listen(rop);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto s = Sender::Connect(SendOpts(**r));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const KvShape shape{3, 64, 2, 16};
  KvCache src = RandomCache(shape, 9);
  const uint16_t nan = 0x7e00;  // fp16 quiet NaN, in layer 1's V
  std::memcpy(src.tensor(1, KvKind::kValue).data() + 2 * 37, &nan, 2);
  SendRequestOptions ro;
  ro.request_id = 5;
  ro.levels = {{"fp16", 16, 0}};
  ro.chunk_tokens = 32;
  auto req = (*s)->Open(src.view(), ro);
  ASSERT_TRUE(req.ok()) << req.status().ToString();
  auto in = (*r)->NextRequest(5000);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  auto dst = KvCache::Create(shape, DType::kF16);
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE((*r)->SetDestination(5, dst->view()).ok());
  ASSERT_TRUE((*req)->PushAll().ok());
  Status sent = (*req)->Wait(10000);
  EXPECT_EQ(sent.code(), StatusCode::kInvalidArgument) << sent.ToString();
  const auto t0 = std::chrono::steady_clock::now();
  Status got = (*r)->Wait(5, 10000);
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(got.ok() || got.in_progress()) << got.ToString();
  EXPECT_NE(got.code(), StatusCode::kTimeout) << got.ToString();
  EXPECT_NE(got.message().find("finite"), std::string::npos) << got.ToString();
  EXPECT_LT(waited, 5.0);
  EXPECT_TRUE((*r)->Release(5).ok());
}

// A request builds each level's codec once at each end: a fraqtl codec costs about a
// millisecond to make (its profile's digest and checks), which a one-layer request would
// otherwise pay several times over.
TEST_P(SessionTest, EachLevelsCodecIsBuiltOncePerRequestAtEachEnd) {
  kvwire::testing::RegisterTestCodecs();
  auto r = Receiver::Listen(RecvOpts());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto s = Sender::Connect(SendOpts(**r));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const KvShape shape{2, 48, 2, 16};
  KvCache src = RandomCache(shape, 12);
  SendRequestOptions ro;
  ro.request_id = 6;
  ro.levels = {{"test-f32", 32, 0}};
  ro.chunk_tokens = 16;
  const uint64_t before = kvwire::testing::TestF32Made().load();
  auto req = (*s)->Open(src.view(), ro);
  ASSERT_TRUE(req.ok()) << req.status().ToString();
  auto in = (*r)->NextRequest(5000);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  auto dst = KvCache::Create(shape, DType::kF16);
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE((*r)->SetDestination(6, dst->view()).ok());
  ASSERT_TRUE((*req)->PushAll().ok());
  ASSERT_TRUE((*req)->Wait(10000).ok()) << (*req)->Poll().ToString();
  ASSERT_TRUE((*r)->Wait(6, 10000).ok());
  EXPECT_TRUE(SameBytes(src, *dst));
  // Each end needs one to encode or decode, so two in all is one at each end.
  EXPECT_EQ(kvwire::testing::TestF32Made().load() - before, 2u) << "codecs built by both ends";
  EXPECT_TRUE((*r)->Release(6).ok());
}

TEST_P(SessionTest, WrongKeyIsRefused) {
  auto r = Receiver::Listen(RecvOpts());
  ASSERT_TRUE(r.ok());
  SenderOptions so = SendOpts(**r);
  so.transport.key = std::vector<uint8_t>(32, 0x77);
  auto s = Sender::Connect(so);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnauthenticated);
}

TEST_P(SessionTest, UserDataAndCanonicalLevelSpecsReachTheReceiver) {
  auto r = Receiver::Listen(RecvOpts());
  ASSERT_TRUE(r.ok());
  auto s = Sender::Connect(SendOpts(**r));
  ASSERT_TRUE(s.ok());
  const KvShape shape{2, 96, 2, 32};
  KvCache src = RandomCache(shape, 5);
  SendRequestOptions ro;
  ro.request_id = 4;
  ro.levels = {{"kivi2", 3, -1}};  // short name: the stream header records "kivi2:g=32,r=32"
  ro.user_data = std::string("next_token=7\0binary\xff", 20);  // any bytes
  auto req = (*s)->Open(src.view(), ro);
  ASSERT_TRUE(req.ok()) << req.status().ToString();
  auto in = (*r)->NextRequest(5000);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_EQ(in->user_data, ro.user_data);
  ASSERT_EQ(in->levels.size(), 1u);
  EXPECT_EQ(in->levels[0].codec, "kivi2:g=32,r=32");
  auto dst = KvCache::Create(shape, DType::kF32);
  ASSERT_TRUE((*r)->SetDestination(4, dst->view()).ok());
  ASSERT_TRUE((*req)->PushAll().ok());
  ASSERT_TRUE((*req)->Wait(10000).ok()) << (*req)->Poll().ToString();
  ASSERT_TRUE((*r)->Wait(4, 10000).ok());
  // Too much user data is refused before anything is sent.
  ro.request_id = 5;
  ro.user_data.assign(kMaxRequestUserDataBytes + 1, 'x');
  EXPECT_EQ((*s)->Open(src.view(), ro).status().code(), StatusCode::kInvalidArgument);
}

// A receiver without the stream's profile fetches it from the sender (and keeps it for the next
// request); the result is the same as on a receiver that holds it. With fetching turned off, the
// request is refused and says which profile it needs.
TEST_P(SessionTest, ReceiverFetchesTheProfileFromTheSender) {
  const Profile profile = fraqtl_toy::ToyProfile(false);
  const Profile other = fraqtl_toy::ToyProfile(true);  // another id
  const std::string id = *profile.Id();
  ASSERT_NE(id, *other.Id());
  const KvShape shape{fraqtl_toy::kLayers, 40, fraqtl_toy::kHeads, fraqtl_toy::kDim};
  const KvCache src = RandomCache(shape, 8);
  auto transfer = [&](const Profile* held, bool fetch, uint64_t request, KvCache* out) -> Status {
    ReceiverOptions ro = RecvOpts();
    ro.profile = held;
    ro.fetch_profiles = fetch;
    KVWIRE_ASSIGN_OR_RETURN(auto r, Receiver::Listen(ro));
    SenderOptions so = SendOpts(*r);
    so.profile = &profile;
    KVWIRE_ASSIGN_OR_RETURN(auto s, Sender::Connect(so));
    for (uint64_t n = 0; n < 2; ++n) {  // the second request finds the profile already here
      SendRequestOptions q;
      q.request_id = request + n;
      q.levels = {{"fraqtl@2", 2, -1}};
      q.chunk_tokens = 16;
      KVWIRE_ASSIGN_OR_RETURN(auto req, s->Open(src.view(), q));
      KVWIRE_RETURN_IF_ERROR(req->PushAll());
      if (!fetch && held != &profile) return req->Wait(10000);  // refused by the receiver
      KVWIRE_ASSIGN_OR_RETURN(IncomingRequest in, r->NextRequest(10000));
      EXPECT_EQ(in.info.profile_id, id);
      KVWIRE_ASSIGN_OR_RETURN(*out, KvCache::Create(shape, DType::kF16));
      KVWIRE_RETURN_IF_ERROR(r->SetDestination(in.request_id, out->view()));
      KVWIRE_RETURN_IF_ERROR(req->Wait(10000));
      KVWIRE_RETURN_IF_ERROR(r->Wait(in.request_id, 10000));
      KVWIRE_RETURN_IF_ERROR(r->Release(in.request_id));
    }
    return Status::Ok();
  };
  KvCache held, fetched, replaced;
  ASSERT_TRUE(transfer(&profile, false, 10, &held).ok());
  Status st = transfer(nullptr, true, 20, &fetched);
  ASSERT_TRUE(st.ok()) << st.ToString();
  st = transfer(&other, true, 30, &replaced);  // holds another profile: fetches the right one
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(SameBytes(held, fetched));
  EXPECT_TRUE(SameBytes(held, replaced));
  EXPECT_FALSE(SameBytes(held, src));  // fraqtl@2 is lossy: the comparison means something

  KvCache unused;
  st = transfer(nullptr, false, 40, &unused);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find(id), std::string::npos) << st.ToString();
}

// Chunks encoded on several threads arrive the same as chunks encoded on one: the same bytes
// in the destination, every chunk, for fraqtl and a block codec.
TEST_P(SessionTest, EncodeThreadsChangeNothingButTheTime) {
  const Profile profile = fraqtl_toy::ToyProfile(false);
  const KvShape shape{fraqtl_toy::kLayers, 150, fraqtl_toy::kHeads, fraqtl_toy::kDim};
  const KvCache src = RandomCache(shape, 21);
  auto transfer = [&](int threads, const std::vector<LevelSpec>& levels,
                      KvCache* out) -> Status {
    KVWIRE_ASSIGN_OR_RETURN(auto r, Receiver::Listen(RecvOpts()));
    SenderOptions so = SendOpts(*r);
    so.profile = &profile;
    so.encode_threads = threads;
    KVWIRE_ASSIGN_OR_RETURN(auto s, Sender::Connect(so));
    SendRequestOptions q;
    q.request_id = 5;
    q.levels = levels;
    q.chunk_tokens = 16;  // 10 chunks per tensor, the last one short
    KVWIRE_ASSIGN_OR_RETURN(auto req, s->Open(src.view(), q));
    KVWIRE_ASSIGN_OR_RETURN(IncomingRequest in, r->NextRequest(10000));
    KVWIRE_ASSIGN_OR_RETURN(*out, KvCache::Create(shape, DType::kF16));
    KVWIRE_RETURN_IF_ERROR(r->SetDestination(in.request_id, out->view()));
    for (uint32_t l = 0; l < shape.layers; ++l) KVWIRE_RETURN_IF_ERROR(req->PushLayer(l));
    KVWIRE_RETURN_IF_ERROR(req->Wait(10000));
    KVWIRE_RETURN_IF_ERROR(r->Wait(in.request_id, 10000));
    const SendStats st = req->stats();
    EXPECT_EQ(st.chunks, 2u * shape.layers * 10u);
    return r->Release(in.request_id);
  };
  for (const std::vector<LevelSpec>& levels :
       {std::vector<LevelSpec>{{"fraqtl@2", 2, -1}},
        std::vector<LevelSpec>{{"int4-token", 4.5, 0.01}}}) {
    KvCache one, four;
    Status st = transfer(1, levels, &one);
    ASSERT_TRUE(st.ok()) << st.ToString();
    st = transfer(4, levels, &four);
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_TRUE(SameBytes(one, four)) << levels[0].codec;
    EXPECT_FALSE(SameBytes(one, src)) << levels[0].codec;  // lossy: the comparison means something
  }
}

// Context migration at any prefix: a prefix request [0, p) and a tail request [p, S) (its
// token_begin = p) decode into one whole-sequence cache, for prefixes off kivi's group and off
// the chunk size. Both requests are cut like the stream writer cuts a stream, so the cache
// equals a local encode + decode of the same two streams, byte for byte; the tail's first chunk
// is short (up to the next multiple of chunk_tokens), and kivi keeps that partial group fp16.
TEST_P(SessionTest, MigrationAtAnyPrefixEqualsLocalStreams) {
  const Profile profile = fraqtl_toy::ToyProfile(false);
  constexpr uint32_t kSeq = 150, kChunk = 32;
  const KvShape whole{fraqtl_toy::kLayers, kSeq, fraqtl_toy::kHeads, fraqtl_toy::kDim};
  const KvCache src = RandomCache(whole, 33);
  // Tokens [begin, begin + n) of src as a cache of their own.
  auto slice = [&](uint32_t begin, uint32_t n) {
    KvShape sh = whole;
    sh.tokens = n;
    auto c = KvCache::Create(sh, DType::kF16);
    EXPECT_TRUE(c.ok());
    for (uint32_t l = 0; l < whole.layers; ++l)
      for (KvKind k : {KvKind::kKey, KvKind::kValue})
        std::memcpy(c->tensor(l, k).data(), src.tensor(l, k).data() + size_t{begin} * src.view().row_bytes(),
                    size_t{n} * src.view().row_bytes());
    return std::move(*c);
  };
  auto r = Receiver::Listen(RecvOpts());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  SenderOptions so = SendOpts(**r);
  so.profile = &profile;
  auto s = Sender::Connect(so);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  uint64_t id = 0;
  for (const char* codec : {"kivi2:g=16,r=16", "fraqtl@2"}) {
    for (uint32_t p : {37u, 64u, 101u}) {
      SCOPED_TRACE(std::string(codec) + ", prefix " + std::to_string(p));
      const KvCache prefix = slice(0, p), tail = slice(p, kSeq - p);
      auto got = KvCache::Create(whole, DType::kF16);
      auto want = KvCache::Create(whole, DType::kF16);
      ASSERT_TRUE(got.ok() && want.ok());
      for (const KvCache* part : {&prefix, &tail}) {
        const uint32_t begin = part == &prefix ? 0 : p;
        SendRequestOptions q;
        q.request_id = ++id;
        q.levels = {LevelSpec{codec, 2, -1}};
        q.chunk_tokens = kChunk;
        q.token_begin = begin;
        auto req = (*s)->Open(part->view(), q);
        ASSERT_TRUE(req.ok()) << req.status().ToString();
        auto in = (*r)->NextRequest(10000);
        ASSERT_TRUE(in.ok()) << in.status().ToString();
        EXPECT_EQ(in->info.token_begin, begin);
        ASSERT_TRUE((*r)->SetDestination(in->request_id, got->view()).ok());
        ASSERT_TRUE((*req)->PushAll().ok());
        Status st = (*req)->Wait(10000);
        ASSERT_TRUE(st.ok()) << st.ToString();
        st = (*r)->Wait(in->request_id, 10000);
        ASSERT_TRUE(st.ok()) << st.ToString();
        const uint32_t phase = begin % kChunk;
        EXPECT_EQ((*req)->stats().chunks,
                  2u * whole.layers * ((part->shape().tokens + phase + kChunk - 1) / kChunk));
        ASSERT_TRUE((*r)->Release(in->request_id).ok());

        StreamInfo info;
        info.shape = part->shape();
        info.dtype = DType::kF16;
        info.token_begin = begin;
        info.levels = {codec};
        auto bytes = EncodeStream(part->view(), info, StreamWriterOptions{kChunk, 1}, &profile);
        ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
        auto reader = StreamReader::Open(*bytes, &profile);
        ASSERT_TRUE(reader.ok()) << reader.status().ToString();
        st = (*reader)->DecodeAll(want->view());
        ASSERT_TRUE(st.ok()) << st.ToString();
      }
      EXPECT_TRUE(SameBytes(*got, *want));
      EXPECT_FALSE(SameBytes(*got, src));  // lossy: the comparison means something
    }
  }
}

std::string Name(const ::testing::TestParamInfo<std::string>& info) { return info.param; }
INSTANTIATE_TEST_SUITE_P(Backends, SessionTest, ::testing::ValuesIn(AvailableTransports()), Name);

using testing_net::CuttableProxy;

// A Receiver on loopback (`ro` with its address and key filled in), a CuttableProxy in front of
// it and a Sender with a 20 ms reconnect backoff connected through the proxy; `cut_first`: the
// proxy cuts the connections after that many client bytes, set before the sender connects. `ok`
// is false (and the failure already reported) when a step failed.
struct ThroughProxy {
  std::unique_ptr<Receiver> receiver;
  std::unique_ptr<CuttableProxy> proxy;
  std::unique_ptr<Sender> sender;
  bool ok = false;
};

ThroughProxy ConnectThroughProxy(
    ReceiverOptions ro, std::optional<uint64_t> cut_first = std::nullopt,
    const std::function<void(SenderOptions*)>& adjust = nullptr) {
  ThroughProxy t;
  ro.transport.address = "127.0.0.1:0";
  ro.transport.key = Key();
  auto r = Receiver::Listen(ro);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return t;
  t.receiver = std::move(*r);
  const std::string addr = t.receiver->address();
  t.proxy = std::make_unique<CuttableProxy>(
      static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1))));
  if (cut_first) t.proxy->CutAfter(*cut_first);
  SenderOptions so;
  so.transport.address = t.proxy->address();
  so.transport.key = Key();
  so.reconnect_backoff_ms = 20;
  if (adjust) adjust(&so);
  auto s = Sender::Connect(so);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return t;
  t.sender = std::move(*s);
  t.ok = true;
  return t;
}

TEST(SessionResume, ReconnectsAndResumesAfterTheConnectionIsCut) {
  // Cut points from the handshake (first bytes) to the last layers (~160 KB of chunk traffic).
  for (uint64_t cut : {200ull, 700ull, 3000ull, 9000ull, 25000ull, 40000ull, 70000ull, 100000ull,
                       130000ull, 150000ull}) {
    ThroughProxy t = ConnectThroughProxy({});
    ASSERT_TRUE(t.ok);
    Receiver* r = t.receiver.get();
    Sender* s = t.sender.get();
    CuttableProxy& proxy = *t.proxy;
    const KvShape shape{6, 96, 2, 32};
    KvCache src = RandomCache(shape, 7);
    auto dst = KvCache::Create(shape, DType::kF16);
    SendRequestOptions q;
    q.request_id = 77;
    q.levels = {{"fp16", 16, 0}};
    q.chunk_tokens = 16;
    proxy.CutAfter(cut);
    auto req = s->Open(src.view(), q);
    ASSERT_TRUE(req.ok());
    auto in = r->NextRequest(5000);
    ASSERT_TRUE(in.ok()) << in.status().ToString();
    ASSERT_TRUE(r->SetDestination(77, dst->view()).ok());
    ASSERT_TRUE((*req)->PushAll().ok());
    Status st = (*req)->Wait(15000);
    ASSERT_TRUE(st.ok()) << "cut at " << cut << ": " << st.ToString();
    ASSERT_TRUE(r->Wait(77, 5000).ok());
    EXPECT_TRUE(SameBytes(src, *dst)) << "cut at " << cut;
    EXPECT_GE(proxy.connections(), 2) << "cut at " << cut;
    EXPECT_GE((*req)->stats().reconnects, 1u);
    s->Close();
    r->Close();
  }
}

// A chunk damaged on the wire after it was read straight into the destination fails its
// request with the CRC's reason, at both ends; the receiver serves the next request whole.
TEST(SessionLanding, ADamagedChunkReadIntoTheDestinationFailsItsRequest) {
  ThroughProxy t = ConnectThroughProxy({});
  ASSERT_TRUE(t.ok);
  const KvShape shape{3, 64, 2, 32};
  KvCache src = RandomCache(shape, 9);
  // Eight bytes from the middle of layer 1's V rows: they cross the wire as they are.
  const auto v1 = src.tensor(1, KvKind::kValue);
  t.proxy->CorruptFirst(std::vector<uint8_t>(v1.begin() + 1000, v1.begin() + 1008));
  auto dst = KvCache::Create(shape, DType::kF16);
  SendRequestOptions q;
  q.request_id = 90;
  q.levels = {{"fp16", 16, 0}};
  q.chunk_tokens = 32;
  auto req = t.sender->Open(src.view(), q);
  ASSERT_TRUE(req.ok());
  auto in = t.receiver->NextRequest(5000);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  ASSERT_TRUE(t.receiver->SetDestination(90, dst->view()).ok());
  ASSERT_TRUE((*req)->PushAll().ok());
  const Status got = t.receiver->Wait(90, 10000);
  EXPECT_TRUE(t.proxy->corrupted());
  EXPECT_EQ(got.code(), StatusCode::kCorrupt) << got.ToString();
  EXPECT_NE(got.ToString().find("CRC32C"), std::string::npos) << got.ToString();
  const Status sent = (*req)->Wait(10000);
  EXPECT_FALSE(sent.ok());
  EXPECT_FALSE(sent.in_progress());
  ASSERT_TRUE(t.receiver->Release(90).ok());

  q.request_id = 91;
  auto again = t.sender->Open(src.view(), q);
  ASSERT_TRUE(again.ok());
  auto in2 = t.receiver->NextRequest(5000);
  ASSERT_TRUE(in2.ok()) << in2.status().ToString();
  auto dst2 = KvCache::Create(shape, DType::kF16);
  ASSERT_TRUE(t.receiver->SetDestination(91, dst2->view()).ok());
  ASSERT_TRUE((*again)->PushAll().ok());
  ASSERT_TRUE((*again)->Wait(10000).ok());
  ASSERT_TRUE(t.receiver->Wait(91, 10000).ok());
  EXPECT_TRUE(SameBytes(src, *dst2));
  EXPECT_EQ(t.receiver->stats(91)->landed_chunks, 3u * 2 * 2);
}

// Retries go by time: an outage far longer than a few backoffs (the proxy refuses every
// connection for 1.5 s, while backoffs start at 20 ms) is ridden out within the window, and the
// transfer resumes exact. An outage longer than the window fails the request soon after the
// window ends, saying so.
TEST(SessionResume, AnOutageOfSecondsIsRiddenOutAndALongerOneFailsAfterTheWindow) {
  for (const bool longer : {false, true}) {
    ThroughProxy t = ConnectThroughProxy({}, std::nullopt, [&](SenderOptions* so) {
      so->reconnect_window_ms = longer ? 800 : 10000;
      so->max_reconnect_backoff_ms = 200;
    });
    ASSERT_TRUE(t.ok);
    Receiver* r = t.receiver.get();
    CuttableProxy& proxy = *t.proxy;
    const KvShape shape{6, 96, 2, 32};
    KvCache src = RandomCache(shape, 9);
    auto dst = KvCache::Create(shape, DType::kF16);
    SendRequestOptions q;
    q.request_id = 12;
    q.levels = {{"fp16", 16, 0}};
    q.chunk_tokens = 16;
    proxy.CutAfter(60000);
    proxy.RefuseAfterCut(true);
    auto req = t.sender->Open(src.view(), q);
    ASSERT_TRUE(req.ok());
    auto in = r->NextRequest(5000);
    ASSERT_TRUE(in.ok()) << in.status().ToString();
    ASSERT_TRUE(r->SetDestination(12, dst->view()).ok());
    ASSERT_TRUE((*req)->PushAll().ok());
    // The outage begins at the cut; it ends 1.5 s later (or never, for `longer`).
    for (int i = 0; i < 500 && !proxy.refusing(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_TRUE(proxy.refusing());
    const auto cut = proxy.last_cut();  // the sender's window starts when it notices, later
    if (!longer) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      proxy.RefuseAfterCut(false);
    }
    Status st = (*req)->Wait(20000);
    const auto failed_after = std::chrono::steady_clock::now() - cut;
    if (!longer) {
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_TRUE(r->Wait(12, 5000).ok());
      EXPECT_TRUE(SameBytes(src, *dst));
      EXPECT_GE(proxy.refused(), 4) << "attempts during the outage";
      EXPECT_GE((*req)->stats().reconnects, 1u);
    } else {
      EXPECT_EQ(st.code(), StatusCode::kIoError) << st.ToString();
      EXPECT_NE(st.message().find("no reconnection within the window of 800 ms"),
                std::string::npos)
          << st.ToString();
      EXPECT_GE(failed_after, std::chrono::milliseconds(800));
      EXPECT_LT(failed_after, std::chrono::milliseconds(8000)) << "the window was not kept";
    }
    t.sender->Close();
    r->Close();
  }
}

// A decode node that dies mid-transfer and comes back on the same address holds nothing of the
// request: the sender learns so on resume (RequestAccept.fresh) and either sends the whole
// request again (the new receiver gets the exact KV) or fails it, saying why; the new receiver
// never reports the request complete without every chunk. The address is a proxy's: the death
// is every connection cut at once with no goodbye, and the new node is the proxy's new target.
TEST(SessionResume, AReceiverRestartedOnTheSameAddressGetsTheWholeRequestOrAClearError) {
  for (const bool resend : {true, false}) {
    ThroughProxy t = ConnectThroughProxy({}, std::nullopt, [&](SenderOptions* so) {
      so->max_reconnect_backoff_ms = 100;
      so->resend_after_receiver_restart = resend;
    });
    ASSERT_TRUE(t.ok);
    Receiver* r1 = t.receiver.get();
    CuttableProxy& proxy = *t.proxy;
    const KvShape shape{6, 64, 2, 16};
    const KvCache src = RandomCache(shape, 13);
    SendRequestOptions q;
    q.request_id = 3;
    q.levels = {{"fp16", 16, 0}};
    q.chunk_tokens = 16;  // 8 chunks per layer
    auto req = t.sender->Open(src.view(), q);
    ASSERT_TRUE(req.ok()) << req.status().ToString();
    auto in = r1->NextRequest(5000);
    ASSERT_TRUE(in.ok()) << in.status().ToString();
    auto dst1 = KvCache::Create(shape, DType::kF16);
    ASSERT_TRUE(r1->SetDestination(3, dst1->view()).ok());
    for (uint32_t l = 0; l < 3; ++l) ASSERT_TRUE((*req)->PushLayer(l).ok());
    ASSERT_TRUE(r1->WaitLayer(3, 2, 5000).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the acks reach the sender

    ReceiverOptions ro2;  // the new decode node
    ro2.transport.address = "127.0.0.1:0";
    ro2.transport.key = Key();
    auto r2 = Receiver::Listen(ro2);
    ASSERT_TRUE(r2.ok()) << r2.status().ToString();
    const std::string addr2 = (*r2)->address();
    proxy.SetTarget(static_cast<uint16_t>(std::stoi(addr2.substr(addr2.rfind(':') + 1))));
    proxy.CutAll();  // the old one is gone
    for (uint32_t l = 3; l < shape.layers; ++l) ASSERT_TRUE((*req)->PushLayer(l).ok());
    auto in2 = (*r2)->NextRequest(10000);
    ASSERT_TRUE(in2.ok()) << in2.status().ToString();
    EXPECT_EQ(in2->request_id, 3u);
    auto dst2 = KvCache::Create(shape, DType::kF16);
    ASSERT_TRUE((*r2)->SetDestination(3, dst2->view()).ok());
    Status st = (*req)->Wait(15000);
    if (resend) {
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_TRUE((*r2)->Wait(3, 5000).ok());
      EXPECT_TRUE(SameBytes(src, *dst2));
      EXPECT_GE((*req)->stats().resent_chunks, 24u);  // layers 0-2 again
    } else {
      EXPECT_EQ(st.code(), StatusCode::kIoError) << st.ToString();
      EXPECT_NE(st.message().find("the receiver restarted and lost 24 acknowledged chunks"),
                std::string::npos)
          << st.ToString();
      EXPECT_FALSE((*r2)->Wait(3, 3000).ok()) << "incomplete KV reported complete";
    }
    t.sender->Close();
    (*r2)->Close();
    r1->Close();
  }
}

// The first connection is retried like a broken one: cut during the handshake (before the
// sender has any request), Sender::Connect still succeeds on a second connection. A receiver that
// answers "no" is not asked again: a wrong key fails at once, long before one backoff.
TEST(SessionResume, TheFirstConnectionIsRetriedButARefusalIsNot) {
  for (uint64_t cut : {10ull, 40ull, 90ull}) {
    ThroughProxy t = ConnectThroughProxy({}, cut);  // inside the first connection's handshake
    ASSERT_TRUE(t.ok) << "cut after " << cut << " bytes";
    EXPECT_EQ(t.proxy->connections(), 2) << "cut after " << cut << " bytes";
    // And the connection it kept carries a request.
    const KvShape shape{2, 32, 2, 16};
    KvCache src = RandomCache(shape, 3);
    auto dst = KvCache::Create(shape, DType::kF16);
    SendRequestOptions q;
    q.request_id = 5;
    q.levels = {{"fp16", 16, 0}};
    auto req = t.sender->Open(src.view(), q);
    ASSERT_TRUE(req.ok()) << req.status().ToString();
    auto in = t.receiver->NextRequest(5000);
    ASSERT_TRUE(in.ok()) << in.status().ToString();
    ASSERT_TRUE(t.receiver->SetDestination(5, dst->view()).ok());
    ASSERT_TRUE((*req)->PushAll().ok());
    ASSERT_TRUE((*req)->Wait(10000).ok());
    EXPECT_TRUE(SameBytes(src, *dst));
    t.sender->Close();
    t.receiver->Close();
  }

  ReceiverOptions ro;
  ro.transport.address = "127.0.0.1:0";
  ro.transport.key = Key();
  auto r = Receiver::Listen(ro);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  SenderOptions so;
  so.transport.address = (*r)->address();
  so.transport.key = std::vector<uint8_t>(32, 0x77);
  so.reconnect_backoff_ms = 60000;  // a retry would wait this long
  const auto t0 = std::chrono::steady_clock::now();
  auto s = Sender::Connect(so);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnauthenticated) << s.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30))
      << "a wrong key was retried";
}

// A sender of one backend and a receiver of the other are told so, with the backend to use,
// and the sender does not retry (the receiver answered).
TEST(SessionBackends, AMismatchedBackendIsNamed) {
  if (!testing_backends::Configured("ucx"))
    GTEST_SKIP() << "SKIPPED: this build was configured without UCX (no ucx backend)";
  const auto have = AvailableTransports();
  ASSERT_NE(std::find(have.begin(), have.end(), "ucx"), have.end())
      << "the ucx backend is configured in but not available";
  for (const auto& [serve, send] : std::vector<std::pair<std::string, std::string>>{
           {"tcp", "ucx"}, {"ucx", "tcp"}}) {
    ReceiverOptions ro;
    ro.backend = serve;
    ro.transport.address = "127.0.0.1:0";
    ro.transport.key = Key();
    auto r = Receiver::Listen(ro);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    SenderOptions so;
    so.backend = send;
    so.transport.address = (*r)->address();
    so.transport.key = Key();
    so.reconnect_backoff_ms = 60000;  // a retry would wait this long
    auto s = Sender::Connect(so);
    ASSERT_FALSE(s.ok()) << serve << " receiver, " << send << " sender";
    EXPECT_EQ(s.status().code(), StatusCode::kUnsupported) << s.status().ToString();
    EXPECT_NE(s.status().message().find("connect with backend '" + serve + "'"),
              std::string::npos)
        << s.status().ToString();
    (*r)->Close();
  }
}

// Regression: the receiver completed and released a request, but the acks and the RequestDone
// died with the connection. The sender reconnected and resumed; the receiver no longer knew the
// id, opened it as a brand-new request (announced a second time, no chunks ever came) and the
// sender failed 30 s later with "stalled" although every byte had been delivered.
TEST(SessionResume, ResumeOfAReleasedRequestLearnsItsOutcome) {
  ReceiverOptions ro;
  ro.stall_timeout_ms = 2000;
  ThroughProxy t = ConnectThroughProxy(ro);
  ASSERT_TRUE(t.ok);
  Receiver* r = t.receiver.get();
  Sender* s = t.sender.get();
  CuttableProxy& proxy = *t.proxy;
  const KvShape shape{2, 64, 2, 16};
  KvCache src = RandomCache(shape, 21);
  auto dst = KvCache::Create(shape, DType::kF16);
  SendRequestOptions q;
  q.request_id = 31;
  q.levels = {{"fp16", 16, 0}};
  q.chunk_tokens = 16;
  proxy.HoldReplies(true);
  auto req = s->Open(src.view(), q);
  ASSERT_TRUE(req.ok());
  auto in = r->NextRequest(5000);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  ASSERT_TRUE(r->SetDestination(31, dst->view()).ok());
  ASSERT_TRUE((*req)->PushAll().ok());
  ASSERT_TRUE(r->Wait(31, 5000).ok());
  EXPECT_TRUE(SameBytes(src, *dst));
  ASSERT_TRUE(r->Release(31).ok());
  EXPECT_TRUE((*req)->Poll().in_progress());  // it never heard back
  // The held replies die with the connection.
  proxy.CutAll();
  proxy.HoldReplies(false);
  Status st = (*req)->Wait(10000);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_GE((*req)->stats().reconnects, 1u);
  // And the receiver did not announce it a second time.
  EXPECT_EQ(r->NextRequest(300).status().code(), StatusCode::kTimeout);
  s->Close();
  r->Close();
}

}  // namespace
}  // namespace kvwire

namespace kvwire {
namespace {

// The RequestBegin a sender writes for an fp16 `shape` at one level (chunks of 16 tokens), for
// tests that speak the protocol on a raw connection.
control::Control ForgedBegin(uint64_t id, const KvShape& shape, const std::string& codec,
                             double bits, double kl, const std::vector<uint8_t>& header,
                             bool resume) {
  control::Control begin;
  auto* b = begin.mutable_request_begin();
  b->set_request_id(id);
  b->mutable_shape()->set_layers(shape.layers);
  b->mutable_shape()->set_tokens(shape.tokens);
  b->mutable_shape()->set_kv_heads(shape.kv_heads);
  b->mutable_shape()->set_head_dim(shape.head_dim);
  b->set_dtype(static_cast<uint32_t>(DType::kF16));
  auto* level = b->add_levels();
  level->set_codec(codec);
  level->set_bits_per_element(bits);
  level->set_kl(kl);
  b->set_chunk_tokens(16);
  b->set_stream_header(header.data(), header.size());
  b->set_resume(resume);
  return begin;
}

// Regression: a sender that reconnects while its first begin is still in flight can have two
// begins of one request reach the receiver on two connections at once. Both used to pass the
// "do I know this id?" check before either registered it, so the application was handed the id
// twice; after it released the first, the second was gone, and `kvwire serve` exited with
// "request vanished". Here two connections race resume-begins for 40 ids: each id must be
// announced exactly once, and both connections stay usable.
TEST(SessionResume, RacingBeginsOfOneRequestAnnounceItOnce) {
  ReceiverOptions ro;
  ro.backend = "tcp";
  ro.transport.address = "127.0.0.1:0";
  ro.transport.key = Key();
  auto r = Receiver::Listen(ro);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto tcp = CreateTransport("tcp");
  ASSERT_TRUE(tcp.ok());
  TransportOptions co;
  co.address = (*r)->address();
  co.key = Key();
  co.node_name = "racer";
  auto c1 = (*tcp)->Connect(co);
  auto c2 = (*tcp)->Connect(co);
  ASSERT_TRUE(c1.ok() && c2.ok());

  const KvShape shape{2, 32, 2, 16};
  StreamInfo info;
  info.shape = shape;
  info.dtype = DType::kF16;
  info.levels = {"fp16"};
  auto writer = StreamWriter::Create(info, {});
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  std::vector<uint8_t> header;
  ASSERT_TRUE((*writer)->WriteHeader(&header).ok());
  auto begin_of = [&](uint64_t id) {
    return *transport::MakeControlMessage(
        ForgedBegin(id, shape, (*writer)->info().levels[0], 16, 0, header, /*resume=*/true));
  };
  constexpr uint64_t kIds = 40;
  for (uint64_t id = 1; id <= kIds; ++id) {
    Message m1 = begin_of(id), m2 = begin_of(id);
    std::thread t([&] { ASSERT_TRUE((*c2)->Send(std::move(m2)).ok()); });
    ASSERT_TRUE((*c1)->Send(std::move(m1)).ok());
    t.join();
  }
  std::vector<int> seen(kIds + 1, 0);
  for (;;) {
    auto in = (*r)->NextRequest(1000);
    if (!in.ok()) {
      EXPECT_EQ(in.status().code(), StatusCode::kTimeout) << in.status().ToString();
      break;
    }
    ASSERT_GE(in->request_id, 1u);
    ASSERT_LE(in->request_id, kIds);
    ++seen[in->request_id];
    ASSERT_TRUE((*r)->Release(in->request_id).ok());
  }
  for (uint64_t id = 1; id <= kIds; ++id) EXPECT_EQ(seen[id], 1) << "request " << id;
  (*c1)->Close();
  (*c2)->Close();
  (*r)->Close();
}

// A forged sender answers the receiver's ProfileRequest with a profile whose bytes do not hash
// to its id: the request fails (kCorrupt, the application sees it failed), nothing is decoded.
TEST(SessionProfileFetch, AProfileThatDoesNotMatchItsIdIsRefused) {
  const Profile profile = fraqtl_toy::ToyProfile(false);
  const std::string id = *profile.Id();
  ReceiverOptions ro;
  ro.backend = "tcp";
  ro.transport.address = "127.0.0.1:0";
  ro.transport.key = Key();
  auto r = Receiver::Listen(ro);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto tcp = CreateTransport("tcp");
  ASSERT_TRUE(tcp.ok());
  TransportOptions co;
  co.address = (*r)->address();
  co.key = Key();
  co.node_name = "forger";
  auto conn = (*tcp)->Connect(co);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();

  const KvShape shape{fraqtl_toy::kLayers, 32, fraqtl_toy::kHeads, fraqtl_toy::kDim};
  StreamInfo info;
  info.shape = shape;
  info.dtype = DType::kF16;
  info.levels = {"fraqtl@2"};
  auto writer = StreamWriter::Create(info, {}, &profile);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  std::vector<uint8_t> header;
  ASSERT_TRUE((*writer)->WriteHeader(&header).ok());
  auto m = transport::MakeControlMessage(ForgedBegin(7, shape, (*writer)->info().levels[0], 2, -1,
                                                     header, /*resume=*/false));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE((*conn)->Send(std::move(*m)).ok());

  // Wait for the receiver's ProfileRequest; answer with one flipped byte.
  auto next_control = [&]() -> Result<control::Control> {
    KVWIRE_ASSIGN_OR_RETURN(Message msg, (*conn)->Receive(5000));
    return transport::ParseControl(msg.meta);
  };
  bool asked = false;
  for (int i = 0; i < 4 && !asked; ++i) {
    auto c = next_control();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    if (c->has_profile_request()) {
      EXPECT_EQ(c->profile_request().profile_id(), id);
      asked = true;
    }
  }
  ASSERT_TRUE(asked);
  auto bytes = profile.Serialize();
  ASSERT_TRUE(bytes.ok());
  ASSERT_LE(bytes->size(), transport::kMaxProfileDataBytes);
  (*bytes)[bytes->size() / 2] ^= 1;
  control::Control data;
  data.mutable_profile_data()->set_profile_id(id);
  data.mutable_profile_data()->set_total_bytes(bytes->size());
  data.mutable_profile_data()->set_data(bytes->data(), bytes->size());
  data.mutable_profile_data()->set_last(true);
  m = transport::MakeControlMessage(data);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE((*conn)->Send(std::move(*m)).ok());

  bool refused = false;
  for (int i = 0; i < 4 && !refused; ++i) {
    auto c = next_control();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    if (c->has_error() && c->error().request_id() == 7) {
      EXPECT_EQ(c->error().status_code(), static_cast<uint32_t>(StatusCode::kCorrupt));
      EXPECT_NE(c->error().message().find("does not hash"), std::string::npos)
          << c->error().message();
      refused = true;
    }
  }
  EXPECT_TRUE(refused);
  auto in = (*r)->NextRequest(5000);  // handed to the application, failed
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_EQ(in->request_id, 7u);
  EXPECT_EQ((*r)->Wait(7, 1000).code(), StatusCode::kCorrupt);
  auto dst = KvCache::Create(shape, DType::kF16);
  EXPECT_EQ((*r)->SetDestination(7, dst->view()).code(), StatusCode::kCorrupt);
  EXPECT_TRUE((*r)->Release(7).ok());

  // ProfileData nobody asked for is a protocol violation: the receiver drops the peer.
  m = transport::MakeControlMessage(data);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE((*conn)->Send(std::move(*m)).ok());
  Status end;
  for (int i = 0; i < 4 && end.ok(); ++i) end = next_control().status();
  EXPECT_FALSE(end.ok());
}

}  // namespace
}  // namespace kvwire

namespace kvwire {
namespace {

// The sender learns the receiver's codec families first thing on the connection (Capabilities)
// and refuses at Open a level the receiver could not decode. A "receiver" that does not answer
// with its capabilities is refused at Connect.
TEST(SessionCapabilities, OpenRefusesACodecTheReceiverCannotDecode) {
  auto tcp = CreateTransport("tcp");
  ASSERT_TRUE(tcp.ok());
  TransportOptions lo;
  lo.address = "127.0.0.1:0";
  lo.key = Key();
  lo.node_name = "old-decode";
  auto listener = (*tcp)->Listen(lo);
  ASSERT_TRUE(listener.ok()) << listener.status().ToString();
  auto peer = [&](bool send_caps) {
    return std::thread([&, send_caps] {
      auto c = (*listener)->Accept(5000);
      if (!c.ok()) return;
      if (send_caps) {
        control::Control caps;
        caps.mutable_capabilities()->add_backends("tcp");
        caps.mutable_capabilities()->add_codecs("fp16");
        auto m = transport::MakeControlMessage(caps);
        if (m.ok()) (void)(*c)->Send(std::move(*m));
      }
      while ((*c)->Receive(3000).ok()) {
      }
    });
  };
  SenderOptions so;
  so.backend = "tcp";
  so.transport.address = (*listener)->address();
  so.transport.key = Key();
  so.transport.handshake_timeout_ms = 500;
  {
    std::thread t = peer(true);
    auto s = Sender::Connect(so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    const KvCache src = RandomCache({1, 8, 2, 16}, 3);
    SendRequestOptions q;
    q.request_id = 1;
    q.levels = {{"q4_0", 4.5, -1}};
    auto refused = (*s)->Open(src.view(), q);
    EXPECT_EQ(refused.status().code(), StatusCode::kUnsupported) << refused.status().ToString();
    EXPECT_NE(refused.status().message().find("q4_0"), std::string::npos);
    q.request_id = 2;
    q.levels = {{"fp16", 16, 0}};
    EXPECT_TRUE((*s)->Open(src.view(), q).ok());
    s->reset();
    t.join();
  }
  // A peer that authenticates and then says nothing looks like a link that went down right
  // after the authentication: it is retried within the window, then the error says what was
  // missing.
  so.reconnect_window_ms = 1500;
  std::atomic<bool> stop{false};
  std::thread silent([&] {
    while (!stop) {
      auto c = (*listener)->Accept(200);
      if (c.ok()) (void)(*c)->Receive(1000);
    }
  });
  auto s = Sender::Connect(so);
  stop = true;
  silent.join();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("capabilities"), std::string::npos) << s.status().ToString();
  EXPECT_NE(s.status().message().find("reconnect window of 1500 ms"), std::string::npos)
      << s.status().ToString();
}

}  // namespace
}  // namespace kvwire
