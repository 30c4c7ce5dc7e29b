// Fuzz target of the KV dump reader (ParseKvDump and LoadKvDump, include/kvwire/kv_file.h):
// safetensors files that users hand to `kvwire encode`, `send` and `calibrate`. The input is
// the file.
//
// Parsing must never crash, hang, throw or allocate beyond a bound proportional to the input
// (alloc_bound.h), and refusals carry a message. What parses must hold together:
//  * a valid shape; every K/V tensor has tokens x kv_heads x head_dim elements of the dtype, the
//    queries tokens x q_heads x head_dim, and together they are exactly the data section;
//  * each tensor's bytes are the input's bytes at the tensor's data_offsets (read back from the
//    header here, independently of the reader);
//  * LoadKvDump of the same bytes as a file gives the same cache;
//  * SerializeKvDump parses back to the same cache, and serializing that gives the same bytes.
//
// A violated invariant calls Fail(), which aborts: a crash for libFuzzer and a failed ctest for
// the replay (replay_parser_main.cpp). Built as a libFuzzer binary with KVWIRE_BUILD_FUZZ=ON.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "fuzz/alloc_bound.h"
#include "kvwire/kv_file.h"

namespace kvwire {
namespace {

[[noreturn]] void Fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_kv_dump: invariant violated: %s %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

bool SameCache(const KvCache& a, const KvCache& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype() || a.q_heads() != b.q_heads()) {
    return false;
  }
  const KvMetadata &x = a.metadata(), &y = b.metadata();
  if (x.positions_start != y.positions_start || x.rope_theta != y.rope_theta ||
      x.rope_style != y.rope_style || x.model_fingerprint != y.model_fingerprint) {
    return false;
  }
  auto same = [](std::span<const uint8_t> p, std::span<const uint8_t> q) {
    return p.size() == q.size() && (p.empty() || std::memcmp(p.data(), q.data(), p.size()) == 0);
  };
  for (uint32_t l = 0; l < a.shape().layers; ++l) {
    if (!same(a.tensor(l, KvKind::kKey), b.tensor(l, KvKind::kKey)) ||
        !same(a.tensor(l, KvKind::kValue), b.tensor(l, KvKind::kValue)) ||
        !same(a.queries(l), b.queries(l))) {
      return false;
    }
  }
  return true;
}

// The tensor `name` of `cache` ("k.3", "v.0", "q.1"), or an empty span.
std::span<const uint8_t> TensorByName(const KvCache& cache, const std::string& name) {
  const uint32_t layer = static_cast<uint32_t>(std::stoul(name.substr(2)));
  if (layer >= cache.shape().layers) return {};
  if (name[0] == 'k') return cache.tensor(layer, KvKind::kKey);
  if (name[0] == 'v') return cache.tensor(layer, KvKind::kValue);
  return cache.queries(layer);
}

void CheckAgainstInput(const KvCache& cache, std::span<const uint8_t> in) {
  const KvShape& s = cache.shape();
  if (!ValidateShape(s).ok()) Fail("parsed shape does not validate");
  const uint64_t elem = DTypeSize(cache.dtype());
  const uint64_t kv_bytes = s.tensor_elements() * elem;
  const uint64_t q_bytes = uint64_t{s.tokens} * cache.q_heads() * s.head_dim * elem;
  uint64_t total = 0;
  for (uint32_t l = 0; l < s.layers; ++l) {
    if (cache.tensor(l, KvKind::kKey).size() != kv_bytes ||
        cache.tensor(l, KvKind::kValue).size() != kv_bytes || cache.queries(l).size() != q_bytes) {
      Fail("a tensor's size differs from what the shape says");
    }
    total += 2 * kv_bytes + q_bytes;
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, in.data(), 8);
  if (8 + header_len + total != in.size()) Fail("tensors do not make up the data section");

  // Each tensor's bytes are the input's at its data_offsets.
  const auto* text = reinterpret_cast<const char*>(in.data() + 8);
  const auto header = nlohmann::json::parse(text, text + header_len, nullptr, false);
  if (header.is_discarded() || !header.is_object()) Fail("accepted header is not a JSON object");
  size_t tensors = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& off = it.value().at("data_offsets");
    const uint64_t begin = off.at(0).get<uint64_t>(), end = off.at(1).get<uint64_t>();
    const std::span<const uint8_t> t = TensorByName(cache, it.key());
    if (t.size() != end - begin ||
        (!t.empty() && std::memcmp(t.data(), in.data() + 8 + header_len + begin, t.size()) != 0)) {
      Fail("tensor bytes differ from the input at its data_offsets", it.key());
    }
    ++tensors;
  }
  if (tensors != size_t{s.layers} * (cache.q_heads() > 0 ? 3 : 2)) Fail("tensor count");
}

// LoadKvDump reads a path: the same bytes through an anonymous in-memory file.
void CheckLoadAgrees(std::span<const uint8_t> in, const KvCache& parsed) {
  const int fd = ::memfd_create("fuzz_kv_dump", MFD_CLOEXEC);
  if (fd < 0) return;  // no memfd here: nothing to compare
  size_t done = 0;
  while (done < in.size()) {
    const ssize_t n = ::write(fd, in.data() + done, in.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  if (done == in.size()) {
    auto loaded = LoadKvDump("/proc/self/fd/" + std::to_string(fd));
    if (!loaded.ok()) Fail("LoadKvDump refuses what ParseKvDump accepts", loaded.status().ToString());
    if (!SameCache(parsed, *loaded)) Fail("LoadKvDump and ParseKvDump disagree");
  }
  ::close(fd);
}

void CheckRoundTrip(const KvCache& cache) {
  auto bytes = SerializeKvDump(cache);
  if (!bytes.ok()) Fail("parsed cache does not serialize", bytes.status().ToString());
  auto again = ParseKvDump(*bytes);
  if (!again.ok()) Fail("serialized cache does not parse", again.status().ToString());
  if (!SameCache(cache, *again)) Fail("serialize + parse changed the cache");
  auto bytes2 = SerializeKvDump(*again);
  if (!bytes2.ok() || *bytes2 != *bytes) Fail("serialization is not deterministic");
}

}  // namespace
}  // namespace kvwire

bool KvwireFuzzAccepts(std::span<const uint8_t> input) {
  return kvwire::ParseKvDump(input).ok();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvwire;
  const std::span<const uint8_t> in(data, size);
  Result<KvCache> cache = [&] {
    fuzz::AllocBound bound("fuzz_kv_dump", size);
    return ParseKvDump(in);
  }();
  if (!cache.ok()) {
    const StatusCode c = cache.status().code();
    if (c != StatusCode::kCorrupt && c != StatusCode::kTruncated &&
        c != StatusCode::kUnsupported && c != StatusCode::kNotFound) {
      Fail("unexpected error code", cache.status().ToString());
    }
    if (cache.status().message().empty()) Fail("error without a message");
    return 0;
  }
  CheckAgainstInput(*cache, in);
  CheckLoadAgrees(in, *cache);
  CheckRoundTrip(*cache);
  return 0;
}
