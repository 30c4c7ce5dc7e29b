// The host API of include/kvwire/cuda_codec.h: argument validation (all of it happens here, the
// launchers trust their inputs), spec parsing through the CPU registry (so both sides agree on
// canonical specs and ids), RAII wrappers, and the error word the kernels report into.
#include "kvwire/cuda_codec.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "codec/codec_ids.h"
#include "kernels/block_formats.h"
#include "kernels/int8.cuh"
#include "kernels/kivi.cuh"
#include "kernels/q4_0.cuh"
#include "kernels/q8_0.cuh"

namespace kvwire::cuda {

static_assert(blocks::kQ8_0Traits.codec_id == baseline::kIdQ8_0);
static_assert(blocks::kQ4_0Traits.codec_id == baseline::kIdQ4_0);
static_assert(static_cast<int>(kern::ElemType::kF32) == static_cast<int>(DType::kF32) &&
              static_cast<int>(kern::ElemType::kF16) == static_cast<int>(DType::kF16) &&
              static_cast<int>(kern::ElemType::kBF16) == static_cast<int>(DType::kBF16));

namespace {

Status CudaError(cudaError_t err, std::string_view what) {
  return Status(
      err == cudaErrorMemoryAllocation ? StatusCode::kResourceExhausted : StatusCode::kInternal,
      std::string(what) + ": " + cudaGetErrorString(err));
}

#define KVWIRE_CUDA_RETURN_IF_ERROR(call, what)                                    \
  do {                                                                             \
    const cudaError_t kvwire_cuda_err_ = (call);                                   \
    if (kvwire_cuda_err_ != cudaSuccess) return CudaError(kvwire_cuda_err_, what); \
  } while (0)

cudaStream_t Raw(StreamHandle s) { return reinterpret_cast<cudaStream_t>(s); }

// Device pointers only: a host pointer would fault inside a kernel, far from the mistake.
Status CheckDevicePointer(const void* p, std::string_view what) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error this call may leave
    return Status(StatusCode::kInvalidArgument,
                  std::string(what) + " is not a CUDA pointer: " + cudaGetErrorString(err));
  }
  KVWIRE_RETURN_ERROR_IF(attr.type == cudaMemoryTypeUnregistered || attr.devicePointer == nullptr,
                         kInvalidArgument,
                         std::string(what) + " is host memory; a device pointer is required");
  return Status::Ok();
}

enum class Kind { kInt8, kQ8_0, kQ4_0, kKivi };

}  // namespace

// ---- availability --------------------------------------------------------------------------

bool IsCudaAvailable(std::string* reason) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (reason) *reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
    return false;
  }
  if (count == 0) {
    if (reason) *reason = "cudaGetDeviceCount: 0 devices";
    return false;
  }
  if (reason) reason->clear();
  return true;
}

Result<DeviceInfo> GetDeviceInfo(int ordinal) {
  std::string reason;
  KVWIRE_RETURN_ERROR_IF(!IsCudaAvailable(&reason), kUnsupported, "no CUDA device: " + reason);
  cudaDeviceProp prop{};
  KVWIRE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, ordinal), "cudaGetDeviceProperties");
  DeviceInfo info;
  info.ordinal = ordinal;
  info.name = prop.name;
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.global_memory_bytes = prop.totalGlobalMem;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  return info;
}

// ---- RAII ----------------------------------------------------------------------------------

