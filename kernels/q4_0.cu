// q4_0 encode/decode kernels: one warp per block of 32 values, lane j <-> value j
// (format and recipe in q4_0.cuh).
#include "launch_util.cuh"
#include "q4_0.cuh"

namespace kvwire::kern {
namespace {

constexpr uint32_t kBlockBytes = sizeof(blocks::BlockQ4_0);
constexpr uint32_t kFull = 0xffffffffu;

// payload: BlockQ4_0 [tokens, kv_heads, head_dim / 32]
__global__ void Q4_0EncodeKernel(KvTensor src, TokenRange range, uint8_t* payload,
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
    // The value of largest magnitude, the lowest lane on ties (the scalar loop's "first").
    const float amax = WarpMax(fabsf(x));
    const unsigned at_max = __ballot_sync(kFull, fabsf(x) == amax);
    const float first = __shfl_sync(kFull, x, __ffs(at_max) - 1);
    const float max = amax == 0.0f ? 0.0f : first;
    const Q4_0Scale s = Q4_0ScaleOf(max);
    const uint32_t q = QuantizeQ4_0Value(x, s.id);
    const uint32_t hi = __shfl_down_sync(kFull, q, blocks::kQK / 2);
    uint8_t* p = payload + i * kBlockBytes;
    if (lane == 0) kmath::StoreU16(p, kmath::FloatToHalfBits(s.d));
    if (lane < blocks::kQK / 2) p[2 + lane] = static_cast<uint8_t>(q | (hi << 4));
  }
}

__global__ void Q4_0DecodeKernel(const uint8_t* payload, KvTensor dst, TokenRange range,
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
    const uint8_t byte = p[2 + lane % (blocks::kQK / 2)];
    const int32_t q = lane < blocks::kQK / 2 ? (byte & 0x0f) : (byte >> 4);
    StoreElem(dst, row + (i % per_row) * blocks::kQK + lane,
              kmath::Mul(static_cast<float>(q - 8), kmath::HalfBitsToFloat(d_h)));
  }
}

}  // namespace

Status LaunchQ4_0Encode(const KvTensor& src, TokenRange range, uint8_t* payload, uint32_t* errors,
                        cudaStream_t stream) {
  const uint64_t n = uint64_t{range.tokens} * (src.row_elems() / blocks::kQK);
  if (n == 0) return Status::Ok();
  Q4_0EncodeKernel<<<GridFor(n, kWarpsPerBlock), kThreads, 0, stream>>>(src, range, payload,
                                                                        errors);
  return LaunchStatus("q4_0 encode");
}

Status LaunchQ4_0Decode(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                        uint32_t* errors, cudaStream_t stream) {
  const uint64_t n = uint64_t{range.tokens} * (dst.row_elems() / blocks::kQK);
  if (n == 0) return Status::Ok();
  Q4_0DecodeKernel<<<GridFor(n, kWarpsPerBlock), kThreads, 0, stream>>>(payload, dst, range,
                                                                        errors);
  return LaunchStatus("q4_0 decode");
}

}  // namespace kvwire::kern
