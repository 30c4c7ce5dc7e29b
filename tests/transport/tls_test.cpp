// TLS on the tcp backend (TransportOptions::tls, src/transport/tls.cpp): what reaches the wire is
// ciphertext, certificates and names are verified, misconfigurations fail with their reason,
// and the pre-shared-key handshake is bound to the TLS session. The TransportTest suite also
// runs as "tcp_tls" (transport_test.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>

#include "kvwire/transport.h"
#include "transport/auth.h"
#include "transport/configured_backends.h"
#include "transport/control.h"
#include "transport/tcp_connection.h"
#include "transport/tcp_proxy.h"
#include "transport/test_pki.h"

namespace kvwire {
namespace {

using testing_pki::Pki;

std::vector<uint8_t> Key(uint8_t salt = 0) {
  std::vector<uint8_t> k(32);
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i * 13 + salt);
  return k;
}

TransportOptions ServerTls(const Pki& pki) {
  TransportOptions o;
  o.address = "127.0.0.1:0";
  o.key = Key();
  o.node_name = "server";
  o.handshake_timeout_ms = 3000;
  o.tls.enabled = true;
  o.tls.cert_file = pki.server_cert;
  o.tls.key_file = pki.server_key;
  return o;
}

TransportOptions ClientTls(const Pki& pki, const std::string& address) {
  TransportOptions o;
  o.address = address;
  o.key = Key();
  o.node_name = "client";
  o.handshake_timeout_ms = 3000;
  o.connect_timeout_ms = 3000;
  o.tls.enabled = true;
  o.tls.ca_file = pki.ca_cert;
  return o;
}

// The 64 bytes every test payload repeats: easy to find in a capture of the wire.
std::vector<uint8_t> Marked(size_t bytes) {
  static const char kMark[] = "kvwire-plaintext-marker-0123456789-abcdefghijklmnopqrstuvwxyz-KV!";
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(kMark[i % 64]);
  return out;
}

Message DataMessage(std::vector<uint8_t> payload, uint32_t seq = 0) {
  control::ChunkDescriptor d;
  d.set_request_id(1);
  d.set_seq(seq);
  d.set_tokens(1);
  d.set_payload_bytes(static_cast<uint32_t>(payload.size()));
  return *transport::MakeDataMessage(d, std::move(payload));
}

// A transport plus one listener; Connect runs against it while Accept waits on another thread.
struct Endpoint {
  std::unique_ptr<Transport> transport = std::move(CreateTransport("tcp").value());
  std::unique_ptr<Listener> listener;
  std::future<Result<std::unique_ptr<Connection>>> accepted;

