// One suite, instantiated once per backend this build provides (loopback only, ephemeral ports).
#include "kvwire/transport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>

#include "transport/configured_backends.h"
#include "transport/control.h"
#include "transport/test_pki.h"

namespace kvwire {
namespace {

std::vector<uint8_t> TestKey(uint8_t salt = 0) {
  std::vector<uint8_t> k(32);
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i * 7 + salt);
  return k;
}

// A backend name, or "ucx_busypoll": the ucx backend with TransportOptions::busy_poll_us set, so
// that the progress thread's polling path (it sleeps less, and Send skips waking it while it
// polls) runs the same suite.
constexpr char kUcxBusyPoll[] = "ucx_busypoll";
// "tcp_tls": the tcp backend inside TLS (TransportOptions::tls, certificates of test_pki.h).
constexpr char kTcpTls[] = "tcp_tls";

class TransportTest : public testing::TestWithParam<std::string> {
 protected:
  std::string Backend() const {
    if (GetParam() == kUcxBusyPoll) return "ucx";
    if (GetParam() == kTcpTls) return "tcp";
    return GetParam();
  }
  TlsOptions Tls(bool server) const {
    TlsOptions t;
    if (GetParam() != kTcpTls) return t;
    const testing_pki::Pki& pki = testing_pki::Get();
    t.enabled = true;
    if (server) {
      t.cert_file = pki.server_cert;
      t.key_file = pki.server_key;
    } else {
      t.ca_file = pki.ca_cert;
    }
    return t;
  }
  uint32_t BusyPollUs() const { return GetParam() == kUcxBusyPoll ? 200 : 0; }

  void SetUp() override {
    auto t = CreateTransport(Backend());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    transport_ = std::move(*t);
  }

  TransportOptions ServerOptions() {
    TransportOptions o;
    static std::atomic<int> counter{0};
    o.address = GetParam() == "inproc" ? "test-" + std::to_string(counter++) : "127.0.0.1:0";
    o.key = TestKey();
    o.node_name = "server";
    o.handshake_timeout_ms = 3000;
    o.busy_poll_us = BusyPollUs();
    o.tls = Tls(/*server=*/true);
    return o;
  }
  TransportOptions ClientOptions(const Listener& l) {
    TransportOptions o;
    o.address = l.address();
    o.key = TestKey();
    o.node_name = "client";
    o.handshake_timeout_ms = 3000;
    o.busy_poll_us = BusyPollUs();
    o.tls = Tls(/*server=*/false);
    return o;
  }

  // Connects a client to a fresh listener; returns {server end, client end}.
  std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>> Pair(
      TransportOptions server_opts = {}, TransportOptions client_opts = {}) {
    if (server_opts.address.empty()) server_opts = ServerOptions();
    auto l = transport_->Listen(server_opts);
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    if (!l.ok()) return {};
    listener_ = std::move(*l);
    if (client_opts.address.empty()) client_opts = ClientOptions(*listener_);
    auto accepted = std::async(std::launch::async, [&] { return listener_->Accept(5000); });
    auto c = transport_->Connect(client_opts);
    auto s = accepted.get();
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!c.ok() || !s.ok()) return {};
    return {std::move(*s), std::move(*c)};
  }

  static Message Data(uint32_t seq, size_t bytes) {
    control::ChunkDescriptor d;
    d.set_request_id(1);
    d.set_seq(seq);
    d.set_tokens(1);
    d.set_payload_bytes(static_cast<uint32_t>(bytes));
    std::vector<uint8_t> payload(bytes);
    for (size_t i = 0; i < bytes; ++i) payload[i] = static_cast<uint8_t>(i * 31 + seq);
    return *transport::MakeDataMessage(d, std::move(payload));
  }

  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Listener> listener_;
};

