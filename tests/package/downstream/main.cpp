// Uses the installed kvwire through kvwire::kvwire alone:
//   1. codec: a KV dump round trip and a stream round trip at fp16 (lossless for these values);
//   2. transport: a Receiver and a Sender in this process move a KV cache over tcp on 127.0.0.1
//      (Listen on port 0, Connect, Open, PushAll, NextRequest, SetDestination, Wait), and the
//      received bytes must equal the sent ones (an fp16 cache at the fp16 level is copied);
//   3. every other installed public header compiles and links (one call into each library).
// Prints "kvwire downstream: OK ..." and exits 0 only when all of it held; otherwise says what
// failed and exits 1.
#include <kvwire/codec.h>
#include <kvwire/kv_file.h>
#include <kvwire/profile.h>
#include <kvwire/session.h>
#include <kvwire/status.h>
#include <kvwire/stream.h>
#include <kvwire/transport.h>

#if __has_include(<kvwire/model.h>)
#include <kvwire/model.h>
#define DOWNSTREAM_HAVE_MODEL 1
#endif
#if __has_include(<kvwire/diagnostics.h>)
#include <kvwire/diagnostics.h>
#define DOWNSTREAM_HAVE_DIAGNOSTICS 1
#endif
#if __has_include(<kvwire/cuda_codec.h>)
#include <kvwire/cuda_codec.h>
#define DOWNSTREAM_HAVE_CUDA 1
#endif

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

// Any error: print it with what was being done, exit 1.
void Check(const kvwire::Status& s, const char* what) {
  if (s.ok()) return;
  std::printf("%s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}
template <class T>
T Check(kvwire::Result<T> r, const char* what) {
  Check(r.status(), what);
  return std::move(r).value();
}

// Values exact in fp16: fp16 streams reproduce them bit for bit.
void Fill(kvwire::KvCache* cache, uint32_t salt) {
  const kvwire::KvShape& shape = cache->shape();
  std::vector<float> rows(shape.tensor_elements());
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (auto kind : {kvwire::KvKind::kKey, kvwire::KvKind::kValue}) {
      for (size_t i = 0; i < rows.size(); ++i) {
        rows[i] = static_cast<float>((i * 37 + l * 11 + salt) % 29) * 0.25f - 3.0f;
      }
      Check(cache->view().WriteF32(l, kind, 0, shape.tokens, rows.data()), "fill");
    }
  }
}

bool SameBytes(const kvwire::KvCache& a, const kvwire::KvCache& b, const char* what) {
  for (uint32_t l = 0; l < a.shape().layers; ++l) {
    for (auto kind : {kvwire::KvKind::kKey, kvwire::KvKind::kValue}) {
      auto x = a.tensor(l, kind);
      auto y = b.tensor(l, kind);
      if (x.size() != y.size() || std::memcmp(x.data(), y.data(), x.size()) != 0) {
        std::printf("%s: layer %u %s differs\n", what, l,
                    kind == kvwire::KvKind::kKey ? "K" : "V");
        return false;
      }
    }
  }
  return true;
}

// 1. Codec and stream, in memory.
size_t CodecRoundTrip() {
  const kvwire::KvShape shape{2, 48, 2, 32};  // layers, tokens, kv_heads, head_dim
  auto cache = Check(kvwire::KvCache::Create(shape, kvwire::DType::kF32), "create");
  Fill(&cache, 0);
  auto dump = Check(kvwire::SerializeKvDump(cache), "dump");
  auto parsed = Check(kvwire::ParseKvDump(dump), "parse");

  kvwire::StreamInfo info;
  info.shape = shape;
  info.dtype = kvwire::DType::kF32;
  info.levels = {"fp16"};
  auto stream = Check(kvwire::EncodeStream(parsed.view(), info), "encode");
  auto decoded = Check(kvwire::DecodeStream(stream), "decode");
  if (!SameBytes(cache, decoded, "stream round trip")) std::exit(1);
  return stream.size();
}

// 2. Sender -> Receiver over tcp on loopback; returns the wire bytes.
uint64_t TcpTransfer() {
  const kvwire::KvShape shape{3, 40, 2, 16};
  auto sent = Check(kvwire::KvCache::Create(shape, kvwire::DType::kF16), "create");
  Fill(&sent, 5);
  const std::vector<uint8_t> key(32, 0x3c);

  kvwire::ReceiverOptions ro;
  ro.backend = "tcp";
  ro.transport.address = "127.0.0.1:0";
  ro.transport.key = key;
  auto receiver = Check(kvwire::Receiver::Listen(ro), "listen");

  kvwire::SenderOptions so;
  so.backend = "tcp";
  so.transport.address = receiver->address();
  so.transport.key = key;
  auto sender = Check(kvwire::Sender::Connect(so), "connect");

  kvwire::SendRequestOptions req;
  req.request_id = 7;
  req.levels = {kvwire::LevelSpec{.codec = "fp16"}};
  auto request = Check(sender->Open(sent.view(), req), "open");
  Check(request->PushAll(), "push");

  auto in = Check(receiver->NextRequest(10000), "next request");
  if (in.request_id != req.request_id || in.info.shape.layers != shape.layers ||
      in.info.shape.tokens != shape.tokens || in.info.shape.kv_heads != shape.kv_heads ||
      in.info.shape.head_dim != shape.head_dim) {
    std::printf("transfer: the announced request (id %llu) is not the one sent\n",
                static_cast<unsigned long long>(in.request_id));
    std::exit(1);
  }
  auto received = Check(kvwire::KvCache::Create(in.info.shape, kvwire::DType::kF16), "create");
  Check(receiver->SetDestination(in.request_id, received.view()), "set destination");
  Check(receiver->Wait(in.request_id, 30000), "receiver wait");
  Check(request->Wait(30000), "sender wait");
  if (!SameBytes(sent, received, "tcp transfer")) std::exit(1);
  const uint64_t wire = request->stats().wire_bytes;
  sender->Close();
  receiver->Close();
  return wire;
}

// 3. One call into each further library, so that its link interface is exercised too.
std::string OtherLibraries() {
  std::string out;
#ifdef DOWNSTREAM_HAVE_MODEL
  out += std::string(", model (") +
         std::string(kvwire::RopeStyleName(kvwire::RopeStyle::kNeox)) + ")";
#endif
#ifdef DOWNSTREAM_HAVE_DIAGNOSTICS
  const std::vector<float> samples = {-2.0f, -1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 2.0f};
  double mse = 0;
  out += ", diagnostics (" + std::to_string(kvwire::FitLloydMax(samples, 1, &mse).size()) +
         " levels)";
#endif
#ifdef DOWNSTREAM_HAVE_CUDA
  std::string reason;
  out += std::string(", cuda (") +
         (kvwire::cuda::IsCudaAvailable(&reason) ? "a device" : "no device") + ")";
#endif
  return out;
}

}  // namespace

int main() {
  const size_t stream_bytes = CodecRoundTrip();
  const uint64_t wire_bytes = TcpTransfer();
  const std::string others = OtherLibraries();
  std::printf(
      "kvwire downstream: OK (%zu stream bytes, %zu codec families; tcp transfer %llu wire "
      "bytes, received == sent%s)\n",
      stream_bytes, kvwire::ListCodecFamilies().size(),
      static_cast<unsigned long long>(wire_bytes), others.c_str());
  return 0;
}
