// throwaway: kvwire ucx raw, sender and receiver in two processes
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include "kvwire/transport.h"
using namespace kvwire;
using Clock = std::chrono::steady_clock;
int main(int argc, char** argv) {
  std::string mode = argv[1];
  std::string addr = argv[2];
  uint64_t size = std::strtoull(argv[3], 0, 0);
  uint64_t count = std::strtoull(argv[4], 0, 0);
  int rounds = std::atoi(argv[5]);
  uint64_t qmib = argc > 6 ? std::strtoull(argv[6], 0, 0) : 32;
  auto t = CreateTransport("ucx");
  TransportOptions o;
  o.allow_unauthenticated = true;
  o.max_queued_bytes = std::max<uint64_t>(qmib << 20, 2 * size);
  o.max_pooled_bytes = 4 * o.max_queued_bytes;
  o.busy_poll_us = std::getenv("BP") ? std::atoi(std::getenv("BP")) : 500;
  o.address = addr;
  if (mode == "server") {
    auto l = (*t)->Listen(o);
    if (!l.ok()) { fprintf(stderr, "%s\n", l.status().ToString().c_str()); return 1; }
    auto c = (*l)->Accept(20000);
    if (!c.ok()) { fprintf(stderr, "%s\n", c.status().ToString().c_str()); return 1; }
    for (int r = 0; r <= rounds; ++r) {
      auto t0 = Clock::now();
      uint64_t n = r == 0 ? 64 : count;
      static const uint64_t every = std::getenv("KVWIRE_EXP_EVERY") ? std::atoi(std::getenv("KVWIRE_EXP_EVERY")) : 1;
      for (uint64_t i = 0; i < n; i += every) {
        static const bool spin = std::getenv("SPIN") != nullptr;
        auto m = (*c)->Receive(spin ? 0 : 60000);
        while (spin && !m.ok() && m.status().code() == kvwire::StatusCode::kTimeout) m = (*c)->Receive(0);
        if (!m.ok()) { fprintf(stderr, "%s\n", m.status().ToString().c_str()); return 1; }
        if (i == 0) t0 = Clock::now();
        (*c)->Recycle(std::move(*m));
      }
      double s = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r) printf("%.3f\n", double(size) * (n - 1) / s / 1e9), fflush(stdout);
      // ack round
      Message ack; ack.kind = MessageKind::kControl; ack.meta.assign(8, 0);
      (void)(*c)->Send(std::move(ack));
    }
    (*c)->Close();
  } else {
    auto c = (*t)->Connect(o);
    if (!c.ok()) { fprintf(stderr, "%s\n", c.status().ToString().c_str()); return 1; }
    for (int r = 0; r <= rounds; ++r) {
      uint64_t n = r == 0 ? 64 : count;
      for (uint64_t i = 0; i < n; ++i) {
        Message m; m.kind = MessageKind::kData; m.meta.assign(16, 0);
        m.payload = (*c)->TakeBuffer(size - 16);
        if (!(*c)->Send(std::move(m)).ok()) return 1;
      }
      auto a = (*c)->Receive(60000);
      if (!a.ok()) return 1;
    }
    (*c)->Close();
  }
  return 0;
}
