// Device-side helpers of the launchers: grid sizing for grid-stride loops, warp reductions, and
// the translation of a CUDA launch error into a Status. Included by .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kvwire/status.h"

namespace kvwire::kern {

inline constexpr int kThreads = 256;  // threads per block of every kernel here
inline constexpr int kWarpsPerBlock = kThreads / 32;
inline constexpr uint64_t kMaxGrid = 1u << 16;  // grid-stride loops cover the rest

/// Blocks for `items` work items of `per_block` items each (at least 1, at most kMaxGrid).
inline unsigned GridFor(uint64_t items, uint64_t per_block) {
  uint64_t blocks = (items + per_block - 1) / per_block;
  if (blocks == 0) blocks = 1;
  return static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid);
}

/// Status of the launch just made on this thread (asynchronous errors surface at sync).
inline Status LaunchStatus(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return Status::Ok();
  return Status(StatusCode::kInternal,
                std::string(kernel) + ": launch failed: " + cudaGetErrorString(err));
}

__device__ inline float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ inline float WarpMin(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ inline bool WarpAny(bool v) { return __any_sync(0xffffffffu, v); }

}  // namespace kvwire::kern
