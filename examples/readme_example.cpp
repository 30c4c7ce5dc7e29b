// Sends a KV cache from a Sender (prefill node) to a Receiver (decode node) over tcp on
// loopback, compressed with q4_0 (the project's tests check such transfers byte for byte).
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kvwire/session.h"

using namespace kvwire;

void Check(const Status& s) {  // any error: print it, exit 1
  if (s.ok()) return;
  std::fprintf(stderr, "%s\n", s.ToString().c_str());
  std::exit(1);
}
template <class T> T Check(Result<T> r) { Check(r.status()); return std::move(r).value(); }

int main() {
  const KvShape shape{.layers = 4, .tokens = 256, .kv_heads = 2, .head_dim = 64};
  KvCache kv = Check(KvCache::Create(shape, DType::kF16));  // a synthetic KV cache
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> rows(shape.tensor_elements());
  for (uint32_t layer = 0; layer < shape.layers; ++layer)
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      for (float& x : rows) x = normal(rng);
      Check(kv.view().WriteF32(layer, kind, 0, shape.tokens, rows.data()));
    }

  const std::vector<uint8_t> key(32, 0x5a);  // pre-shared key (LoadKeyFile reads one)
  ReceiverOptions ro;  // the decode node
  ro.transport.address = "127.0.0.1:0";
  ro.transport.key = key;
  auto receiver = Check(Receiver::Listen(ro));
  SenderOptions so;  // the prefill node
  so.transport.address = receiver->address();
  so.transport.key = key;
  auto sender = Check(Sender::Connect(so));

  SendRequestOptions req;
  req.request_id = 1;
  req.levels = {{.codec = "q4_0"}};  // several levels + a deadline: chosen per chunk
  auto request = Check(sender->Open(kv.view(), req));
  Check(request->PushAll());  // an engine calls PushLayer(l) as its prefill finishes layer l

  IncomingRequest in = Check(receiver->NextRequest(5000));
  KvCache got = Check(KvCache::Create(in.info.shape, DType::kF16));
  Check(receiver->SetDestination(in.request_id, got.view()));
  Check(receiver->Wait(in.request_id, 10000));  // or WaitLayer(id, l, ...) layer by layer
  Check(request->Wait(10000));

  std::printf("ok: %llu bytes on the wire\n", (unsigned long long)request->stats().wire_bytes);
}