TEST_P(TransportTest, CapabilitiesAreConsistent) {
  EXPECT_EQ(transport_->name(), Backend());
  EXPECT_GE(transport_->caps().max_message_bytes, kMaxDataMessageBytes);
  EXPECT_EQ(transport_->caps().remote, GetParam() != "inproc");
  // No backend sends from the caller's buffer: tcp and inproc queue a message they own, and ucx
  // keeps UCX's zero-copy sends off (UCX 1.13 aborts when one meets a broken connection).
  EXPECT_FALSE(transport_->caps().zero_copy_send);
}

// Every backend this build was configured with is available (the suites here are instantiated
// over AvailableTransports(), so a backend that went missing would otherwise just not run), and
// nothing else is.
TEST(TransportFactory, TheConfiguredBackendsAreAvailable) {
  std::vector<std::string> want = testing_backends::ConfiguredBackends();
  std::vector<std::string> have = AvailableTransports();
  ASSERT_FALSE(want.empty());
  std::sort(want.begin(), want.end());
  std::sort(have.begin(), have.end());
  EXPECT_EQ(have, want);
  for (const std::string& name : want) {
    auto t = CreateTransport(name);
    EXPECT_TRUE(t.ok()) << name << ": " << t.status().ToString();
  }
}

TEST_P(TransportTest, MessagesArriveInOrderBothWays) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  EXPECT_EQ(server->peer_name(), "client");
  EXPECT_EQ(client->peer_name(), "server");
  constexpr int kCount = 200;
  std::thread sender([&, c = client.get()] {
    for (int i = 0; i < kCount; ++i) ASSERT_TRUE(c->Send(Data(i, 1 + (i * 997) % 70000)).ok());
  });
  for (int i = 0; i < kCount; ++i) {
    auto m = server->Receive(5000);
    ASSERT_TRUE(m.ok()) << i << ": " << m.status().ToString();
    auto d = transport::ParseChunkDescriptor(*m);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    EXPECT_EQ(d->seq(), uint32_t(i));
    ASSERT_EQ(m->payload.size(), size_t(1 + (i * 997) % 70000));
    EXPECT_EQ(m->payload.back(), static_cast<uint8_t>((m->payload.size() - 1) * 31 + i));
  }
  sender.join();
  control::Control pong;
  pong.mutable_pong()->set_nonce(42);
  ASSERT_TRUE(server->Send(*transport::MakeControlMessage(pong)).ok());
  auto back = client->Receive(5000);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  auto parsed = transport::ParseControl(back->meta);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->pong().nonce(), 42u);
}

// Small messages that a backend may write on the sending thread and large ones it queues for a
// writer, interleaved by two threads at once: each thread's messages arrive in the order it
// sent them, none lost or torn (a small one must not overtake a large one queued before it).
TEST_P(TransportTest, SmallAndLargeMessagesOfSeveralThreadsKeepTheirOrder) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  constexpr int kPerThread = 120;
  auto size_of = [](uint32_t seq) -> size_t {
    return seq % 7 == 3 ? (size_t{600} << 10) + seq : 1 + (seq * 131) % 5000;
  };
  auto run = [&, c = client.get()](uint32_t first) {
    for (uint32_t i = 0; i < kPerThread; ++i) {
      ASSERT_TRUE(c->Send(Data(first + i, size_of(first + i))).ok());
    }
  };
  std::thread a(run, 0), b(run, 1000);
  uint32_t next[2] = {0, 1000};
  for (int i = 0; i < 2 * kPerThread; ++i) {
    auto m = server->Receive(10000);
    ASSERT_TRUE(m.ok()) << i << ": " << m.status().ToString();
    auto d = transport::ParseChunkDescriptor(*m);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    const uint32_t seq = d->seq();
    uint32_t& want = next[seq >= 1000 ? 1 : 0];
    ASSERT_EQ(seq, want) << "message " << i;
    ++want;
    ASSERT_EQ(m->payload.size(), size_of(seq));
    EXPECT_TRUE(m->payload == Data(seq, size_of(seq)).payload) << seq;
  }
  a.join();
  b.join();
}