Result<DeviceBuffer> DeviceBuffer::Allocate(uint64_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  KVWIRE_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.ptr_, bytes),
                              "cudaMalloc of " + std::to_string(bytes) + " bytes");
  b.size_ = bytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), size_(std::exchange(other.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Status DeviceBuffer::CopyFromHost(const void* src, uint64_t bytes, uint64_t offset) {
  KVWIRE_RETURN_ERROR_IF(offset > size_ || bytes > size_ - offset, kInvalidArgument,
                         "DeviceBuffer::CopyFromHost: range past the buffer");
  if (bytes == 0) return Status::Ok();
  KVWIRE_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(static_cast<uint8_t*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice),
      "cudaMemcpy host->device");
  return Status::Ok();
}

Status DeviceBuffer::CopyToHost(void* dst, uint64_t bytes, uint64_t offset) const {
  KVWIRE_RETURN_ERROR_IF(offset > size_ || bytes > size_ - offset, kInvalidArgument,
                         "DeviceBuffer::CopyToHost: range past the buffer");
  if (bytes == 0) return Status::Ok();
  KVWIRE_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(dst, static_cast<const uint8_t*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost),
      "cudaMemcpy device->host");
  return Status::Ok();
}

Status DeviceBuffer::Fill(uint8_t byte) {
  if (size_ == 0) return Status::Ok();
  KVWIRE_CUDA_RETURN_IF_ERROR(cudaMemset(ptr_, byte, size_), "cudaMemset");
  return Status::Ok();
}

Result<Stream> Stream::Create() {
  Stream s;
  cudaStream_t raw = nullptr;
  KVWIRE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking),
                              "cudaStreamCreate");
  s.stream_ = reinterpret_cast<StreamHandle>(raw);
  return s;
}

Stream::~Stream() {
  if (stream_ != nullptr) cudaStreamDestroy(Raw(stream_));
}

Stream::Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(Raw(stream_));
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

Status Stream::Synchronize() const {
  KVWIRE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(Raw(stream_)), "cudaStreamSynchronize");
  return Status::Ok();
}

// ---- the codec -----------------------------------------------------------------------------

struct CudaCodec::Impl {
  Kind kind = Kind::kInt8;
  std::string spec;
  uint16_t id = 0;
  uint32_t bits = 0, group = 1, window = 0;  // kivi
  DeviceBuffer errors;                       // one uint32_t of kern::ErrorBits

  Status CheckShape(const ChunkDesc& d) const {
    KVWIRE_RETURN_ERROR_IF(d.kv_heads == 0 || d.kv_heads > kMaxKvHeads || d.head_dim == 0 ||
                               d.head_dim > kMaxHeadDim || d.tokens > kMaxTokens,
                           kInvalidArgument,
                           spec + ": chunk shape [" + std::to_string(d.tokens) + ", " +
                               std::to_string(d.kv_heads) + ", " + std::to_string(d.head_dim) +
                               "] outside the supported bounds");
    // Kernels index chunk elements with 32-bit token/column counters and 64-bit offsets; keep
    // the element count where every intermediate is exact.
    KVWIRE_RETURN_ERROR_IF(d.elements() >= (uint64_t{1} << 32), kInvalidArgument,
                           spec + ": chunk of " + std::to_string(d.elements()) +
                               " elements; split it (at most 2^32 - 1)");
    if (kind == Kind::kQ8_0 || kind == Kind::kQ4_0) {
      KVWIRE_RETURN_ERROR_IF(
          d.head_dim % blocks::kQK != 0, kInvalidArgument,
          spec + " needs head_dim divisible by 32, got " + std::to_string(d.head_dim));
    }
    if (kind == Kind::kKivi) {
      KVWIRE_RETURN_ERROR_IF(d.kind == KvKind::kValue && d.head_dim % group != 0, kInvalidArgument,
                             spec +
                                 ": values are grouped along head_dim, which must be a "
                                 "multiple of g=" +
                                 std::to_string(group));
      KVWIRE_RETURN_ERROR_IF(uint64_t{d.token_begin} + d.tokens > d.seq_tokens, kInvalidArgument,
                             spec +
                                 ": chunk ends after seq_tokens=" + std::to_string(d.seq_tokens) +
                                 " (the window rule needs the sequence length)");
      const uint32_t tq = QuantTokens(d);
      KVWIRE_RETURN_ERROR_IF(
          tq % group != 0, kInvalidArgument,
          spec + ": chunk at token " + std::to_string(d.token_begin) +
              " is not aligned to the group of " + std::to_string(group) + " tokens");
    }
    return Status::Ok();
  }

