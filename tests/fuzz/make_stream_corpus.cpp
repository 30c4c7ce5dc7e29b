// Writes the seed corpus of fuzz_stream_reader (tests/fuzz/corpus/stream/), or checks it.
//
//   make_stream_corpus --write DIR   write every seed into DIR (deterministic bytes)
//   make_stream_corpus --check DIR   regenerate in memory and compare with DIR: golden seeds
//                                    (the container with the test codec, and fp16, whose
//                                    payload layout docs/FORMAT.md fixes) must be byte-identical;
//                                    the others must exist (the replay test decodes them)
//
// Seeds "seed-*" are valid streams: small, several codecs and levels, multi-chunk, with
// token_begin and every dtype. Seeds "crc-*" drive the target's checksum-repair mode ('k' + a
// stream), "rt-*" its round-trip mode. Real codecs are
// included when this build registers them.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "codec/stream_format.h"
#include "fuzz/test_codecs.h"
#include "kvwire/stream.h"

namespace {

using namespace kvwire;
namespace fs = std::filesystem;

struct Seed {
  std::string name;
  std::vector<uint8_t> bytes;
  bool golden = false;
};

// Deterministic pseudo-random values (xorshift), exact in every dtype: k/8 with |k| <= 127.
KvCache MakeCache(const KvShape& shape, DType dtype, uint32_t seed) {
  auto cache = KvCache::Create(shape, dtype);
  uint32_t x = seed * 2654435761u + 1;
  std::vector<float> row(size_t{shape.kv_heads} * shape.head_dim);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      for (uint32_t t = 0; t < shape.tokens; ++t) {
        for (float& v : row) {
          x ^= x << 13;
          x ^= x >> 17;
          x ^= x << 5;
          v = static_cast<float>(static_cast<int8_t>(x & 0xff)) / 8.0f;
        }
        (void)cache->view().WriteF32(l, kind, t, 1, row.data());
      }
    }
  }
  return std::move(cache).value();
}

// Header, then layer l at level levels_of_layer[l % size], then the trailer.
Result<std::vector<uint8_t>> Encode(const KvCache& cache, StreamInfo info, uint32_t chunk_tokens,
                                    const std::vector<uint8_t>& levels_of_layer) {
  KVWIRE_ASSIGN_OR_RETURN(
      auto writer, StreamWriter::Create(std::move(info), StreamWriterOptions{chunk_tokens, 1}));
  std::vector<uint8_t> out;
  KVWIRE_RETURN_IF_ERROR(writer->WriteHeader(&out));
  for (uint32_t l = 0; l < cache.shape().layers; ++l) {
    KVWIRE_RETURN_IF_ERROR(
        writer->WriteLayer(cache.view(), l, levels_of_layer[l % levels_of_layer.size()], &out));
  }
  KVWIRE_RETURN_IF_ERROR(writer->Finish(&out));
  return out;
}

StreamInfo Info(const KvShape& shape, DType dtype, std::vector<std::string> levels) {
  StreamInfo info;
  info.shape = shape;
  info.dtype = dtype;
  info.metadata.positions_start = 0;
  info.metadata.rope_theta = 10000.0;
  info.metadata.rope_style = "interleaved";
  info.metadata.model_fingerprint = "seed";
  info.levels = std::move(levels);
  return info;
}

std::string FileName(std::string spec) {
  for (char& c : spec) {
    if (c == ':' || c == ',' || c == '=') c = '_';
  }
  return spec;
}