// A message whose payload ends in borrowed bytes (Message::borrowed) arrives as one payload, and
// the lender may reuse them as soon as Send returns; among queued messages it keeps its place.
TEST_P(TransportTest, BorrowedBytesArriveAndAreTheLendersAgainWhenSendReturns) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  constexpr size_t kHead = 40, kLent = size_t{3} << 20;
  std::vector<uint8_t> lent(kLent);
  auto lend_message = [&](uint32_t seq) {
    Message whole = Data(seq, kHead + kLent);
    std::copy(whole.payload.begin() + kHead, whole.payload.end(), lent.begin());
    whole.payload.resize(kHead);
    whole.borrowed = lent;
    return whole;
  };
  // Large copied messages (queued behind one another on tcp) around borrowed ones, one thread.
  std::thread t([&, c = client.get()] {
    for (uint32_t seq = 0; seq < 12; ++seq) {
      if (seq % 3 == 1) {
        ASSERT_TRUE(c->Send(lend_message(seq)).ok());
        std::fill(lent.begin(), lent.end(), 0xee);  // the lender's again
      } else {
        ASSERT_TRUE(c->Send(Data(seq, (size_t{1} << 20) + seq)).ok());
      }
    }
  });
  for (uint32_t seq = 0; seq < 12; ++seq) {
    auto m = server->Receive(20000);
    ASSERT_TRUE(m.ok()) << seq << ": " << m.status().ToString();
    EXPECT_TRUE(m->borrowed.empty());
    auto d = transport::ParseChunkDescriptor(*m);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    ASSERT_EQ(d->seq(), seq);
    const size_t bytes = seq % 3 == 1 ? kHead + kLent : (size_t{1} << 20) + seq;
    ASSERT_EQ(m->payload.size(), bytes) << seq;
    EXPECT_TRUE(m->payload == Data(seq, bytes).payload) << seq;
  }
  t.join();
}

// A connection that lends until sent (Connection::LendsUntilSent) sends borrowed bytes from the
// lender's memory after Send returns and calls Message::sent exactly once when it reads them no
// more: once sent, or when its close drops them (the peer gone). The others ignore `sent`.
TEST_P(TransportTest, LentBytesStayLentUntilSentRunsOnce) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  constexpr size_t kHead = 40, kLent = size_t{2} << 20;
  constexpr uint32_t kSent = 6, kDropped = 4;
  std::vector<std::vector<uint8_t>> lent(kSent + kDropped);
  std::vector<std::atomic<int>> calls(kSent + kDropped);
  auto lend_message = [&](uint32_t seq) {
    Message whole = Data(seq, kHead + kLent);
    lent[seq].assign(whole.payload.begin() + kHead, whole.payload.end());
    whole.payload.resize(kHead);
    whole.borrowed = lent[seq];
    whole.sent = [&calls, seq] { ++calls[seq]; };
    return whole;
  };
  const bool lends = client->LendsUntilSent();
  for (uint32_t seq = 0; seq < kSent; ++seq) ASSERT_TRUE(client->Send(lend_message(seq)).ok());
  for (uint32_t seq = 0; seq < kSent; ++seq) {
    auto m = server->Receive(20000);
    ASSERT_TRUE(m.ok()) << seq << ": " << m.status().ToString();
    auto d = transport::ParseChunkDescriptor(*m);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    ASSERT_EQ(d->seq(), seq);
    EXPECT_TRUE(m->payload == Data(seq, kHead + kLent).payload) << seq;
  }
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto all_once = [&](uint32_t from, uint32_t to) {
    for (uint32_t i = from; i < to; ++i) {
      if (calls[i] != 1) return false;
    }
    return true;
  };
  if (!lends) {
    for (uint32_t i = 0; i < kSent; ++i) EXPECT_EQ(calls[i], 0) << i;
    return;
  }
  while (!all_once(0, kSent) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (uint32_t i = 0; i < kSent; ++i) EXPECT_EQ(calls[i], 1) << i;
  // The peer goes away: what is lent now is never pulled; Close ends each lend, once.
  server->Close();
  for (uint32_t seq = kSent; seq < kSent + kDropped; ++seq) (void)client->Send(lend_message(seq));
  client->Close();
  for (uint32_t i = 0; i < kSent + kDropped; ++i) EXPECT_EQ(calls[i], 1) << i;
}