  uint32_t QuantTokens(const ChunkDesc& d) const {
    return kern::KiviQuantTokens(d.seq_tokens, d.token_begin, d.tokens, group, window);
  }

  kern::KiviParams Kivi(const ChunkDesc& d) const {
    kern::KiviParams k;
    k.bits = bits;
    k.group = group;
    k.key = d.kind == KvKind::kKey;
    k.quant_tokens = QuantTokens(d);
    k.lead_tokens = kern::KiviLeadTokens(d.token_begin, d.tokens, group);
    return k;
  }

  uint64_t Bytes(const ChunkDesc& d) const {
    switch (kind) {
      case Kind::kInt8:
        return kern::Int8PayloadBytes(d.tokens, d.kv_heads, d.head_dim);
      case Kind::kQ8_0:
        return kern::Q8_0PayloadBytes(d.tokens, d.kv_heads, d.head_dim);
      case Kind::kQ4_0:
        return kern::Q4_0PayloadBytes(d.tokens, d.kv_heads, d.head_dim);
      case Kind::kKivi:
        return kern::KiviLayoutOf(d.tokens, d.kv_heads * d.head_dim, Kivi(d)).bytes;
    }
    return 0;
  }

  // Checks `t` against the chunk and returns the kernels' view of it and the token range.
  Status Resolve(const ChunkDesc& d, const DeviceKvTensor& t, std::string_view role,
                 kern::KvTensor* out, kern::TokenRange* range) const {
    const std::string who = spec + ": " + std::string(role);
    KVWIRE_RETURN_ERROR_IF(t.kv_heads != d.kv_heads || t.head_dim != d.head_dim, kInvalidArgument,
                           who + " has [" + std::to_string(t.kv_heads) + ", " +
                               std::to_string(t.head_dim) + "] heads x dims, the chunk [" +
                               std::to_string(d.kv_heads) + ", " + std::to_string(d.head_dim) +
                               "]");
    KVWIRE_RETURN_ERROR_IF(
        t.dtype != DType::kF32 && t.dtype != DType::kF16 && t.dtype != DType::kBF16,
        kInvalidArgument, who + " has an unknown dtype");
    KVWIRE_RETURN_ERROR_IF(d.token_begin < t.first_token ||
                               uint64_t{d.token_begin - t.first_token} + d.tokens > t.tokens,
                           kInvalidArgument,
                           who + " holds sequence tokens [" + std::to_string(t.first_token) + ", " +
                               std::to_string(uint64_t{t.first_token} + t.tokens) +
                               "), the chunk needs [" + std::to_string(d.token_begin) + ", " +
                               std::to_string(uint64_t{d.token_begin} + d.tokens) + ")");
    if (d.tokens > 0) {
      KVWIRE_RETURN_IF_ERROR(CheckDevicePointer(t.data, who + " data"));
      KVWIRE_RETURN_ERROR_IF(reinterpret_cast<uintptr_t>(t.data) % DTypeSize(t.dtype) != 0,
                             kInvalidArgument, who + " data is not aligned to its dtype");
      if (t.block_size > 0) {
        KVWIRE_RETURN_ERROR_IF(t.num_blocks == 0, kInvalidArgument, who + ": paged with 0 blocks");
        KVWIRE_RETURN_IF_ERROR(CheckDevicePointer(t.block_table, who + " block table"));
      }
    }
    out->data = t.data;
    out->block_table = t.block_table;
    out->tokens = t.tokens;
    out->kv_heads = t.kv_heads;
    out->head_dim = t.head_dim;
    out->block_size = t.block_size;
    out->num_blocks = t.num_blocks;
    out->type = static_cast<kern::ElemType>(t.dtype);
    range->token_begin = d.token_begin - t.first_token;
    range->tokens = d.tokens;
    return Status::Ok();
  }
};