  Status Listen(const TransportOptions& o) {
    KVWIRE_ASSIGN_OR_RETURN(listener, transport->Listen(o));
    return Status::Ok();
  }
  void AcceptAsync(int timeout_ms) {
    accepted = std::async(std::launch::async, [this, timeout_ms] {
      return listener->Accept(timeout_ms);
    });
  }
};

uint16_t PortOf(const std::string& address) {
  return static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

bool Contains(const std::vector<uint8_t>& hay, const std::vector<uint8_t>& needle) {
  return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

// Sends one marked payload from a client through a tap and returns what the tap saw; the
// payload must arrive intact.
std::vector<uint8_t> CaptureOneTransfer(bool tls) {
  const Pki& pki = testing_pki::Get();
  TransportOptions so = ServerTls(pki);
  so.tls.enabled = tls;
  Endpoint server;
  EXPECT_TRUE(server.Listen(so).ok());
  testing_net::CuttableProxy tap(PortOf(server.listener->address()), /*record_upstream=*/true);
  server.AcceptAsync(5000);
  TransportOptions co = ClientTls(pki, tap.address());
  co.tls.enabled = tls;
  auto c = server.transport->Connect(co);
  auto s = server.accepted.get();
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!c.ok() || !s.ok()) return {};
  const std::vector<uint8_t> payload = Marked(256 << 10);
  EXPECT_TRUE((*c)->Send(DataMessage(payload)).ok());
  auto m = (*s)->Receive(5000);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (m.ok()) {
    EXPECT_EQ(m->payload, payload);
  }
  (*c)->Close();
  (*s)->Close();
  return tap.upstream_bytes();
}

TEST(TcpTls, TheWireCarriesCiphertextOnly) {
  const std::vector<uint8_t> mark = Marked(64);
  // Without TLS the tap sees the payload (so the search below can find it)...
  std::vector<uint8_t> plain = CaptureOneTransfer(false);
  EXPECT_GT(plain.size(), size_t{256} << 10);
  EXPECT_TRUE(Contains(plain, mark));
  // ...with TLS it sees as many bytes and none of it.
  std::vector<uint8_t> wire = CaptureOneTransfer(true);
  EXPECT_GT(wire.size(), size_t{256} << 10);
  EXPECT_FALSE(Contains(wire, mark));
  EXPECT_FALSE(Contains(wire, std::vector<uint8_t>(mark.begin(), mark.begin() + 16)));
}

TEST(TcpTls, ManyMessagesBothWaysArriveIntact) {
  const Pki& pki = testing_pki::Get();
  Endpoint server;
  ASSERT_TRUE(server.Listen(ServerTls(pki)).ok());
  server.AcceptAsync(5000);
  auto c = server.transport->Connect(ClientTls(pki, server.listener->address()));
  auto s = server.accepted.get();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*c)->peer_name(), "server");
  EXPECT_EQ((*s)->peer_name(), "client");
  // Both directions at once (the reader and writer threads share the TLS session), sizes from
  // empty to several MiB.
  const size_t sizes[] = {0, 1, 17, 16384, 16385, 100000, 3u << 20, 65536};
  auto pump = [&](Connection& from, Connection& to, uint8_t salt) {
    std::thread sender([&] {
      for (int round = 0; round < 6; ++round)
        for (uint32_t i = 0; i < std::size(sizes); ++i) {
          std::vector<uint8_t> p(sizes[i]);
          for (size_t j = 0; j < p.size(); ++j) p[j] = static_cast<uint8_t>(j * 7 + i + salt);
          ASSERT_TRUE(from.Send(DataMessage(std::move(p), i)).ok());
        }
    });
    for (int round = 0; round < 6; ++round)
      for (uint32_t i = 0; i < std::size(sizes); ++i) {
        auto m = to.Receive(10000);
        ASSERT_TRUE(m.ok()) << m.status().ToString();
        ASSERT_EQ(m->payload.size(), sizes[i]);
        for (size_t j = 0; j < m->payload.size(); j += 997)
          ASSERT_EQ(m->payload[j], static_cast<uint8_t>(j * 7 + i + salt)) << i << " " << j;
        if (!m->payload.empty()) {
          ASSERT_EQ(m->payload.back(),
                    static_cast<uint8_t>((m->payload.size() - 1) * 7 + i + salt));
        }
      }
    sender.join();
  };
  std::thread back([&] { pump(**s, **c, 100); });
  pump(**c, **s, 1);
  back.join();
}

