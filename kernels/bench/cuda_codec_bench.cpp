// kvwire_cuda_bench: encode/decode GB/s of the CUDA codecs on a KV cache shaped like
// Llama-3-8B (32 layers, 8 KV heads, head_dim 128, fp16) at 4K and 32K tokens, against a
// device-to-device cudaMemcpy of the same bytes measured in the same run (the physical
// ceiling). GB/s are fp16 input bytes (layers x 2 x tokens x kv_heads x head_dim x 2) per
// second. One chunk per (layer, K|V), all on one stream, timed with CUDA events; median of
// --repeat runs after one warm-up. Checks that layer 0's payloads equal the CPU codec's bytes.
// Writes <out-dir>/codec_cuda.{json,md}. Exits 2 with the reason when there is no device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "kvwire/codec.h"
#include "kvwire/cuda_codec.h"

namespace kvwire::cuda {
namespace {

using Json = nlohmann::ordered_json;

struct Args {
  std::vector<uint32_t> tokens = {4096, 32768};
  uint32_t layers = 32, kv_heads = 8, head_dim = 128;
  int repeat = 5;
  std::vector<std::string> codecs = CudaCodecSpecs();
  std::string out_dir = "bench/results";
};

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (k == "--tokens") {
      a->tokens.clear();
      for (const auto& t : Split(next())) a->tokens.push_back(std::stoul(t));
    } else if (k == "--layers") {
      a->layers = std::stoul(next());
    } else if (k == "--kv-heads") {
      a->kv_heads = std::stoul(next());
    } else if (k == "--head-dim") {
      a->head_dim = std::stoul(next());
    } else if (k == "--repeat") {
      a->repeat = std::max(1, std::stoi(next()));
    } else if (k == "--codecs") {
      a->codecs = Split(next());
    } else if (k == "--out-dir") {
      a->out_dir = next();
    } else {
      std::cerr << "usage: kvwire_cuda_bench [--tokens 4096,32768] [--layers 32] [--kv-heads 8]\n"
                   "       [--head-dim 128] [--repeat 5] [--codecs int8,q8_0,...] "
                   "[--out-dir bench/results]\n";
      return false;
    }
  }
  return !a->tokens.empty() && a->layers > 0 && a->kv_heads > 0 && a->head_dim > 0;
}

