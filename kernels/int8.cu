// int8 encode/decode kernels: one warp per (token, head) row (layout and recipe in int8.cuh).
#include "int8.cuh"
#include "launch_util.cuh"

namespace kvwire::kern {
namespace {

// payload: fp16 scales [rows], then int8 q [rows, head_dim]; rows = tokens * kv_heads
__global__ void Int8EncodeKernel(KvTensor src, TokenRange range, uint8_t* payload,
                                 uint32_t* errors) {
  const uint32_t lane = threadIdx.x % 32;
  const uint64_t rows = uint64_t{range.tokens} * src.kv_heads;
  const uint32_t d = src.head_dim;
  int8_t* q = reinterpret_cast<int8_t*>(payload + 2 * rows);
  for (uint64_t r = uint64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32; r < rows;
       r += uint64_t{gridDim.x} * kWarpsPerBlock) {
    const uint32_t t = range.token_begin + static_cast<uint32_t>(r / src.kv_heads);
    const uint32_t h0 = static_cast<uint32_t>(r % src.kv_heads) * d;
    const int64_t row = RowOffset(src, t);  // same for every lane: the row is skipped as a whole
    if (row < 0) {
      if (lane == 0) RaiseError(errors, kErrBadBlock);
    }
    float amax = 0.0f;
    bool bad = false;
    for (uint32_t j = lane; j < d; j += 32) {
      const float x = row < 0 ? 0.0f : LoadElem(src, row + h0 + j);
      bad |= !isfinite(x);
      amax = fmaxf(amax, fabsf(x));
    }
    amax = WarpMax(amax);
    if (WarpAny(bad) && lane == 0) RaiseError(errors, kErrNonFinite);
    const uint16_t scale_h = Int8ScaleOf(amax);
    if (lane == 0) kmath::StoreU16(payload + 2 * r, scale_h);
    const float scale = kmath::HalfBitsToFloat(scale_h);
    const float div = scale > 0.0f ? scale : 1.0f;
    for (uint32_t j = lane; j < d; j += 32) {
      const float x = row < 0 ? 0.0f : LoadElem(src, row + h0 + j);
      q[r * d + j] = kmath::QuantizeSymmetric127(x, div);
    }
  }
}

__global__ void Int8DecodeKernel(const uint8_t* payload, KvTensor dst, TokenRange range,
                                 uint32_t* errors) {
  const uint32_t lane = threadIdx.x % 32;
  const uint64_t rows = uint64_t{range.tokens} * dst.kv_heads;
  const uint32_t d = dst.head_dim;
  const int8_t* q = reinterpret_cast<const int8_t*>(payload + 2 * rows);
  for (uint64_t r = uint64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32; r < rows;
       r += uint64_t{gridDim.x} * kWarpsPerBlock) {
    const uint16_t scale_h = kmath::LoadU16(payload + 2 * r);
    if (!kmath::HalfIsScale(scale_h)) {
      if (lane == 0) RaiseError(errors, kErrBadScale);
      continue;
    }
    const uint32_t t = range.token_begin + static_cast<uint32_t>(r / dst.kv_heads);
    const int64_t row = RowOffset(dst, t);
    if (row < 0) {
      if (lane == 0) RaiseError(errors, kErrBadBlock);
      continue;
    }
    const float scale = kmath::HalfBitsToFloat(scale_h);
    const int64_t base = row + static_cast<int64_t>(r % dst.kv_heads) * d;
    for (uint32_t j = lane; j < d; j += 32) {
      StoreElem(dst, base + j, kmath::Mul(static_cast<float>(q[r * d + j]), scale));
    }
  }
}

}  // namespace

Status LaunchInt8Encode(const KvTensor& src, TokenRange range, uint8_t* payload, uint32_t* errors,
                        cudaStream_t stream) {
  const uint64_t rows = uint64_t{range.tokens} * src.kv_heads;
  if (rows == 0) return Status::Ok();
  Int8EncodeKernel<<<GridFor(rows, kWarpsPerBlock), kThreads, 0, stream>>>(src, range, payload,
                                                                           errors);
  return LaunchStatus("int8 encode");
}

Status LaunchInt8Decode(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                        uint32_t* errors, cudaStream_t stream) {
  const uint64_t rows = uint64_t{range.tokens} * dst.kv_heads;
  if (rows == 0) return Status::Ok();
  Int8DecodeKernel<<<GridFor(rows, kWarpsPerBlock), kThreads, 0, stream>>>(payload, dst, range,
                                                                           errors);
  return LaunchStatus("int8 decode");
}

}  // namespace kvwire::kern
