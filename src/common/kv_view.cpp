#include "kvwire/kv_view.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <new>

#include <cmath>
#include <cstring>

#include "common/fp16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvwire {

namespace {

// Rows of fp16 to float and back: F16C where the CPU has it, eight values at a time, with the
// same results as HalfToFloatFast / FloatToHalfFast (groups holding a NaN take the scalar path,
// whose NaN payloads F16C does not reproduce).
#if defined(__x86_64__)
bool HaveF16c() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  }();
  return have;
}

__attribute__((target("avx2,f16c"))) void HalvesToFloatsF16c(const uint16_t* in, size_t n,
                                                           float* out) {
  size_t i = 0;
  const __m128i abs_mask = _mm_set1_epi16(0x7fff);
  const __m128i inf = _mm_set1_epi16(0x7c00);
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    // (h & 0x7fff) > 0x7c00 (signed compare is fine: both sides below 2^15): a NaN
    if (_mm_movemask_epi8(_mm_cmpgt_epi16(_mm_and_si128(h, abs_mask), inf)) != 0) {
      for (size_t j = i; j < i + 8; ++j) out[j] = HalfToFloatFast(in[j]);
      continue;
    }
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) out[i] = HalfToFloatFast(in[i]);
}

__attribute__((target("avx2,f16c"))) void FloatsToHalvesF16c(const float* in, size_t n,
                                                           uint16_t* out) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(in + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
      for (size_t j = i; j < i + 8; ++j) out[j] = FloatToHalfFast(in[j]);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = FloatToHalfFast(in[i]);
}
#endif

void HalvesToFloats(const uint16_t* in, size_t n, float* out) {
#if defined(__x86_64__)
  if (HaveF16c()) return HalvesToFloatsF16c(in, n, out);
#endif
  for (size_t i = 0; i < n; ++i) out[i] = HalfToFloatFast(in[i]);
}

void FloatsToHalves(const float* in, size_t n, uint16_t* out) {
#if defined(__x86_64__)
  if (HaveF16c()) return FloatsToHalvesF16c(in, n, out);
#endif
  for (size_t i = 0; i < n; ++i) out[i] = FloatToHalfFast(in[i]);
}

}  // namespace

size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
  }
  return "?";
}

Result<DType> ParseDType(std::string_view name) {
  if (name == "f32" || name == "fp32" || name == "float32" || name == "F32") return DType::kF32;
  if (name == "f16" || name == "fp16" || name == "float16" || name == "F16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16" || name == "BF16") return DType::kBF16;
  return Status(StatusCode::kInvalidArgument,
                "unknown dtype '" + std::string(name) + "' (expected f32, f16 or bf16)");
}

Status ValidateShape(const KvShape& s) {
  auto bad = [&](const char* what, uint32_t v, uint32_t max) {
    return Status(StatusCode::kInvalidArgument, std::string(what) + " = " + std::to_string(v) +
                                                    " out of range [1, " + std::to_string(max) + "]");
  };
  if (s.layers == 0 || s.layers > kMaxLayers) return bad("layers", s.layers, kMaxLayers);
  if (s.tokens == 0 || s.tokens > kMaxTokens) return bad("tokens", s.tokens, kMaxTokens);
  if (s.kv_heads == 0 || s.kv_heads > kMaxKvHeads) return bad("kv_heads", s.kv_heads, kMaxKvHeads);
  if (s.head_dim == 0 || s.head_dim > kMaxHeadDim) return bad("head_dim", s.head_dim, kMaxHeadDim);
  return Status::Ok();
}