TEST_P(TransportTest, LargeMessagesSurvive) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  for (size_t bytes : {size_t{1} << 20, size_t{48} << 20}) {
    std::thread t([&, c = client.get()] { ASSERT_TRUE(c->Send(Data(9, bytes)).ok()); });
    auto m = server->Receive(20000);
    t.join();
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_EQ(m->payload.size(), bytes);
    Message expect = Data(9, bytes);
    EXPECT_TRUE(m->payload == expect.payload);
  }
}

TEST_P(TransportTest, OversizedSendIsRefused) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  Message m;
  m.kind = MessageKind::kData;
  m.meta.assign(10, 1);
  m.payload.resize(kMaxDataMessageBytes);
  EXPECT_EQ(client->Send(std::move(m)).code(), StatusCode::kResourceExhausted);
}

TEST_P(TransportTest, WrongKeyIsRefusedBothWays) {
  auto l = transport_->Listen(ServerOptions());
  ASSERT_TRUE(l.ok());
  listener_ = std::move(*l);
  auto accepted = std::async(std::launch::async, [&] { return listener_->Accept(1500); });
  TransportOptions o = ClientOptions(*listener_);
  o.key = TestKey(1);
  auto c = transport_->Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnauthenticated) << c.status().ToString();
  // The server never hands out the refused connection.
  EXPECT_EQ(accepted.get().status().code(), StatusCode::kTimeout);
}

TEST_P(TransportTest, KeylessClientIsRefusedByKeyedServer) {
  auto l = transport_->Listen(ServerOptions());
  ASSERT_TRUE(l.ok());
  listener_ = std::move(*l);
  auto accepted = std::async(std::launch::async, [&] { return listener_->Accept(1500); });
  TransportOptions o = ClientOptions(*listener_);
  o.key.clear();
  o.allow_unauthenticated = true;
  auto c = transport_->Connect(o);
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(accepted.get().status().code(), StatusCode::kTimeout);
}

TEST_P(TransportTest, UnauthenticatedWorksOnlyWhenBothAllowIt) {
  TransportOptions so = ServerOptions();
  so.key.clear();
  so.allow_unauthenticated = true;
  auto l = transport_->Listen(so);
  ASSERT_TRUE(l.ok());
  listener_ = std::move(*l);
  TransportOptions co = ClientOptions(*listener_);
  co.key.clear();
  co.allow_unauthenticated = true;
  auto accepted = std::async(std::launch::async, [&] { return listener_->Accept(5000); });
  auto c = transport_->Connect(co);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(accepted.get().ok());
  TransportOptions none = ServerOptions();
  none.key.clear();
  EXPECT_EQ(transport_->Listen(none).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(TransportTest, CloseWakesReceiverAndPeerSeesIoError) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  auto waiting = std::async(std::launch::async, [&, s = server.get()] { return s->Receive(-1); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  client->Close();
  auto r = waiting.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kIoError) << r.status().ToString();
  EXPECT_EQ(server->Receive(100).status().code(), StatusCode::kIoError);
  EXPECT_FALSE(client->Send(Data(0, 10)).ok());
  server->Close();
  EXPECT_FALSE(server->Receive(10).ok());
}

// Regression (ucx): a graceful close used to flush-close the endpoint after the peer had already
// destroyed its own, and then waited out its 2 s bound, on every `kvwire send` exit.
TEST_P(TransportTest, GracefulCloseIsPromptWhenThePeerClosesInTurn) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  ASSERT_TRUE(client->Send(Data(0, 4096)).ok());
  ASSERT_TRUE(server->Receive(5000).ok());
  // The server closes as soon as it sees the client go, as the session layer does.
  auto peer = std::async(std::launch::async, [s = server.get()] {
    auto r = s->Receive(5000);
    s->Close();
    return r.status().code();
  });
  const auto t0 = std::chrono::steady_clock::now();
  client->Close();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(peer.get(), StatusCode::kIoError);
  EXPECT_LT(ms, 1000) << "client Close took " << ms << " ms";
}

TEST_P(TransportTest, ReceiveTimesOut) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  EXPECT_EQ(server->Receive(20).status().code(), StatusCode::kTimeout);
}