// A landing function (Connection::SetLanding) gets every data payload longer than its head, plain
// and inside TLS: what it takes arrives in the memory it named, what it declines (or names with
// the wrong size) arrives whole, and its `done` runs once per offer either way.
TEST(TcpLanding, PayloadsLandWhereTheFunctionSaysOrArriveWhole) {
  for (const bool tls : {false, true}) {
    const Pki& pki = testing_pki::Get();
    TransportOptions so = ServerTls(pki);
    so.tls.enabled = tls;
    Endpoint server;
    ASSERT_TRUE(server.Listen(so).ok());
    server.AcceptAsync(5000);
    TransportOptions co = ClientTls(pki, server.listener->address());
    co.tls.enabled = tls;
    auto c = server.transport->Connect(co);
    auto s = server.accepted.get();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    const size_t sizes[] = {0, 17, kLandingHeadBytes, kLandingHeadBytes + 1, 100000, 3u << 20};
    // Message i: taken when i is even, declined when i % 4 == 1, named with a size one short
    // when i % 4 == 3. Offers are made only for payloads longer than the head.
    std::vector<std::vector<uint8_t>> memory(std::size(sizes));
    std::atomic<int> offers{0}, dones{0};
    ASSERT_TRUE((*s)->SetLanding(
        [&](std::span<const uint8_t> meta, std::span<const uint8_t> head, uint64_t payload_bytes) {
          auto d = transport::ParseChunkDescriptor(meta, payload_bytes);
          EXPECT_TRUE(d.ok());
          EXPECT_EQ(head.size(), kLandingHeadBytes);
          ++offers;
          const uint32_t i = d.ok() ? d->seq() : 0;
          Landing l;
          l.done = [&] { ++dones; };
          memory[i].assign(payload_bytes - kLandingHeadBytes, 0);
          if (i % 2 == 0) l.bytes = memory[i];
          if (i % 4 == 3) l.bytes = std::span<uint8_t>(memory[i]).first(memory[i].size() - 1);
          return l;
        }));
    auto body = [](size_t n, uint32_t i) {
      std::vector<uint8_t> p(n);
      for (size_t j = 0; j < n; ++j) p[j] = static_cast<uint8_t>(j * 13 + i);
      return p;
    };
    for (uint32_t i = 0; i < std::size(sizes); ++i) {
      ASSERT_TRUE((*c)->Send(DataMessage(body(sizes[i], i), i)).ok());
    }
    int offered = 0;
    for (uint32_t i = 0; i < std::size(sizes); ++i) {
      auto m = (*s)->Receive(10000);
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      const std::vector<uint8_t> want = body(sizes[i], i);
      offered += sizes[i] > kLandingHeadBytes;
      if (sizes[i] > kLandingHeadBytes && i % 2 == 0) {
        ASSERT_EQ(m->landed.data(), memory[i].data()) << i;
        ASSERT_EQ(m->payload, std::vector<uint8_t>(want.begin(), want.begin() + kLandingHeadBytes));
        ASSERT_TRUE(std::equal(m->landed.begin(), m->landed.end(), want.begin() + kLandingHeadBytes,
                               want.end()))
            << i;
        EXPECT_EQ(m->bytes(), m->meta.size() + sizes[i]);
      } else {
        EXPECT_TRUE(m->landed.empty()) << i;
        ASSERT_EQ(m->payload, want) << i;
      }
      ASSERT_TRUE(transport::ParseChunkDescriptor(*m).ok()) << i;
    }
    EXPECT_EQ(offers.load(), offered);
    EXPECT_EQ(dones.load(), offered);
    (*c)->Close();
    (*s)->Close();
  }
}

// Connects with `co` to a listener with `so`; returns the client's status (the listener logs
// and drops what fails, so its Accept then times out).
Status TryConnect(const TransportOptions& so, TransportOptions co) {
  Endpoint server;
  KVWIRE_RETURN_IF_ERROR(server.Listen(so));
  server.AcceptAsync(1500);
  co.address = server.listener->address();
  auto c = server.transport->Connect(co);
  auto s = server.accepted.get();
  if (c.ok()) {
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return Status::Ok();
  }
  EXPECT_FALSE(s.ok()) << "the listener accepted a client whose own connect failed";
  return c.status();
}