CudaCodec::CudaCodec(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaCodec::~CudaCodec() = default;

Result<std::unique_ptr<CudaCodec>> CudaCodec::Create(std::string_view spec) {
  std::string family;
  CodecOptions family_opts;
  KVWIRE_RETURN_IF_ERROR(ParseCodecSpec(spec, &family, &family_opts));
  KVWIRE_RETURN_ERROR_IF(family.rfind("fraqtl", 0) == 0, kUnsupported,
                         family + ": no CUDA kernels yet (planned, see kernels/README.md)");
  // The CPU registry parses and canonicalizes the spec: both sides then agree by construction.
  KVWIRE_ASSIGN_OR_RETURN(std::unique_ptr<Codec> cpu, CreateCodec(spec));
  auto impl = std::make_unique<Impl>();
  impl->spec = cpu->Spec();
  impl->id = cpu->Id();
  switch (impl->id) {
    case baseline::kIdInt8:
      impl->kind = Kind::kInt8;
      break;
    case baseline::kIdQ8_0:
      impl->kind = Kind::kQ8_0;
      break;
    case baseline::kIdQ4_0:
      impl->kind = Kind::kQ4_0;
      break;
    case baseline::kIdKivi: {
      impl->kind = Kind::kKivi;
      std::string name;
      CodecOptions opts;
      KVWIRE_RETURN_IF_ERROR(ParseCodecSpec(impl->spec, &name, &opts));
      impl->bits = static_cast<uint32_t>(std::stoul(name.substr(4)));  // "kivi<b>", validated
      KVWIRE_ASSIGN_OR_RETURN(const int64_t g, opts.GetInt("g", 32, 1, kMaxHeadDim));
      KVWIRE_ASSIGN_OR_RETURN(const int64_t r, opts.GetInt("r", 32, 0, kMaxTokens));
      impl->group = static_cast<uint32_t>(g);
      impl->window = static_cast<uint32_t>(r);
      KVWIRE_RETURN_ERROR_IF(impl->group != cpu->TokenAlignment(), kInternal,
                             impl->spec + ": group disagrees with the CPU codec");
      break;
    }
    default:
      return Status(StatusCode::kUnsupported,
                    impl->spec +
                        ": no CUDA kernels for this codec (CUDA has: int8, q8_0, q4_0, "
                        "kivi<b>; fraqtl is planned, see kernels/README.md)");
  }
  std::string reason;
  KVWIRE_RETURN_ERROR_IF(!IsCudaAvailable(&reason), kUnsupported, "no CUDA device: " + reason);
  KVWIRE_ASSIGN_OR_RETURN(impl->errors, DeviceBuffer::Allocate(sizeof(uint32_t)));
  KVWIRE_RETURN_IF_ERROR(impl->errors.Fill(0));
  return std::unique_ptr<CudaCodec>(new CudaCodec(std::move(impl)));
}

std::string CudaCodec::Spec() const { return impl_->spec; }
uint16_t CudaCodec::Id() const { return impl_->id; }
uint32_t CudaCodec::TokenAlignment() const { return impl_->kind == Kind::kKivi ? impl_->group : 1; }

Result<uint64_t> CudaCodec::PayloadBytes(const ChunkDesc& desc) const {
  KVWIRE_RETURN_IF_ERROR(impl_->CheckShape(desc));
  return impl_->Bytes(desc);
}

Status CudaCodec::EncodeChunk(const ChunkDesc& desc, const DeviceKvTensor& src, void* payload,
                              uint64_t capacity, StreamHandle stream) const {
  KVWIRE_RETURN_IF_ERROR(impl_->CheckShape(desc));
  kern::KvTensor x;
  kern::TokenRange range;
  KVWIRE_RETURN_IF_ERROR(impl_->Resolve(desc, src, "source", &x, &range));
  const uint64_t bytes = impl_->Bytes(desc);
  KVWIRE_RETURN_ERROR_IF(capacity < bytes, kInvalidArgument,
                         impl_->spec + ": payload buffer of " + std::to_string(capacity) +
                             " bytes, the chunk needs " + std::to_string(bytes));
  if (bytes == 0) return Status::Ok();
  KVWIRE_RETURN_IF_ERROR(CheckDevicePointer(payload, impl_->spec + ": payload"));
  auto* p = static_cast<uint8_t*>(payload);
  auto* err = impl_->errors.as<uint32_t>();
  switch (impl_->kind) {
    case Kind::kInt8:
      return kern::LaunchInt8Encode(x, range, p, err, Raw(stream));
    case Kind::kQ8_0:
      return kern::LaunchQ8_0Encode(x, range, p, err, Raw(stream));
    case Kind::kQ4_0:
      return kern::LaunchQ4_0Encode(x, range, p, err, Raw(stream));
    case Kind::kKivi:
      return kern::LaunchKiviEncode(x, range, impl_->Kivi(desc), p, err, Raw(stream));
  }
  return Status(StatusCode::kInternal, "unreachable");
}

Status CudaCodec::DecodeChunk(const ChunkDesc& desc, const void* payload, uint64_t payload_bytes,
                              const DeviceKvTensor& dst, StreamHandle stream) const {
  KVWIRE_RETURN_IF_ERROR(impl_->CheckShape(desc));
  kern::KvTensor y;
  kern::TokenRange range;
  KVWIRE_RETURN_IF_ERROR(impl_->Resolve(desc, dst, "destination", &y, &range));
  const uint64_t bytes = impl_->Bytes(desc);
  KVWIRE_RETURN_ERROR_IF(payload_bytes != bytes, kCorrupt,
                         impl_->spec + ": payload of " + std::to_string(payload_bytes) +
                             " bytes, expected " + std::to_string(bytes));
  if (bytes == 0) return Status::Ok();
  KVWIRE_RETURN_IF_ERROR(CheckDevicePointer(payload, impl_->spec + ": payload"));
  const auto* p = static_cast<const uint8_t*>(payload);
  auto* err = impl_->errors.as<uint32_t>();
  switch (impl_->kind) {
    case Kind::kInt8:
      return kern::LaunchInt8Decode(p, y, range, err, Raw(stream));
    case Kind::kQ8_0:
      return kern::LaunchQ8_0Decode(p, y, range, err, Raw(stream));
    case Kind::kQ4_0:
      return kern::LaunchQ4_0Decode(p, y, range, err, Raw(stream));
    case Kind::kKivi:
      return kern::LaunchKiviDecode(p, y, range, impl_->Kivi(desc), err, Raw(stream));
  }
  return Status(StatusCode::kInternal, "unreachable");
}

Status CudaCodec::Wait(StreamHandle stream) const {
  KVWIRE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(Raw(stream)), impl_->spec + ": kernels");
  uint32_t bits = 0;
  KVWIRE_RETURN_IF_ERROR(impl_->errors.CopyToHost(&bits, sizeof(bits)));
  if (bits == 0) return Status::Ok();
  KVWIRE_RETURN_IF_ERROR(impl_->errors.Fill(0));
  if (bits & (kern::kErrBadScale | kern::kErrBadHeader)) {
    return Status(StatusCode::kCorrupt,
                  impl_->spec + ((bits & kern::kErrBadHeader)
                                     ? ": payload header disagrees with the chunk"
                                     : ": a scale, min or fp16 value in the payload is invalid"));
  }
  if (bits & kern::kErrNonFinite) {
    return Status(StatusCode::kInvalidArgument, impl_->spec + ": non-finite input value");
  }
  return Status(StatusCode::kInvalidArgument,
                impl_->spec + ": a block table entry is outside [0, num_blocks)");
}

std::vector<std::string> CudaCodecSpecs() { return {"int8", "q8_0", "q4_0", "kivi2", "kivi4"}; }

}  // namespace kvwire::cuda
