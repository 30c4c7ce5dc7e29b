// kvwire/cuda_codec.h — the baseline codecs (int8, q8_0, q4_0, kivi<b>) on a CUDA device,
// reading from and writing into KV caches in GPU memory (contiguous or paged), plus RAII
// wrappers for device memory and streams. Built when CUDA is found (target kvwire_cuda); a
// binary that links it still runs without a GPU: IsCudaAvailable() says why not.
//
// Compatibility (codecs are deterministic, kvwire/codec.h): a payload encoded here is
// byte-identical to the CPU codec's Encode of the same values (converted to float32), so streams
// mix freely: the CPU decodes GPU payloads and vice versa, and decoded values are identical
// (tolerance 0 for every codec here) once rounded to the destination dtype (as
// KvView::WriteF32 rounds).
//
// Asynchrony: EncodeChunk/DecodeChunk validate their arguments on the host, enqueue kernels on
// `stream` and return; nothing is allocated per call. Data-dependent errors (a non-finite input,
// an invalid scale in a payload, a bad block id) are found by the kernels and reported by
// Wait(stream), which synchronizes the stream. Until Wait returned ok, treat the output as
// unusable.
//
// Thread-safety: a CudaCodec owns one device error word; use one CudaCodec per thread (or per
// stream and Wait before reusing it from another). DeviceBuffer and Stream are move-only
// owners; their methods are not synchronized.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvwire/codec.h"
#include "kvwire/kv_view.h"
#include "kvwire/status.h"

struct CUstream_st;  // a cudaStream_t is a CUstream_st*, so callers pass theirs as is

namespace kvwire::cuda {

/// A CUDA stream (cudaStream_t); nullptr is the legacy default stream.
using StreamHandle = CUstream_st*;

/// True when the CUDA runtime loads and sees at least one device; otherwise false and, when
/// `reason` is given, why (e.g. "cudaGetDeviceCount: no CUDA-capable device is detected").
bool IsCudaAvailable(std::string* reason = nullptr);

struct DeviceInfo {
  int ordinal = 0;
  std::string name;  // e.g. "NVIDIA H100 80GB HBM3"
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  uint64_t global_memory_bytes = 0;
  int runtime_version = 0;  // cudaRuntimeGetVersion, e.g. 13000
  int driver_version = 0;   // cudaDriverGetVersion
};
/// Properties of device `ordinal` (kUnsupported without a device).
Result<DeviceInfo> GetDeviceInfo(int ordinal = 0);

/// Owns `size()` bytes of device memory (cudaMalloc) on the device current at allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static Result<DeviceBuffer> Allocate(uint64_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  uint64_t size() const { return size_; }
  template <typename T>
  T* as() {
    return static_cast<T*>(ptr_);
  }

  /// Synchronous copies between host memory and [offset, offset + bytes) of this buffer.
  Status CopyFromHost(const void* src, uint64_t bytes, uint64_t offset = 0);
  Status CopyToHost(void* dst, uint64_t bytes, uint64_t offset = 0) const;
  /// Synchronous memset of the whole buffer.
  Status Fill(uint8_t byte);

 private:
  void* ptr_ = nullptr;
  uint64_t size_ = 0;
};

/// Owns a non-blocking CUDA stream.
class Stream {
 public:
  Stream() = default;
  static Result<Stream> Create();
  ~Stream();
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  StreamHandle get() const { return stream_; }
  Status Synchronize() const;

 private:
  StreamHandle stream_ = nullptr;
};

/// One (layer, K|V) tensor of a KV cache in device memory, in the layouts of kvwire/kv_view.h.
///   contiguous (block_size == 0): data = [tokens, kv_heads, head_dim]
///   paged      (block_size  > 0): data = [num_blocks, block_size, kv_heads, head_dim],
///                                 block_table (device) = [ceil(tokens / block_size)] int32
/// View token v holds sequence token first_token + v. Block ids are checked by the kernels
/// (an id outside [0, num_blocks) is an error at Wait, never an out-of-bounds access).
struct DeviceKvTensor {
  void* data = nullptr;
  DType dtype = DType::kF16;
  uint32_t tokens = 0;  // view tokens addressable
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t first_token = 0;  // sequence token at view token 0
  uint32_t block_size = 0;   // 0 = contiguous
  uint32_t num_blocks = 0;
  const int32_t* block_table = nullptr;
};

/// A baseline codec on the GPU. Chunks are described by the same ChunkDesc as the CPU Codec
/// (token_begin is a sequence token; kivi needs seq_tokens for its window rule).
class CudaCodec {
 public:
  /// `spec` as for CreateCodec ("int8", "q8_0", "q4_0", "kivi2", "kivi4:g=64,r=16").
  /// kNotFound / kInvalidArgument for a bad spec, kUnsupported for a codec without CUDA
  /// kernels (fraqtl: see kernels/README.md) or when no device is present.
  static Result<std::unique_ptr<CudaCodec>> Create(std::string_view spec);
  ~CudaCodec();

  std::string Spec() const;  // canonical, as the CPU codec's Spec()
  uint16_t Id() const;       // the CPU codec's id (chunk headers)
  uint32_t TokenAlignment() const;

  /// Payload bytes of chunk `desc` (what EncodeChunk writes and DecodeChunk expects).
  Result<uint64_t> PayloadBytes(const ChunkDesc& desc) const;

  /// Encodes sequence tokens [desc.token_begin, + desc.tokens) of `src` into `payload`
  /// (device memory of `capacity` >= PayloadBytes(desc) bytes). Asynchronous on `stream`.
  Status EncodeChunk(const ChunkDesc& desc, const DeviceKvTensor& src, void* payload,
                     uint64_t capacity, StreamHandle stream) const;
  /// Decodes one chunk's `payload` (device memory, exactly PayloadBytes(desc) bytes) into
  /// sequence tokens [desc.token_begin, + desc.tokens) of `dst`, rounding to dst.dtype.
  /// Asynchronous on `stream`.
  Status DecodeChunk(const ChunkDesc& desc, const void* payload, uint64_t payload_bytes,
                     const DeviceKvTensor& dst, StreamHandle stream) const;

  /// Synchronizes `stream`, then reports (and clears) the data-dependent errors of the chunks
  /// enqueued since the last Wait: kInvalidArgument (non-finite input, bad block id) or
  /// kCorrupt (invalid scale/min/window value, kivi header).
  Status Wait(StreamHandle stream) const;

 private:
  struct Impl;
  explicit CudaCodec(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Specs of the codecs with CUDA kernels, as `bench codec --device cuda` runs them.
std::vector<std::string> CudaCodecSpecs();

}  // namespace kvwire::cuda
