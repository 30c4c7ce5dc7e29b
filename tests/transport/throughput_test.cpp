// Transport goodput per message size (loopback). Skipped unless KVWIRE_TRANSPORT_BENCH=1: it is
// a measurement, not a check. Compare with `ucx_perftest -t ucp_am_bw` run alongside.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <thread>

#include "kvwire/transport.h"
#include "transport/control.h"

namespace kvwire {
namespace {

class Throughput : public testing::TestWithParam<std::string> {};

TEST_P(Throughput, GoodputPerMessageSize) {
  if (!std::getenv("KVWIRE_TRANSPORT_BENCH"))
    GTEST_SKIP() << "set KVWIRE_TRANSPORT_BENCH=1 to measure";
  auto t = CreateTransport(GetParam());
  ASSERT_TRUE(t.ok());
  TransportOptions so;
  so.address = GetParam() == "inproc" ? "bench" : "127.0.0.1:0";
  so.key = std::vector<uint8_t>(32, 1);
  auto l = (*t)->Listen(so);
  ASSERT_TRUE(l.ok());
  TransportOptions co = so;
  co.address = (*l)->address();
  auto acc = std::async(std::launch::async, [&] { return (*l)->Accept(5000); });
  auto c = (*t)->Connect(co);
  auto s = acc.get();
  ASSERT_TRUE(c.ok() && s.ok());
  for (size_t size :
       {size_t{64} << 10, size_t{1} << 20, size_t{4} << 20, size_t{16} << 20, size_t{60} << 20}) {
    const size_t total = std::max<size_t>(size * 8, size_t{512} << 20);
    const int count = static_cast<int>(total / size);
    control::ChunkDescriptor d;
    d.set_request_id(1);
    d.set_tokens(1);
    d.set_payload_bytes(static_cast<uint32_t>(size));
    auto proto = transport::MakeDataMessage(d, std::vector<uint8_t>(size, 7));
    ASSERT_TRUE(proto.ok());
    std::vector<double> lat;
    const auto t0 = std::chrono::steady_clock::now();
    std::thread sender([&] {
      for (int i = 0; i < count; ++i) ASSERT_TRUE((*c)->Send(*proto).ok());
    });
    for (int i = 0; i < count; ++i) {
      auto m = (*s)->Receive(20000);
      ASSERT_TRUE(m.ok()) << m.status().ToString();
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sender.join();
    std::printf("%-6s %9zu B x %5d: %8.3f GB/s\n", GetParam().c_str(), size, count,
                double(size) * count / secs / 1e9);
  }
}

std::string Name(const testing::TestParamInfo<std::string>& info) { return info.param; }
INSTANTIATE_TEST_SUITE_P(Backends, Throughput, testing::ValuesIn(AvailableTransports()), Name);

}  // namespace
}  // namespace kvwire