std::vector<Seed> MakeSeeds() {
  testing::RegisterTestCodecs();
  std::vector<Seed> seeds;
  auto add = [&](std::string name, Result<std::vector<uint8_t>> bytes, bool golden) {
    if (!bytes.ok()) {
      std::fprintf(stderr, "make_stream_corpus: %s skipped: %s\n", name.c_str(),
                   bytes.status().ToString().c_str());
      return;
    }
    seeds.push_back(Seed{std::move(name), std::move(bytes).value(), golden});
  };

  // The container alone, with the passthrough test codec.
  {
    const KvShape shape{2, 6, 2, 4};
    const KvCache cache = MakeCache(shape, DType::kF32, 1);
    add("seed-f32-two-levels.kvw",
        Encode(cache, Info(shape, DType::kF32, {"test-f32", "test-f32:align=2"}), 4, {0, 1}), true);
    add("seed-f32-one-chunk.kvw", Encode(cache, Info(shape, DType::kF32, {"test-f32"}), 0, {0}),
        true);
    StreamInfo info = Info(KvShape{1, 3, 1, 2}, DType::kBF16, {"test-f32"});
    info.token_begin = 5;
    info.metadata.positions_start = 100;
    info.profile_id = "sha256:0123";
    add("seed-f32-token-begin-bf16.kvw",
        Encode(MakeCache(info.shape, DType::kBF16, 2), info, 1, {0}), true);
  }

  // Real codecs, one stream each, when this build has them (small shapes: 1 x 24 x 1 x 32).
  const KvShape shape{1, 24, 1, 32};
  const KvCache cache = MakeCache(shape, DType::kF16, 3);
  std::vector<std::string> have;
  for (const char* spec : {"fp16", "int8", "q8_0", "q4_0", "kivi2:g=8,r=8", "kivi4:g=4,r=4",
                           "int4-token", "int3-channel", "rank-4", "turbo3"}) {
    auto codec = CreateCodec(spec);
    if (!codec.ok()) continue;
    have.push_back(spec);
    add("seed-" + FileName(spec) + ".kvw", Encode(cache, Info(shape, DType::kF16, {spec}), 16, {0}),
        std::string(spec) == "fp16");
  }
  // Several real codecs as levels of one stream, one level per layer.
  if (have.size() >= 2) {
    std::vector<std::string> levels(have.begin(), have.begin() + std::min<size_t>(have.size(), 3));
    const KvShape three{static_cast<uint32_t>(levels.size()), 12, 1, 32};
    std::vector<uint8_t> order;
    for (size_t i = 0; i < levels.size(); ++i) order.push_back(static_cast<uint8_t>(i));
    add("seed-mixed-levels.kvw",
        Encode(MakeCache(three, DType::kF16, 4), Info(three, DType::kF16, levels), 8, order),
        false);
  }

  // Checksum-repair mode: 'k' + a valid stream (the target recomputes the CRCs it finds).
  for (size_t i = 0, n = seeds.size(); i < n; ++i) {
    const std::string& name = seeds[i].name;
    if (name == "seed-f32-two-levels.kvw" || name == "seed-q4_0.kvw" ||
        name == "seed-kivi2_g_8_r_8.kvw" || name == "seed-mixed-levels.kvw") {
      std::vector<uint8_t> bytes = {'k'};
      bytes.insert(bytes.end(), seeds[i].bytes.begin(), seeds[i].bytes.end());
      seeds.push_back(Seed{"crc-" + name.substr(5), std::move(bytes), false});
    }
  }

  // Hostile variants of the two-level container stream, for the error paths: "bad-*" are
  // streams the reader must refuse; "crc-*" go through the checksum repair first, so what they
  // break is the structure behind the checksums (ordering, counts).
  const std::vector<uint8_t> good = seeds.front().bytes;  // seed-f32-two-levels.kvw
  std::vector<size_t> at;                                 // chunk offsets, then the trailer's
  {
    size_t pos = format::kHeaderOverheadBytes + format::LoadLE32(good.data() + 8);
    while (format::TagAt(good.data() + pos, format::kChunkTag)) {
      at.push_back(pos);
      pos += kChunkHeaderBytes + format::LoadLE32(good.data() + pos + format::chunk::kPayloadBytes);
    }
    at.push_back(pos);
  }
  auto piece = [&](size_t i) {  // chunk i (or the trailer for i == chunks)
    const size_t end = i + 1 < at.size() ? at[i + 1] : good.size();
    return std::vector<uint8_t>(good.begin() + at[i], good.begin() + end);
  };
  auto join = [&](bool repair, const std::vector<size_t>& order) {
    std::vector<uint8_t> out;
    if (repair) out.push_back('k');
    out.insert(out.end(), good.begin(), good.begin() + at[0]);
    for (size_t i : order) {
      const auto p = piece(i);
      out.insert(out.end(), p.begin(), p.end());
    }
    return out;
  };
  const size_t n = at.size() - 1;  // chunks; piece(n) is the trailer
  std::vector<size_t> all(n + 1);
  for (size_t i = 0; i <= n; ++i) all[i] = i;
  {
    std::vector<uint8_t> b(good.begin(), good.begin() + at[n]);
    seeds.push_back(Seed{"bad-no-trailer", b, true});
    b = good;
    b.push_back(0);
    seeds.push_back(Seed{"bad-trailing-byte", b, true});
    b = good;
    b[format::preamble::kMajor] = 2;
    seeds.push_back(Seed{"bad-version-2", b, true});
    b = good;
    b[at[1] + format::chunk::kLayer] ^= 1;
    seeds.push_back(Seed{"bad-chunk-header-crc", b, true});
  }
  {
    std::vector<size_t> dup = all;
    dup.insert(dup.begin() + 1, 0);
    seeds.push_back(Seed{"crc-duplicate-chunk", join(true, dup), true});
    std::vector<size_t> swapped = all;
    std::swap(swapped[0], swapped[1]);
    seeds.push_back(Seed{"crc-swapped-chunks", join(true, swapped), true});
    std::vector<size_t> v_first = all;
    std::swap(v_first[0], v_first[2]);
    std::swap(v_first[1], v_first[3]);
    seeds.push_back(Seed{"crc-v-before-k", join(true, v_first), true});
    std::vector<size_t> missing = all;
    missing.erase(missing.end() - 2);
    seeds.push_back(Seed{"crc-missing-chunk", join(true, missing), true});
  }

  // Round-trip mode descriptions: mode byte (not 'K'), layers, tokens, kv_heads, head_dim index,
  // codec index, chunk_tokens, dtype/block/token_begin, positions, then values.
  const std::vector<std::vector<uint8_t>> rt = {
      {0x01, 1, 7, 1, 2, 0, 3, 0x05, 0, 1, 2, 3, 0x80, 0x7f},
      {0x02, 2, 40, 2, 5, 2, 16, 0x2a, 9, 0x11, 0x22, 0x33, 0x44, 0xf0, 0x0f},
      {0x03, 0, 33, 0, 6, 5, 0, 0x61, 1, 0xff, 0x01, 0x7e, 0x81},
      {0x04, 1, 47, 2, 5, 6, 5, 0x16, 3, 0x10, 0x20, 0x30},
  };
  for (size_t i = 0; i < rt.size(); ++i) {
    seeds.push_back(Seed{"rt-" + std::to_string(i), rt[i], true});
  }
  return seeds;
}

std::vector<uint8_t> ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || (std::string(argv[1]) != "--write" && std::string(argv[1]) != "--check")) {
    std::fprintf(stderr, "usage: %s --write|--check DIR\n", argv[0]);
    return 2;
  }
  const bool write = std::string(argv[1]) == "--write";
  const fs::path dir = argv[2];
  int failed = 0;
  for (const Seed& seed : MakeSeeds()) {
    const fs::path path = dir / seed.name;
    if (write) {
      fs::create_directories(dir);
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(seed.bytes.data()),
                static_cast<std::streamsize>(seed.bytes.size()));
      std::printf("%-40s %6zu bytes\n", seed.name.c_str(), seed.bytes.size());
      continue;
    }
    if (!fs::exists(path)) {
      std::fprintf(stderr, "missing seed %s (regenerate with --write)\n", path.c_str());
      ++failed;
    } else if (seed.golden && ReadFile(path) != seed.bytes) {
      std::fprintf(stderr,
                   "golden seed %s differs from what this build writes: the format changed "
                   "(bump the version, docs/FORMAT.md) or the seed is stale\n",
                   path.c_str());
      ++failed;
    }
  }
  return failed == 0 ? 0 : 1;
}