#define BENCH_CHECK(expr)                                                     \
  do {                                                                        \
    const ::kvwire::Status bench_status_ = (expr);                            \
    if (!bench_status_.ok()) {                                                \
      std::cerr << "kvwire_cuda_bench: " << bench_status_.ToString() << "\n"; \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

template <typename T>
T Must(Result<T> r) {
  if (!r.ok()) {
    std::cerr << "kvwire_cuda_bench: " << r.status().ToString() << "\n";
    std::exit(1);
  }
  return std::move(r).value();
}

void CudaCheck(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::cerr << "kvwire_cuda_bench: " << what << ": " << cudaGetErrorString(err) << "\n";
    std::exit(1);
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Milliseconds of `body` (enqueued on `stream`), median over `repeat` runs after a warm-up.
template <typename F>
double TimeMs(StreamHandle stream, int repeat, F body) {
  cudaEvent_t start, stop;
  CudaCheck(cudaEventCreate(&start), "cudaEventCreate");
  CudaCheck(cudaEventCreate(&stop), "cudaEventCreate");
  auto raw = reinterpret_cast<cudaStream_t>(stream);
  body();
  CudaCheck(cudaStreamSynchronize(raw), "warm-up");
  std::vector<double> ms;
  for (int r = 0; r < repeat; ++r) {
    CudaCheck(cudaEventRecord(start, raw), "cudaEventRecord");
    body();
    CudaCheck(cudaEventRecord(stop, raw), "cudaEventRecord");
    CudaCheck(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0;
    CudaCheck(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return Median(ms);
}

struct Row {
  std::string spec;
  uint32_t tokens = 0;
  double bits_per_element = 0;
  double encode_gbs = 0, decode_gbs = 0, memcpy_gbs = 0;
  bool matches_cpu = false;
};

Json RunShape(const Args& a, uint32_t tokens, const Stream& stream, std::vector<Row>* rows) {
  const uint64_t tensor_elems = uint64_t{tokens} * a.kv_heads * a.head_dim;
  const uint64_t tensor_bytes = tensor_elems * 2;
  const uint32_t tensors = a.layers * 2;
  const uint64_t total_bytes = tensor_bytes * tensors;
  // One synthetic fp16 tensor (Gaussian, a few outlier channels), copied into every tensor.
  std::vector<uint16_t> host(tensor_elems);
  std::mt19937_64 rng(tokens);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (uint64_t i = 0; i < tensor_elems; ++i) {
    const uint32_t c = static_cast<uint32_t>(i % a.head_dim);
    host[i] = FloatToHalf(n01(rng) * (c % 61 == 3 ? 20.0f : 1.0f));
  }
  DeviceBuffer src = Must(DeviceBuffer::Allocate(total_bytes));
  DeviceBuffer dst = Must(DeviceBuffer::Allocate(total_bytes));
  for (uint32_t t = 0; t < tensors; ++t)
    BENCH_CHECK(src.CopyFromHost(host.data(), tensor_bytes, t * tensor_bytes));
  auto tensor = [&](DeviceBuffer& buf, uint32_t t) {
    DeviceKvTensor x;
    x.data = static_cast<uint8_t*>(buf.data()) + t * tensor_bytes;
    x.dtype = DType::kF16;
    x.tokens = tokens;
    x.kv_heads = a.kv_heads;
    x.head_dim = a.head_dim;
    return x;
  };
  const double memcpy_ms = TimeMs(stream.get(), a.repeat, [&] {
    for (uint32_t t = 0; t < tensors; ++t) {
      CudaCheck(
          cudaMemcpyAsync(static_cast<uint8_t*>(dst.data()) + t * tensor_bytes,
                          static_cast<uint8_t*>(src.data()) + t * tensor_bytes, tensor_bytes,
                          cudaMemcpyDeviceToDevice, reinterpret_cast<cudaStream_t>(stream.get())),
          "cudaMemcpyAsync");
    }
  });
  const double memcpy_gbs = total_bytes / (memcpy_ms * 1e6);
  Json shape = {{"tokens", tokens},
                {"bytes_fp16", total_bytes},
                {"memcpy_d2d_ms", memcpy_ms},
                {"memcpy_d2d_gbs", memcpy_gbs},
                {"codecs", Json::array()}};
  for (const std::string& spec : a.codecs) {
    auto made = CudaCodec::Create(spec);
    if (!made.ok()) {
      std::cerr << "kvwire_cuda_bench: skipping " << spec << ": " << made.status().ToString()
                << "\n";
      continue;
    }
    const CudaCodec& codec = **made;
    std::vector<ChunkDesc> descs(tensors);
    std::vector<uint64_t> offsets(tensors + 1, 0);
    for (uint32_t t = 0; t < tensors; ++t) {
      ChunkDesc& d = descs[t];
      d.layer = t / 2;
      d.kind = t % 2 ? KvKind::kValue : KvKind::kKey;
      d.tokens = d.seq_tokens = tokens;
      d.kv_heads = a.kv_heads;
      d.head_dim = a.head_dim;
      offsets[t + 1] = offsets[t] + Must(codec.PayloadBytes(d));
    }
    DeviceBuffer payload = Must(DeviceBuffer::Allocate(offsets[tensors]));
    auto* p = static_cast<uint8_t*>(payload.data());
    const double enc_ms = TimeMs(stream.get(), a.repeat, [&] {
      for (uint32_t t = 0; t < tensors; ++t) {
        BENCH_CHECK(codec.EncodeChunk(descs[t], tensor(src, t), p + offsets[t],
                                      offsets[t + 1] - offsets[t], stream.get()));
      }
    });
    BENCH_CHECK(codec.Wait(stream.get()));
    const double dec_ms = TimeMs(stream.get(), a.repeat, [&] {
      for (uint32_t t = 0; t < tensors; ++t) {
        BENCH_CHECK(codec.DecodeChunk(descs[t], p + offsets[t], offsets[t + 1] - offsets[t],
                                      tensor(dst, t), stream.get()));
      }
    });
    BENCH_CHECK(codec.Wait(stream.get()));
    // Layer 0 K and V: the GPU payload must be the CPU codec's bytes.
    bool same = true;
    auto cpu = Must(CreateCodec(spec));
    std::vector<float> f32(tensor_elems);
    for (uint64_t i = 0; i < tensor_elems; ++i) f32[i] = HalfToFloat(host[i]);
    for (uint32_t t = 0; t < 2; ++t) {
      std::vector<uint8_t> want, got(offsets[t + 1] - offsets[t]);
      BENCH_CHECK(cpu->Encode(descs[t], f32.data(), &want));
      BENCH_CHECK(payload.CopyToHost(got.data(), got.size(), offsets[t]));
      same = same && want == got;
    }
    Row r;
    r.spec = codec.Spec();
    r.tokens = tokens;
    r.bits_per_element = offsets[tensors] * 8.0 / (double(tensor_elems) * tensors);
    r.encode_gbs = total_bytes / (enc_ms * 1e6);
    r.decode_gbs = total_bytes / (dec_ms * 1e6);
    r.memcpy_gbs = memcpy_gbs;
    r.matches_cpu = same;
    rows->push_back(r);
    shape["codecs"].push_back({{"spec", r.spec},
                               {"bits_per_element_payload", r.bits_per_element},
                               {"payload_bytes", offsets[tensors]},
                               {"encode_ms", enc_ms},
                               {"decode_ms", dec_ms},
                               {"encode_gbs", r.encode_gbs},
                               {"decode_gbs", r.decode_gbs},
                               {"encode_vs_memcpy", r.encode_gbs / memcpy_gbs},
                               {"decode_vs_memcpy", r.decode_gbs / memcpy_gbs},
                               {"payload_matches_cpu_layer0", same}});
    std::printf(
        "%-16s %7u tok  %6.3f b/e  enc %8.1f GB/s (%5.1f%%)  dec %8.1f GB/s (%5.1f%%)  %s\n",
        r.spec.c_str(), tokens, r.bits_per_element, r.encode_gbs, 100 * r.encode_gbs / memcpy_gbs,
        r.decode_gbs, 100 * r.decode_gbs / memcpy_gbs,
        same ? "bytes == CPU" : "BYTES DIFFER FROM CPU");
  }
  return shape;
}

int Main(int argc, char** argv) {
  Args a;
  if (!ParseArgs(argc, argv, &a)) return 2;
  std::string reason;
  if (!IsCudaAvailable(&reason)) {
    std::cerr << "kvwire_cuda_bench: no CUDA device: " << reason
              << "\n  (this benchmark needs a GPU; see kernels/README.md for the command)\n";
    return 2;
  }
  const DeviceInfo dev = Must(GetDeviceInfo(0));
  std::printf("device: %s (sm_%d%d, %d SMs), CUDA runtime %d, driver %d\n", dev.name.c_str(),
              dev.compute_major, dev.compute_minor, dev.multiprocessors, dev.runtime_version,
              dev.driver_version);
  std::printf("KV: %u layers x 2 x tokens x %u kv_heads x %u head_dim, fp16; median of %d\n",
              a.layers, a.kv_heads, a.head_dim, a.repeat);
  Stream stream = Must(Stream::Create());
  Json out = {{"device", dev.name},
              {"compute_capability",
               std::to_string(dev.compute_major) + "." + std::to_string(dev.compute_minor)},
              {"cuda_runtime", dev.runtime_version},
              {"layers", a.layers},
              {"kv_heads", a.kv_heads},
              {"head_dim", a.head_dim},
              {"dtype", "f16"},
              {"repeat", a.repeat},
              {"gbs_definition", "fp16 input bytes per second (1 GB = 1e9 bytes)"},
              {"shapes", Json::array()}};
  std::vector<Row> rows;
  bool all_same = true;
  for (uint32_t tokens : a.tokens) {
    out["shapes"].push_back(RunShape(a, tokens, stream, &rows));
    std::printf("memcpy d2d %7u tok: %.1f GB/s\n", tokens,
                out["shapes"].back()["memcpy_d2d_gbs"].get<double>());
  }
  std::filesystem::create_directories(a.out_dir);
  std::ofstream(a.out_dir + "/codec_cuda.json") << out.dump(2) << "\n";
  std::ofstream md(a.out_dir + "/codec_cuda.md");
  md << "# CUDA codec speed\n\n"
     << "Device: **" << dev.name << "** (compute " << dev.compute_major << "." << dev.compute_minor
     << ", CUDA runtime " << dev.runtime_version << "). KV: " << a.layers
     << " layers x 2 x tokens x " << a.kv_heads << " kv_heads x " << a.head_dim
     << " head_dim, fp16, contiguous, one chunk per (layer, K|V); GB/s = fp16 input bytes / s, "
        "median of "
     << a.repeat << "; ceiling = device-to-device cudaMemcpy of the same bytes, same run. "
     << "Written by `kvwire_cuda_bench`.\n\n"
     << "| codec | tokens | payload bits/elem | encode GB/s | % of memcpy | decode GB/s | % of "
        "memcpy | memcpy GB/s | bytes == CPU |\n"
     << "|---|---:|---:|---:|---:|---:|---:|---:|---|\n";
  char line[512];
  for (const Row& r : rows) {
    std::snprintf(line, sizeof(line),
                  "| %s | %u | %.3f | %.1f | %.0f %% | %.1f | %.0f %% | %.1f | %s |\n",
                  r.spec.c_str(), r.tokens, r.bits_per_element, r.encode_gbs,
                  100 * r.encode_gbs / r.memcpy_gbs, r.decode_gbs,
                  100 * r.decode_gbs / r.memcpy_gbs, r.memcpy_gbs, r.matches_cpu ? "yes" : "NO");
    md << line;
    all_same = all_same && r.matches_cpu;
  }
  std::printf("wrote %s/codec_cuda.{json,md}\n", a.out_dir.c_str());
  return all_same ? 0 : 1;
}

}  // namespace
}  // namespace kvwire::cuda

int main(int argc, char** argv) { return kvwire::cuda::Main(argc, argv); }