Result<KvView> KvView::Contiguous(const KvShape& shape, DType dtype, std::vector<void*> k,
                                  std::vector<void*> v) {
  KVWIRE_RETURN_IF_ERROR(ValidateShape(shape));
  KVWIRE_RETURN_ERROR_IF(k.size() != shape.layers || v.size() != shape.layers, kInvalidArgument,
                         "KvView: need one K and one V pointer per layer");
  for (uint32_t l = 0; l < shape.layers; ++l) {
    KVWIRE_RETURN_ERROR_IF(!k[l] || !v[l], kInvalidArgument,
                           "KvView: null pointer for layer " + std::to_string(l));
  }
  KvView view;
  view.shape_ = shape;
  view.dtype_ = dtype;
  view.k_ = std::move(k);
  view.v_ = std::move(v);
  return view;
}

Result<KvView> KvView::Paged(const KvShape& shape, DType dtype, uint32_t block_size,
                             uint32_t num_blocks, std::vector<void*> k, std::vector<void*> v,
                             std::span<const int32_t> block_table) {
  KVWIRE_RETURN_ERROR_IF(block_size == 0, kInvalidArgument, "KvView: block_size must be > 0");
  KVWIRE_ASSIGN_OR_RETURN(KvView view, Contiguous(shape, dtype, std::move(k), std::move(v)));
  const uint64_t needed = (uint64_t{shape.tokens} + block_size - 1) / block_size;
  KVWIRE_RETURN_ERROR_IF(block_table.size() < needed, kInvalidArgument,
                         "KvView: block table has " + std::to_string(block_table.size()) +
                             " entries, " + std::to_string(needed) + " needed");
  for (uint64_t i = 0; i < needed; ++i) {
    KVWIRE_RETURN_ERROR_IF(block_table[i] < 0 || static_cast<uint32_t>(block_table[i]) >= num_blocks,
                           kInvalidArgument,
                           "KvView: block table entry " + std::to_string(i) + " = " +
                               std::to_string(block_table[i]) + " outside [0, " +
                               std::to_string(num_blocks) + ")");
  }
  view.block_size_ = block_size;
  view.num_blocks_ = num_blocks;
  view.block_table_.assign(block_table.begin(), block_table.begin() + needed);
  return view;
}

void* KvView::Row(uint32_t layer, KvKind kind, uint32_t token) const {
  auto* base = static_cast<uint8_t*>(kind == KvKind::kKey ? k_[layer] : v_[layer]);
  size_t slot = token;
  if (block_size_ != 0) {
    slot = size_t(block_table_[token / block_size_]) * block_size_ + token % block_size_;
  }
  return base + slot * row_bytes();
}

namespace {

Status CheckRange(const KvShape& s, uint32_t layer, uint32_t begin, uint32_t tokens) {
  KVWIRE_RETURN_ERROR_IF(layer >= s.layers, kInvalidArgument,
                         "layer " + std::to_string(layer) + " >= " + std::to_string(s.layers));
  KVWIRE_RETURN_ERROR_IF(uint64_t{begin} + tokens > s.tokens, kInvalidArgument,
                         "tokens [" + std::to_string(begin) + ", " +
                             std::to_string(uint64_t{begin} + tokens) + ") exceed " +
                             std::to_string(s.tokens));
  return Status::Ok();
}

}  // namespace

Status KvView::ReadF32(uint32_t layer, KvKind kind, uint32_t token_begin, uint32_t tokens,
                       float* out) const {
  KVWIRE_RETURN_IF_ERROR(CheckRange(shape_, layer, token_begin, tokens));
  const size_t n = size_t{shape_.kv_heads} * shape_.head_dim;
  for (uint32_t t = 0; t < tokens; ++t) {
    const void* row = Row(layer, kind, token_begin + t);
    float* dst = out + size_t{t} * n;
    switch (dtype_) {
      case DType::kF32:
        std::memcpy(dst, row, n * 4);
        break;
      case DType::kF16:
        HalvesToFloats(static_cast<const uint16_t*>(row), n, dst);
        break;
      case DType::kBF16: {
        const auto* src = static_cast<const uint16_t*>(row);
        for (size_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(src[i]);
        break;
      }
    }
  }
  return Status::Ok();
}

Status KvView::WriteF32(uint32_t layer, KvKind kind, uint32_t token_begin, uint32_t tokens,
                        const float* in) const {
  KVWIRE_RETURN_IF_ERROR(CheckRange(shape_, layer, token_begin, tokens));
  const size_t n = size_t{shape_.kv_heads} * shape_.head_dim;
  for (uint32_t t = 0; t < tokens; ++t) {
    void* row = Row(layer, kind, token_begin + t);
    const float* src = in + size_t{t} * n;
    switch (dtype_) {
      case DType::kF32:
        std::memcpy(row, src, n * 4);
        break;
      case DType::kF16:
        FloatsToHalves(src, n, static_cast<uint16_t*>(row));
        break;
      case DType::kBF16: {
        auto* dst = static_cast<uint16_t*>(row);
        for (size_t i = 0; i < n; ++i) dst[i] = FloatToBf16(src[i]);
        break;
      }
    }
  }
  return Status::Ok();
}

namespace {

// Calls copy(row, bytes, i) for maximal runs of rows of (layer, kind) that lie back to back in
// memory; i is the run's first token relative to token_begin.
template <typename Copy>
void ForEachRowRun(const KvView& v, uint32_t layer, KvKind kind, uint32_t token_begin,
                   uint32_t tokens, Copy copy) {
  const size_t row = v.row_bytes();
  uint32_t t = 0;
  while (t < tokens) {
    auto* start = static_cast<uint8_t*>(v.Row(layer, kind, token_begin + t));
    uint32_t run = 1;
    while (t + run < tokens && v.Row(layer, kind, token_begin + t + run) == start + run * row) ++run;
    copy(start, run * row, t);
    t += run;
  }
}

}  // namespace

Status KvView::ReadRaw(uint32_t layer, KvKind kind, uint32_t token_begin, uint32_t tokens,
                       uint8_t* out) const {
  KVWIRE_RETURN_IF_ERROR(CheckRange(shape_, layer, token_begin, tokens));
  const size_t row = row_bytes();
  ForEachRowRun(*this, layer, kind, token_begin, tokens,
                [&](const uint8_t* src, size_t bytes, uint32_t i) {
                  std::memcpy(out + size_t{i} * row, src, bytes);
                });
  return Status::Ok();
}

Status KvView::WriteRaw(uint32_t layer, KvKind kind, uint32_t token_begin, uint32_t tokens,
                        const uint8_t* in) const {
  KVWIRE_RETURN_IF_ERROR(CheckRange(shape_, layer, token_begin, tokens));
  const size_t row = row_bytes();
  ForEachRowRun(*this, layer, kind, token_begin, tokens,
                [&](uint8_t* dst, size_t bytes, uint32_t i) {
                  std::memcpy(dst, in + size_t{i} * row, bytes);
                });
  return Status::Ok();
}

Result<KvCache> KvCache::Create(const KvShape& shape, DType dtype, uint32_t q_heads) {
  KVWIRE_RETURN_IF_ERROR(ValidateShape(shape));
  KVWIRE_RETURN_ERROR_IF(q_heads > kMaxKvHeads, kInvalidArgument, "too many query heads");
  KvCache c;
  c.shape_ = shape;
  c.dtype_ = dtype;
  c.q_heads_ = q_heads;
  auto padded = [](size_t n) { return (n + 63) / 64 * 64; };
  c.tensor_bytes_ = shape.tensor_elements() * DTypeSize(dtype);
  c.q_bytes_ = size_t{shape.tokens} * q_heads * shape.head_dim * DTypeSize(dtype);
  c.layer_stride_ = 2 * padded(c.tensor_bytes_) + padded(c.q_bytes_);
  const size_t bytes = c.layer_stride_ * shape.layers;
  try {
    c.storage_ = std::unique_ptr<uint8_t, detail::ZeroedDeleter>(
        static_cast<uint8_t*>(detail::AllocateZeroed(bytes)), detail::ZeroedDeleter{bytes});
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kResourceExhausted,
                  "KvCache: cannot allocate " + std::to_string(bytes) + " bytes");
  }
  return c;
}

namespace detail {

// Blocks from this size on are mapped (and may become huge pages); below, calloc serves them.
constexpr size_t kMappedBytes = size_t{1} << 20;

void* AllocateZeroed(size_t bytes) {
  if (bytes < kMappedBytes) {
    void* p = std::calloc(bytes == 0 ? 1 : bytes, 1);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  // Map 2 MiB more than asked and keep the 2 MiB-aligned part: a huge page needs an aligned
  // 2 MiB of the mapping, so an unaligned one would lose up to two of them (and, for blocks of
  // a few MiB, most of its huge pages).
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t length = (bytes + page - 1) / page * page;
  void* m = ::mmap(nullptr, length + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  auto* base = static_cast<uint8_t*>(m);
  const auto at = reinterpret_cast<uintptr_t>(base);
  auto* p = reinterpret_cast<uint8_t*>((at + kHuge - 1) / kHuge * kHuge);
  if (p > base) ::munmap(base, static_cast<size_t>(p - base));
  uint8_t* end = base + length + kHuge;
  if (end > p + length) ::munmap(p + length, static_cast<size_t>(end - (p + length)));
#ifdef MADV_HUGEPAGE
  (void)::madvise(p, length, MADV_HUGEPAGE);  // advice only: 4 KiB pages work as well
#endif
  return p;
}

void FreeZeroed(void* p, size_t bytes) {
  if (p == nullptr) return;
  if (bytes < kMappedBytes) {
    std::free(p);
  } else {
    ::munmap(p, bytes);  // the whole pages of [p, p + bytes), as mapped above
  }
}

}  // namespace detail

KvCache::KvCache(const KvCache& other)
    : shape_(other.shape_),
      dtype_(other.dtype_),
      q_heads_(other.q_heads_),
      metadata_(other.metadata_),
      tensor_bytes_(other.tensor_bytes_),
      q_bytes_(other.q_bytes_),
      layer_stride_(other.layer_stride_) {
  if (other.storage_) {
    const size_t bytes = layer_stride_ * shape_.layers;
    storage_ = std::unique_ptr<uint8_t, detail::ZeroedDeleter>(
        static_cast<uint8_t*>(detail::AllocateZeroed(bytes)), detail::ZeroedDeleter{bytes});
    std::memcpy(storage_.get(), other.storage_.get(), bytes);
  }
}

KvCache& KvCache::operator=(const KvCache& other) {
  if (this != &other) *this = KvCache(other);
  return *this;
}

std::span<uint8_t> KvCache::tensor(uint32_t layer, KvKind kind) {
  const size_t at = layer * layer_stride_ + (kind == KvKind::kKey ? 0 : (tensor_bytes_ + 63) / 64 * 64);
  return {storage_.get() + at, tensor_bytes_};
}
std::span<const uint8_t> KvCache::tensor(uint32_t layer, KvKind kind) const {
  return const_cast<KvCache*>(this)->tensor(layer, kind);
}
std::span<uint8_t> KvCache::queries(uint32_t layer) {
  if (q_heads_ == 0) return {};
  return {storage_.get() + layer * layer_stride_ + 2 * ((tensor_bytes_ + 63) / 64 * 64), q_bytes_};
}
std::span<const uint8_t> KvCache::queries(uint32_t layer) const {
  return const_cast<KvCache*>(this)->queries(layer);
}

KvView KvCache::view() const {
  std::vector<void*> k(shape_.layers), v(shape_.layers);
  for (uint32_t l = 0; l < shape_.layers; ++l) {
    k[l] = const_cast<uint8_t*>(tensor(l, KvKind::kKey).data());
    v[l] = const_cast<uint8_t*>(tensor(l, KvKind::kValue).data());
  }
  auto r = KvView::Contiguous(shape_, dtype_, std::move(k), std::move(v));
  return r.ok() ? std::move(r).value() : KvView();
}

}  // namespace kvwire