TEST(TcpTls, TheClientVerifiesTheServersCertificateAndName) {
  const Pki& pki = testing_pki::Get();
  // Signed by a CA the client does not trust.
  TransportOptions co = ClientTls(pki, "");
  co.tls.ca_file = pki.other_ca_cert;
  Status s = TryConnect(ServerTls(pki), co);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("server's certificate was refused"), std::string::npos)
      << s.ToString();
  // The right CA but a name the certificate does not carry.
  co = ClientTls(pki, "");
  co.tls.server_name = "somebody-else";
  s = TryConnect(ServerTls(pki), co);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("mismatch"), std::string::npos) << s.ToString();
  // The DNS name it does carry, and (above, by default) its IP address.
  co.tls.server_name = "kvwire-test";
  EXPECT_TRUE(TryConnect(ServerTls(pki), co).ok());
  EXPECT_TRUE(TryConnect(ServerTls(pki), ClientTls(pki, "")).ok());
}

TEST(TcpTls, AListenerWithACaRequiresAClientCertificate) {
  const Pki& pki = testing_pki::Get();
  TransportOptions so = ServerTls(pki);
  so.tls.ca_file = pki.ca_cert;
  // TLS 1.3 tells the client at its first read after the handshake, by an alert, which then says
  // what to change. It may instead find the connection closed: the listener hangs up after the
  // alert, and a client write that meets the closed socket fails first.
  auto refused = [](const Status& st, const std::string& says) {
    EXPECT_FALSE(st.ok());
    if (st.message().find("alert") == std::string::npos) {
      EXPECT_NE(st.message().find("peer closed the connection"), std::string::npos)
          << st.ToString();
      return;
    }
    EXPECT_EQ(st.code(), StatusCode::kUnauthenticated) << st.ToString();
    EXPECT_NE(st.message().find(says), std::string::npos) << st.ToString();
  };
  refused(TryConnect(so, ClientTls(pki, "")), "requires a client certificate (--tls-cert");
  TransportOptions co = ClientTls(pki, "");
  co.tls.cert_file = pki.other_server_cert;  // a certificate from a CA the listener does not trust
  co.tls.key_file = pki.other_server_key;
  refused(TryConnect(so, co), "refused our certificate");
  co.tls.cert_file = pki.client_cert;
  co.tls.key_file = pki.client_key;
  EXPECT_TRUE(TryConnect(so, co).ok());
}

TEST(TcpTls, PlainAndTlsPeersRefuseEachOtherWithAReason) {
  const Pki& pki = testing_pki::Get();
  TransportOptions plain_server = ServerTls(pki);
  plain_server.tls.enabled = false;
  Status s = TryConnect(plain_server, ClientTls(pki, ""));
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.ToString();
  EXPECT_NE(s.message().find("TLS enabled"), std::string::npos) << s.ToString();
  TransportOptions plain_client = ClientTls(pki, "");
  plain_client.tls.enabled = false;
  s = TryConnect(ServerTls(pki), plain_client);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("TLS"), std::string::npos) << s.ToString();
}

TEST(TcpTls, AListenerKeepsServingAfterAFailedTlsHandshake) {
  const Pki& pki = testing_pki::Get();
  Endpoint server;
  ASSERT_TRUE(server.Listen(ServerTls(pki)).ok());
  server.AcceptAsync(8000);
  TransportOptions bad = ClientTls(pki, server.listener->address());
  bad.tls.enabled = false;
  EXPECT_FALSE(server.transport->Connect(bad).ok());
  TransportOptions wrong_ca = ClientTls(pki, server.listener->address());
  wrong_ca.tls.ca_file = pki.other_ca_cert;
  EXPECT_FALSE(server.transport->Connect(wrong_ca).ok());
  auto c = server.transport->Connect(ClientTls(pki, server.listener->address()));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto s = server.accepted.get();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->peer_name(), "client");
}

