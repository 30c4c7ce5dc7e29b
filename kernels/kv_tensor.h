// KvTensor: where one (layer, K|V) tensor of a KV cache lives, in the layouts inference engines
// use (kvwire/kv_view.h), as a POD that kernels take by value and `_ref` functions use on
// host memory. The same struct describes device memory (kernels) and host memory (references).
//
//   contiguous (block_size == 0):  data = [tokens, kv_heads, head_dim]
//   paged      (block_size  > 0):  data = [num_blocks, block_size, kv_heads, head_dim]
//                                  block_table = [ceil(tokens / block_size)] block ids
// View token t (0-based) lives in row t (contiguous) or in block block_table[t / block_size],
// slot t % block_size (paged). Element (t, h, d) of the row is at h * head_dim + d.
//
// Kernels do not trust block ids: an id outside [0, num_blocks) makes the access a no-op and
// raises kErrBadBlock in the error word (reads return 0).
#pragma once

#include <cstdint>

#include "quant_math.h"

namespace kvwire::kern {

/// Element types of a KV tensor (numbering of kvwire::DType).
enum class ElemType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

struct KvTensor {
  void* data = nullptr;                  // see the layouts above
  const int32_t* block_table = nullptr;  // paged only: [ceil(tokens / block_size)]
  uint32_t tokens = 0;                   // view tokens addressable
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t block_size = 0;  // 0 = contiguous
  uint32_t num_blocks = 0;  // paged only
  ElemType type = ElemType::kF16;

  KVWIRE_HD uint32_t row_elems() const { return kv_heads * head_dim; }
};

/// Bits of the error word that kernels (and references) OR in; 0 = no error.
enum ErrorBits : uint32_t {
  kErrBadBlock = 1u << 0,   // a block table entry outside [0, num_blocks)
  kErrNonFinite = 1u << 1,  // encode: a non-finite input value (the CPU codec refuses it)
  kErrBadScale = 1u << 2,   // decode: a scale/min/window value the CPU decoder rejects
  kErrBadHeader = 1u << 3,  // decode: a kivi Tq header that disagrees with the expected Tq
};

/// Element offset of the start of view token t's row, or -1 for a bad block id.
KVWIRE_HD inline int64_t RowOffset(const KvTensor& x, uint32_t t) {
  const uint64_t row = x.row_elems();
  if (x.block_size == 0) return static_cast<int64_t>(uint64_t{t} * row);
  const int32_t block = x.block_table[t / x.block_size];
  if (block < 0 || static_cast<uint32_t>(block) >= x.num_blocks) return -1;
  return static_cast<int64_t>((uint64_t(uint32_t(block)) * x.block_size + t % x.block_size) * row);
}

/// ORs `bit` into the error word (`errors` may be null: errors are then dropped).
KVWIRE_HD inline void RaiseError(uint32_t* errors, uint32_t bit) {
  if (errors == nullptr) return;
#if defined(__CUDA_ARCH__)
  atomicOr(errors, bit);
#else
  *errors |= bit;
#endif
}

KVWIRE_HD inline float LoadElem(const KvTensor& x, int64_t offset) {
  switch (x.type) {
    case ElemType::kF32:
      return static_cast<const float*>(x.data)[offset];
    case ElemType::kF16:
      return kmath::HalfBitsToFloat(static_cast<const uint16_t*>(x.data)[offset]);
    default:
      return kmath::Bf16BitsToFloat(static_cast<const uint16_t*>(x.data)[offset]);
  }
}

/// Stores `v` rounded to the tensor's type (round to nearest even, as KvView::WriteF32).
KVWIRE_HD inline void StoreElem(const KvTensor& x, int64_t offset, float v) {
  switch (x.type) {
    case ElemType::kF32:
      static_cast<float*>(x.data)[offset] = v;
      break;
    case ElemType::kF16:
      static_cast<uint16_t*>(x.data)[offset] = kmath::FloatToHalfBits(v);
      break;
    default:
      static_cast<uint16_t*>(x.data)[offset] = kmath::FloatToBf16Bits(v);
      break;
  }
}

/// Element i of view token t's row; 0 (and kErrBadBlock) when the token's block id is bad.
KVWIRE_HD inline float LoadAt(const KvTensor& x, uint32_t t, uint32_t i, uint32_t* errors) {
  const int64_t row = RowOffset(x, t);
  if (row < 0) {
    RaiseError(errors, kErrBadBlock);
    return 0.0f;
  }
  return LoadElem(x, row + i);
}

/// Stores element i of view token t's row; a no-op (and kErrBadBlock) for a bad block id.
KVWIRE_HD inline void StoreAt(const KvTensor& x, uint32_t t, uint32_t i, float v,
                              uint32_t* errors) {
  const int64_t row = RowOffset(x, t);
  if (row < 0) {
    RaiseError(errors, kErrBadBlock);
    return;
  }
  StoreElem(x, row + i, v);
}

/// Which tokens of a view a chunk covers: view tokens [token_begin, token_begin + tokens).
struct TokenRange {
  uint32_t token_begin = 0;
  uint32_t tokens = 0;
};

}  // namespace kvwire::kern