TEST_P(TransportTest, MessagesSentBeforeCloseAreDelivered) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(client->Send(Data(i, 4096)).ok());
  client->Close();
  for (int i = 0; i < 10; ++i) {
    auto m = server->Receive(5000);
    ASSERT_TRUE(m.ok()) << i << ": " << m.status().ToString();
  }
  EXPECT_EQ(server->Receive(2000).status().code(), StatusCode::kIoError);
}

TEST_P(TransportTest, SendBlocksWhenThePeerDoesNotRead) {
  TransportOptions so = ServerOptions();
  so.max_queued_bytes = 1 << 20;
  auto l = transport_->Listen(so);
  ASSERT_TRUE(l.ok());
  listener_ = std::move(*l);
  TransportOptions co = ClientOptions(*listener_);
  co.max_queued_bytes = 1 << 20;
  auto accepted = std::async(std::launch::async, [&] { return listener_->Accept(5000); });
  auto c = transport_->Connect(co);
  auto s = accepted.get();
  ASSERT_TRUE(c.ok() && s.ok());
  std::atomic<int> sent{0};
  std::thread t([&, conn = c->get()] {
    for (int i = 0; i < 400; ++i) {
      if (!conn->Send(Data(i, 256 << 10)).ok()) return;
      ++sent;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  // 100 MiB offered; bounded queues (plus socket buffers) hold far less.
  EXPECT_LT(sent.load(), 400);
  for (int i = 0; i < 400; ++i) {
    auto m = (*s)->Receive(10000);
    ASSERT_TRUE(m.ok()) << i << ": " << m.status().ToString();
  }
  t.join();
  EXPECT_EQ(sent.load(), 400);
}

std::string Name(const testing::TestParamInfo<std::string>& info) { return info.param; }

// Buffer reuse (Connection::Recycle, TakeBuffer). Each message is sent only after the previous one
// was received and recycled, so the receiving connection has the buffer back when the next one
// arrives and must receive into it. Reuse shows in the capacity: a smaller message received into
// the recycled 1 MiB buffer keeps its capacity, where a fresh buffer would have exactly its size
// (an address alone could also come back from malloc). Run on the backends that pool buffers
// (not inproc, which hands the sender's buffer over).
class PooledTransportTest : public TransportTest {};

std::vector<std::string> TestedTransports() {
  std::vector<std::string> out = AvailableTransports();
  if (std::count(out.begin(), out.end(), "ucx") != 0) out.push_back(kUcxBusyPoll);
  out.push_back(kTcpTls);
  return out;
}

std::vector<std::string> PooledTransports() {
  std::vector<std::string> out;
  for (const std::string& t : TestedTransports())
    if (t != "inproc") out.push_back(t);
  return out;
}

TEST_P(PooledTransportTest, RecycledReceiveBuffersAreReused) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  constexpr size_t kBytes = size_t{1} << 20;
  const size_t sizes[] = {kBytes, kBytes - 4096, kBytes, kBytes - 1};
  const uint8_t* first = nullptr;
  for (uint32_t i = 0; i < std::size(sizes); ++i) {
    const size_t bytes = sizes[i];
    ASSERT_TRUE(client->Send(Data(i, bytes)).ok());
    auto m = server->Receive(5000);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_EQ(m->payload.size(), bytes);
    // This message's bytes, not those the recycled buffer held before.
    for (size_t j : {size_t{0}, bytes / 2 + 3, bytes - 1})
      ASSERT_EQ(m->payload[j], static_cast<uint8_t>(j * 31 + i))
          << "message " << i << " byte " << j;
    if (i == 0) {
      first = m->payload.data();
    } else {
      EXPECT_EQ(m->payload.data(), first) << "message " << i << " did not reuse the buffer";
      EXPECT_EQ(m->payload.capacity(), kBytes) << "message " << i << " did not reuse the buffer";
    }
    server->Recycle(std::move(*m));
  }
}

TEST_P(PooledTransportTest, SentBuffersComeBackThroughTakeBuffer) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  constexpr size_t kBytes = size_t{1} << 20;
  std::vector<uint8_t> payload = client->TakeBuffer(kBytes);
  ASSERT_EQ(payload.size(), kBytes);
  for (size_t j = 0; j < kBytes; ++j) payload[j] = static_cast<uint8_t>(j * 7);
  const uint8_t* at = payload.data();
  control::ChunkDescriptor d;
  d.set_request_id(1);
  d.set_tokens(1);
  d.set_payload_bytes(static_cast<uint32_t>(kBytes));
  ASSERT_TRUE(client->Send(transport::MakeDataMessage(d, std::move(payload)).value()).ok());
  auto m = server->Receive(5000);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_EQ(m->payload.size(), kBytes);
  EXPECT_EQ(m->payload[kBytes - 1], static_cast<uint8_t>((kBytes - 1) * 7));
  client->Close();  // flushes: the send has completed and returned its buffer
  std::vector<uint8_t> again = client->TakeBuffer(kBytes - 4096);
  EXPECT_EQ(again.data(), at);
  EXPECT_EQ(again.size(), kBytes - 4096);
  EXPECT_EQ(again.capacity(), kBytes);  // the sent buffer, not a fresh one
}

// A process that serves one request after another (kvwire serve) accepts a connection per
// request: the buffers one connection recycled must serve the next one's receives, not be freed
// with it and allocated, zero-filled and page-faulted again.
TEST_P(PooledTransportTest, ConnectionsOfOneListenerShareTheirBuffers) {
  auto [server, client] = Pair();
  ASSERT_TRUE(server && client);
  constexpr size_t kBytes = size_t{1} << 20;
  ASSERT_TRUE(client->Send(Data(0, kBytes)).ok());
  auto m = server->Receive(5000);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const uint8_t* first = m->payload.data();
  server->Recycle(std::move(*m));
  client->Close();
  server->Close();

  auto accepted = std::async(std::launch::async, [&] { return listener_->Accept(5000); });
  auto client2 = transport_->Connect(ClientOptions(*listener_));
  auto server2 = accepted.get();
  ASSERT_TRUE(client2.ok()) << client2.status().ToString();
  ASSERT_TRUE(server2.ok()) << server2.status().ToString();
  ASSERT_TRUE((*client2)->Send(Data(1, kBytes)).ok());
  auto m2 = (*server2)->Receive(5000);
  ASSERT_TRUE(m2.ok()) << m2.status().ToString();
  ASSERT_EQ(m2->payload.size(), kBytes);
  EXPECT_EQ(m2->payload[kBytes - 1], static_cast<uint8_t>((kBytes - 1) * 31 + 1));
  EXPECT_EQ(m2->payload.data(), first) << "the second connection did not reuse the first's buffer";
}

INSTANTIATE_TEST_SUITE_P(Backends, TransportTest, testing::ValuesIn(TestedTransports()), Name);
INSTANTIATE_TEST_SUITE_P(Backends, PooledTransportTest, testing::ValuesIn(PooledTransports()),
                         Name);

TEST(TransportFactory, UnknownNameIsNotFound) {
  EXPECT_EQ(CreateTransport("carrier-pigeon").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvwire
