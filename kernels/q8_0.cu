// q8_0 encode/decode kernels: one warp per block of 32 values, lane j <-> value j
// (format and recipe in q8_0.cuh).
#include "launch_util.cuh"
#include "q8_0.cuh"

namespace kvwire::kern {
namespace {

constexpr uint32_t kBlockBytes = sizeof(blocks::BlockQ8_0);

// payload: BlockQ8_0 [tokens, kv_heads, head_dim / 32]
__global__ void Q8_0EncodeKernel(KvTensor src, TokenRange range, uint8_t* payload,
                                 uint32_t* errors) {
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t per_row = src.row_elems() / blocks::kQK;
  const uint64_t n = uint64_t{range.tokens} * per_row;
  for (uint64_t i = uint64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32; i < n;
       i += uint64_t{gridDim.x} * kWarpsPerBlock) {
    const uint32_t t = range.token_begin + static_cast<uint32_t>(i / per_row);
    const int64_t row = RowOffset(src, t);
    if (row < 0 && lane == 0) RaiseError(errors, kErrBadBlock);
    const float x = row < 0 ? 0.0f : LoadElem(src, row + (i % per_row) * blocks::kQK + lane);
    if (WarpAny(!isfinite(x)) && lane == 0) RaiseError(errors, kErrNonFinite);
    const float amax = WarpMax(fabsf(x));
    const Q8_0Scale s = Q8_0ScaleOf(amax);
    uint8_t* p = payload + i * kBlockBytes;
    if (lane == 0) kmath::StoreU16(p, kmath::FloatToHalfBits(s.d));
    p[2 + lane] = static_cast<uint8_t>(QuantizeQ8_0Value(x, s.id));
  }
}

__global__ void Q8_0DecodeKernel(const uint8_t* payload, KvTensor dst, TokenRange range,
                                 uint32_t* errors) {
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t per_row = dst.row_elems() / blocks::kQK;
  const uint64_t n = uint64_t{range.tokens} * per_row;
  for (uint64_t i = uint64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32; i < n;
       i += uint64_t{gridDim.x} * kWarpsPerBlock) {
    const uint8_t* p = payload + i * kBlockBytes;
    const uint16_t d_h = kmath::LoadU16(p);
    if (!kmath::HalfIsFinite(d_h)) {
      if (lane == 0) RaiseError(errors, kErrBadScale);
      continue;
    }
    const uint32_t t = range.token_begin + static_cast<uint32_t>(i / per_row);
    const int64_t row = RowOffset(dst, t);
    if (row < 0) {
      if (lane == 0) RaiseError(errors, kErrBadBlock);
      continue;
    }
    const float q = static_cast<float>(static_cast<int8_t>(p[2 + lane]));
    StoreElem(dst, row + (i % per_row) * blocks::kQK + lane,
              kmath::Mul(q, kmath::HalfBitsToFloat(d_h)));
  }
}

}  // namespace

Status LaunchQ8_0Encode(const KvTensor& src, TokenRange range, uint8_t* payload, uint32_t* errors,
                        cudaStream_t stream) {
  const uint64_t n = uint64_t{range.tokens} * (src.row_elems() / blocks::kQK);
  if (n == 0) return Status::Ok();
  Q8_0EncodeKernel<<<GridFor(n, kWarpsPerBlock), kThreads, 0, stream>>>(src, range, payload,
                                                                        errors);
  return LaunchStatus("q8_0 encode");
}

Status LaunchQ8_0Decode(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                        uint32_t* errors, cudaStream_t stream) {
  const uint64_t n = uint64_t{range.tokens} * (dst.row_elems() / blocks::kQK);
  if (n == 0) return Status::Ok();
  Q8_0DecodeKernel<<<GridFor(n, kWarpsPerBlock), kThreads, 0, stream>>>(payload, dst, range,
                                                                        errors);
  return LaunchStatus("q8_0 decode");
}

}  // namespace kvwire::kern