// A relay that ends TLS on both sides (its own certificate towards the client, a TLS client of
// the real server) and passes the kvwire handshake messages on. A client without a CA file
// accepts any certificate, so only the channel binding of the pre-shared-key handshake can tell
// that the TLS session it sees is not the server's.
TEST(TcpTls, ThePreSharedKeyHandshakeIsBoundToTheTlsSession) {
  const Pki& pki = testing_pki::Get();
  Endpoint server;
  ASSERT_TRUE(server.Listen(ServerTls(pki)).ok());
  server.AcceptAsync(3000);

  TransportOptions relay_opts = ServerTls(pki);
  relay_opts.tls.cert_file = pki.other_server_cert;
  relay_opts.tls.key_file = pki.other_server_key;
  auto acceptor = transport::TcpAcceptor::Bind(relay_opts);
  ASSERT_TRUE(acceptor.ok()) << acceptor.status().ToString();
  std::atomic<int> relayed{0};
  std::thread relay([&] {
    auto front = (*acceptor)->AcceptRaw(4000);
    ASSERT_TRUE(front.ok()) << front.status().ToString();
    TransportOptions to_server = ClientTls(pki, server.listener->address());
    auto back = transport::TcpConnection::Dial(to_server);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    auto pass = [&](Connection& from, Connection& to) {
      for (;;) {
        auto m = from.Receive(3000);
        if (!m.ok() || !to.Send(std::move(*m)).ok()) break;
        ++relayed;
      }
      to.Close();
      from.Close();
    };
    std::thread up([&] { pass(**front, **back); });
    pass(**back, **front);
    up.join();
  });

  TransportOptions co = ClientTls(pki, (*acceptor)->address());
  co.tls.ca_file.clear();  // trusts the pre-shared key alone
  auto c = server.transport->Connect(co);
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnauthenticated) << c.status().ToString();
  EXPECT_NE(c.status().message().find("relay"), std::string::npos) << c.status().ToString();
  relay.join();  // the client's end closed with its failed Connect, which ends the relay
  EXPECT_GE(relayed.load(), 2);  // the relay did pass the hello and the challenge on
  auto s = server.accepted.get();
  EXPECT_FALSE(s.ok()) << "the server accepted the relayed client";
}

TEST(TcpTls, MisconfigurationsFailWithTheirReason) {
  const Pki& pki = testing_pki::Get();
  std::unique_ptr<Transport> tcp = std::move(CreateTransport("tcp").value());
  TransportOptions so = ServerTls(pki);
  so.tls.cert_file.clear();
  so.tls.key_file.clear();
  auto l = tcp->Listen(so);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(l.status().message().find("certificate and its key"), std::string::npos);

  so = ServerTls(pki);
  so.tls.cert_file = pki.dir + "/missing.pem";
  l = tcp->Listen(so);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), StatusCode::kNotFound);
  EXPECT_NE(l.status().message().find("missing.pem"), std::string::npos);

  so = ServerTls(pki);
  so.tls.key_file = pki.client_key;  // another certificate's key
  l = tcp->Listen(so);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("does not belong"), std::string::npos)
      << l.status().ToString();

  so = ServerTls(pki);
  so.tls.cert_file = pki.server_key;  // not a certificate
  l = tcp->Listen(so);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("cannot load certificate"), std::string::npos)
      << l.status().ToString();

  // No CA and no key: nothing would authenticate the server.
  TransportOptions co = ClientTls(pki, "127.0.0.1:1");
  co.tls.ca_file.clear();
  co.key.clear();
  co.allow_unauthenticated = true;
  auto c = tcp->Connect(co);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("impostor"), std::string::npos);

  for (const char* name : {"inproc", "ucx"}) {
    if (!testing_backends::Configured(name)) continue;  // this build was configured without it
    auto t = CreateTransport(name);
    ASSERT_TRUE(t.ok()) << name << ": " << t.status().ToString();
    auto r = (*t)->Listen(ServerTls(pki));
    EXPECT_EQ(r.status().code(), StatusCode::kUnsupported) << name;
    auto cr = (*t)->Connect(ClientTls(pki, "127.0.0.1:1"));
    EXPECT_EQ(cr.status().code(), StatusCode::kUnsupported) << name;
  }
  EXPECT_TRUE(tcp->caps().tls);
}

}  // namespace
}  // namespace kvwire
