// What each pass over an fp16 chunk costs the session, beside memcpy of the same bytes: the
// sender copies the rows into the frame (KvView::ReadRaw) and then computes the payload CRC32C
// and checks finiteness; the receiver does the CRC and check again and copies into the
// destination (WriteRaw). Run: build/bench/stream_passes_bench; the table and the command
// are in bench/results/stream_passes.md.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "codec/quant_common.h"
#include "codec/stream_format.h"
#include "kvwire/kv_view.h"
#include "kvwire/stream.h"

namespace kvwire {
namespace {

// One chunk as the session ships it: 8 kv heads x 128, `tokens` rows; the payload starts 40
// bytes into its frame (after the chunk header), as on the wire.
struct Chunk {
  explicit Chunk(size_t bytes) : frame(kChunkHeaderBytes + bytes), rows(bytes) {
    std::mt19937 rng(1);
    for (size_t i = 0; i + 1 < bytes; i += 2) {
      const uint16_t h = static_cast<uint16_t>(rng()) & 0xbbff;  // finite halves
      std::memcpy(&rows[i], &h, 2);
    }
    std::memcpy(frame.data() + kChunkHeaderBytes, rows.data(), bytes);
  }
  std::span<const uint8_t> payload() const {
    return {frame.data() + kChunkHeaderBytes, rows.size()};
  }
  std::vector<uint8_t> frame, rows;
};

void SetBytes(benchmark::State& state) {
  state.SetBytesProcessed(int64_t(state.iterations()) * state.range(0));
}

void BM_Memcpy(benchmark::State& state) {
  Chunk c(state.range(0));
  for (auto _ : state) {
    std::memcpy(c.frame.data() + kChunkHeaderBytes, c.rows.data(), c.rows.size());
    benchmark::ClobberMemory();
  }
  SetBytes(state);
}

void BM_Crc32c(benchmark::State& state) {
  Chunk c(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(Crc32c(c.payload()));
  SetBytes(state);
}

void BM_HalvesFinite(benchmark::State& state) {
  Chunk c(state.range(0));
  for (auto _ : state)
    benchmark::DoNotOptimize(baseline::HalvesFinite(c.payload().data(), c.rows.size() / 2));
  SetBytes(state);
}

// The crc32 instruction alone (three lanes), which Crc32c replaces by folding on CPUs with
// AVX-512 and VPCLMULQDQ: the before/after of that change on one machine.
void BM_Crc32cInstruction(benchmark::State& state) {
  Chunk c(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(format::Crc32cInstruction(c.payload()));
  SetBytes(state);
}

void BM_Crc32cThenFinite(benchmark::State& state) {
  Chunk c(state.range(0));
  for (auto _ : state) {
    benchmark::DoNotOptimize(Crc32c(c.payload()));
    benchmark::DoNotOptimize(baseline::HalvesFinite(c.payload().data(), c.rows.size() / 2));
  }
  SetBytes(state);
}

void BM_Crc32cFiniteHalves(benchmark::State& state) {
  Chunk c(state.range(0));
  for (auto _ : state) {
    bool finite = false;
    benchmark::DoNotOptimize(format::Crc32cFiniteHalves(c.payload(), 0, &finite));
    benchmark::DoNotOptimize(finite);
  }
  SetBytes(state);
}

// The whole fp16 frame encode of the session sender (copy, CRC + finiteness, header).
void BM_EncodeChunkIntoFp16(benchmark::State& state) {
  const uint32_t tokens = static_cast<uint32_t>(state.range(0) / (2 * 8 * 128));
  const KvShape shape{1, tokens, 8, 128};
  auto cache = KvCache::Create(shape, DType::kF16);
  Chunk c(state.range(0));
  std::memcpy(cache->tensor(0, KvKind::kKey).data(), c.rows.data(), c.rows.size());
  StreamInfo info;
  info.shape = shape;
  info.dtype = DType::kF16;
  info.metadata.rope_theta = 10000.0;
  info.metadata.rope_style = "neox";
  info.metadata.model_fingerprint = "bench";
  info.levels = {"fp16"};
  auto writer = StreamWriter::Create(info);
  if (!writer.ok()) {
    state.SkipWithError(writer.status().ToString().c_str());
    return;
  }
  std::vector<uint8_t> frame(kChunkHeaderBytes + c.rows.size());
  for (auto _ : state) {
    const Status s =
        (*writer)->EncodeChunkInto(cache->view(), 0, KvKind::kKey, 0, tokens, 0, &frame);
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    benchmark::ClobberMemory();
  }
  SetBytes(state);
}

constexpr int64_t kKiB = 1024;
#define KVWIRE_SIZES ->Arg(256 * kKiB)->Arg(1024 * kKiB)->Arg(4096 * kKiB)
BENCHMARK(BM_Memcpy) KVWIRE_SIZES;
BENCHMARK(BM_Crc32c) KVWIRE_SIZES;
BENCHMARK(BM_Crc32cInstruction) KVWIRE_SIZES;
BENCHMARK(BM_HalvesFinite) KVWIRE_SIZES;
BENCHMARK(BM_Crc32cThenFinite) KVWIRE_SIZES;
BENCHMARK(BM_Crc32cFiniteHalves) KVWIRE_SIZES;
BENCHMARK(BM_EncodeChunkIntoFp16) KVWIRE_SIZES;

}  // namespace
}  // namespace kvwire

BENCHMARK_MAIN();
