// Uses the installed kvwire: a KV dump round trip and a stream round trip with fp16 (lossless).
#include <kvwire/codec.h>
#include <kvwire/kv_file.h>
#include <kvwire/stream.h>

#include <cstdio>
#include <cstring>

int main() {
  const kvwire::KvShape shape{2, 48, 2, 32};  // layers, tokens, kv_heads, head_dim
  auto cache = kvwire::KvCache::Create(shape, kvwire::DType::kF32);
  if (!cache.ok()) return std::printf("create: %s\n", cache.status().ToString().c_str()), 1;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (auto kind : {kvwire::KvKind::kKey, kvwire::KvKind::kValue}) {
      auto bytes = cache->tensor(l, kind);
      for (size_t i = 0; i < bytes.size() / 4; ++i) {
        const float x = static_cast<float>((i * 37 + l * 11) % 29) * 0.25f - 3.0f;  // exact in fp16
        std::memcpy(bytes.data() + 4 * i, &x, 4);
      }
    }
  }

  auto dump = kvwire::SerializeKvDump(*cache);
  if (!dump.ok()) return std::printf("dump: %s\n", dump.status().ToString().c_str()), 1;
  auto parsed = kvwire::ParseKvDump(*dump);
  if (!parsed.ok()) return std::printf("parse: %s\n", parsed.status().ToString().c_str()), 1;

  kvwire::StreamInfo info;
  info.shape = shape;
  info.dtype = kvwire::DType::kF32;
  info.levels = {"fp16"};
  auto stream = kvwire::EncodeStream(parsed->view(), info);
  if (!stream.ok()) return std::printf("encode: %s\n", stream.status().ToString().c_str()), 1;
  auto decoded = kvwire::DecodeStream(*stream);
  if (!decoded.ok()) return std::printf("decode: %s\n", decoded.status().ToString().c_str()), 1;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (auto kind : {kvwire::KvKind::kKey, kvwire::KvKind::kValue}) {
      auto a = cache->tensor(l, kind);
      auto b = decoded->tensor(l, kind);
      if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size()) != 0) {
        return std::printf("round trip differs in layer %u\n", l), 1;
      }
    }
  }
  std::printf("kvwire downstream: OK (%zu stream bytes, %zu codec families)\n", stream->size(),
              kvwire::ListCodecFamilies().size());
  return 0;
}
