// One paged KV transfer, timed, through the C++ session API: the reference that
// bench/python_overhead.py runs the same transfer against through the Python module.
//
// Usage: transfer_timing BACKEND LAYERS TOKENS KV_HEADS HEAD_DIM BLOCK REPEAT
// Both ends live in this process on 127.0.0.1; the cache is fp16, paged (vLLM's NHD layout,
// a reversed block table), sent at the fp16 level layer by layer. Prints one JSON line:
// {"seconds": [each repeat's wall time from Open to both ends done]}.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvwire/kv_view.h"
#include "kvwire/session.h"

namespace {

int Fail(const kvwire::Status& s, const char* what) {
  std::fprintf(stderr, "transfer_timing: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvwire;
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s BACKEND LAYERS TOKENS KV_HEADS HEAD_DIM BLOCK REPEAT\n",
                 argv[0]);
    return 2;
  }
  const std::string backend = argv[1];
  const KvShape shape{uint32_t(std::atoi(argv[2])), uint32_t(std::atoi(argv[3])),
                      uint32_t(std::atoi(argv[4])), uint32_t(std::atoi(argv[5]))};
  const uint32_t block = uint32_t(std::atoi(argv[6]));
  const int repeat = std::atoi(argv[7]);
  const uint32_t blocks = (shape.tokens + block - 1) / block;
  const size_t half = size_t{blocks} * block * shape.kv_heads * shape.head_dim;  // elements

  // Per layer one [2, blocks, block, kv_heads, head_dim] fp16 tensor on each side.
  std::vector<std::vector<uint16_t>> src(shape.layers, std::vector<uint16_t>(2 * half));
  std::vector<std::vector<uint16_t>> dst(shape.layers, std::vector<uint16_t>(2 * half));
  std::mt19937 rng(1);
  for (auto& layer : src)
    for (auto& h : layer) h = static_cast<uint16_t>(rng()) & 0xbbff;  // finite halves
  std::vector<int32_t> table(blocks);
  for (uint32_t b = 0; b < blocks; ++b) table[b] = int32_t(blocks - 1 - b);
  std::vector<void*> sk, sv, dk, dv;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    sk.push_back(src[l].data());
    sv.push_back(src[l].data() + half);
    dk.push_back(dst[l].data());
    dv.push_back(dst[l].data() + half);
  }
  auto src_view = KvView::Paged(shape, DType::kF16, block, blocks, sk, sv, table);
  auto dst_view = KvView::Paged(shape, DType::kF16, block, blocks, dk, dv, table);
  if (!src_view.ok()) return Fail(src_view.status(), "source view");
  if (!dst_view.ok()) return Fail(dst_view.status(), "destination view");

  const std::vector<uint8_t> key(32, 7);
  ReceiverOptions ro;
  ro.backend = backend;
  ro.transport.address = "127.0.0.1:0";
  ro.transport.key = key;
  auto rx = Receiver::Listen(ro);
  if (!rx.ok()) return Fail(rx.status(), "listen");
  SenderOptions so;
  so.backend = backend;
  so.transport.address = (*rx)->address();
  so.transport.key = key;
  auto tx = Sender::Connect(so);
  if (!tx.ok()) return Fail(tx.status(), "connect");

  std::string seconds;
  for (int i = 0; i < repeat; ++i) {
    const auto start = std::chrono::steady_clock::now();
    SendRequestOptions o;
    o.request_id = uint64_t(i) + 1;
    o.levels = {LevelSpec{"fp16"}};
    auto req = (*tx)->Open(*src_view, o);
    if (!req.ok()) return Fail(req.status(), "open");
    auto incoming = (*rx)->NextRequest(30000);
    if (!incoming.ok()) return Fail(incoming.status(), "next request");
    if (Status s = (*rx)->SetDestination(o.request_id, *dst_view); !s.ok()) {
      return Fail(s, "set destination");
    }
    for (uint32_t l = 0; l < shape.layers; ++l) {
      if (Status s = (*req)->PushLayer(l); !s.ok()) return Fail(s, "push layer");
    }
    if (Status s = (*rx)->Wait(o.request_id, 60000); !s.ok()) return Fail(s, "receive");
    if (Status s = (*req)->Wait(60000); !s.ok()) return Fail(s, "send");
    const double t =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (Status s = (*rx)->Release(o.request_id); !s.ok()) return Fail(s, "release");
    seconds += (i ? ", " : "") + std::to_string(t);
  }
  if (std::memcmp(src[0].data(), dst[0].data(), 2 * half * 2) != 0) {
    std::fprintf(stderr, "transfer_timing: layer 0 arrived different\n");
    return 1;
  }
  (*tx)->Close();
  (*rx)->Close();
  std::printf("{\"seconds\": [%s]}\n", seconds.c_str());
  return 0;
}
