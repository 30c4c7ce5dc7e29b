// kvwire/kv_view.h — non-owning views of a KV cache in the layouts inference engines use,
// and an owning contiguous KV cache for tools and tests.
//
// Logical layout: per layer l, K_l and V_l are [tokens, kv_heads, head_dim]; every read and
// write through a view converts between that packed order and the view's memory layout.
// Memory layouts (KvView::Strided describes all of them, without a gather):
//   contiguous: one base pointer per (layer, K|V) to [tokens, kv_heads, head_dim] (vLLM's
//               per-layer "NHD" for one sequence);
//   paged:      one base pointer per (layer, K|V) to blocks of block_size token slots, and one
//               block table shared by all layers: token t lives in block block_table[t /
//               block_size], slot t % block_size. Block, slot and head strides are free, so
//               vLLM's flash-attention cache (2, num_blocks, block_size, kv_heads, head_dim) in
//               NHD or HND stride order and FlashInfer's (num_blocks, 2, block_size, kv_heads,
//               head_dim) are described in place.
// The head_dim elements of one (token, head) are always contiguous. K is post-RoPE as cached.
//
// Thread-safety: a KvView is an immutable description; reading concurrently is safe, writing
// different (layer, K|V, token ranges) concurrently is safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvwire/status.h"

namespace kvwire {

enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

/// Bytes per element (4, 2, 2).
size_t DTypeSize(DType dtype);
/// "f32", "f16", "bf16".
std::string_view DTypeName(DType dtype);
/// Accepts f32/fp32/float32, f16/fp16/float16, bf16/bfloat16.
Result<DType> ParseDType(std::string_view name);

enum class KvKind : uint8_t { kKey = 0, kValue = 1 };
inline std::string_view KvKindName(KvKind kind) { return kind == KvKind::kKey ? "K" : "V"; }

struct KvShape {
  uint32_t layers = 0;
  uint32_t tokens = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;

  /// Elements of one (layer, K|V) tensor.
  uint64_t tensor_elements() const { return uint64_t{tokens} * kv_heads * head_dim; }
  /// Elements of the whole cache: layers x 2 x tokens x kv_heads x head_dim (the denominator
  /// of bits/element, whose numerator is every byte of the stream).
  uint64_t elements() const { return tensor_elements() * 2 * layers; }
  bool operator==(const KvShape&) const = default;
};

/// Upper bounds that every untrusted shape is checked against before anything is allocated.
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxKvHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 1024;
inline constexpr uint32_t kMaxTokens = 1u << 24;

/// Checks a shape against the bounds above (all fields > 0).
Status ValidateShape(const KvShape& shape);

/// Byte strides of one (layer, K|V) tensor; head_dim elements are contiguous (stride = element
/// size). The same strides apply to K and V of every layer.
struct KvStrides {
  int64_t block = 0;  // between consecutive blocks (paged views only)
  int64_t token = 0;  // between consecutive token slots (of a block, or of the sequence)
  int64_t head = 0;   // between consecutive kv heads of one token slot
  bool operator==(const KvStrides&) const = default;
};

/// What KvView::Strided describes. A parameter struct, so it can grow without breaking callers.
struct StridedKv {
  KvShape shape;  // tokens = the sequence's tokens seen through the view
  DType dtype = DType::kF16;
  std::vector<void*> k, v;  // base of (layer, K|V): block 0 (or token 0), head 0
  KvStrides strides;
  uint32_t block_size = 0;               // 0: not paged, token t at base + t * strides.token
  uint32_t num_blocks = 0;               // paged: blocks each base pointer addresses
  std::span<const int32_t> block_table;  // paged: >= ceil(tokens / block_size) ids in
                                         // [0, num_blocks); copied
};

/// A non-owning view of one sequence's KV cache. Cheap to copy.
class KvView {
 public:
  KvView() = default;

  /// The general form: any block / token-slot / head strides, with or without a block table.
  /// Refused (kInvalidArgument, saying which): a bad shape, null pointers, a stride <= 0 of a
  /// dimension longer than 1, and strides under which two elements of one tensor would share
  /// memory (sorted by stride, each dimension's stride must be at least the span of the
  /// dimensions below it). The caller keeps the memory alive while the view is used.
  static Result<KvView> Strided(const StridedKv& desc);

  /// k[l] and v[l] point to [tokens, kv_heads, head_dim] of `dtype`, packed; both vectors have
  /// shape.layers entries. The caller keeps the memory alive while the view is used.
  static Result<KvView> Contiguous(const KvShape& shape, DType dtype, std::vector<void*> k,
                                   std::vector<void*> v);

  /// k[l] and v[l] point to [num_blocks, block_size, kv_heads, head_dim], packed; block_table has
  /// ceil(tokens / block_size) entries, each in [0, num_blocks). The table is copied.
  static Result<KvView> Paged(const KvShape& shape, DType dtype, uint32_t block_size,
                              uint32_t num_blocks, std::vector<void*> k, std::vector<void*> v,
                              std::span<const int32_t> block_table);

  const KvShape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  bool paged() const { return block_size_ != 0; }
  uint32_t block_size() const { return block_size_; }

  const KvStrides& strides() const { return strides_; }

  /// Bytes of one token row [kv_heads, head_dim], packed (as ReadRaw/WriteRaw exchange it).
  size_t row_bytes() const { return size_t{shape_.kv_heads} * shape_.head_dim * DTypeSize(dtype_); }
  /// True when each token's [kv_heads, head_dim] lies packed in memory (NHD); false for HND.
  bool rows_contiguous() const {
    return shape_.kv_heads == 1 ||
           strides_.head == static_cast<int64_t>(size_t{shape_.head_dim} * DTypeSize(dtype_));
  }

  /// Address of token `token`'s head `head` (head_dim contiguous elements) in (layer, kind).
  /// No bounds check in release builds: callers index within shape().
  void* Head(uint32_t layer, KvKind kind, uint32_t token, uint32_t head) const;
  /// Head(layer, kind, token, 0): the token's row [kv_heads, head_dim] when rows_contiguous().
  void* Row(uint32_t layer, KvKind kind, uint32_t token) const {
    return Head(layer, kind, token, 0);
  }

  /// Gathers tokens [token_begin, token_begin + tokens) of (layer, kind) into `out`, converted
  /// to float32, layout [tokens, kv_heads, head_dim].
  Status ReadF32(uint32_t layer, KvKind kind, uint32_t token_begin, uint32_t tokens,
                 float* out) const;
  /// Scatters float32 [tokens, kv_heads, head_dim] into the view, rounding to its dtype
  /// (round to nearest even).
  Status WriteF32(uint32_t layer, KvKind kind, uint32_t token_begin, uint32_t tokens,
                  const float* in) const;

  /// As ReadF32, but the elements stay in the view's dtype: `out` receives
  /// tokens x row_bytes() bytes, [tokens, kv_heads, head_dim]. Rows that lie back to back
  /// (a contiguous view, or consecutive slots of one block) are copied in one piece; when rows
  /// are not contiguous (HND), each (token, head) is copied as head_dim elements.
  Status ReadRaw(uint32_t layer, KvKind kind, uint32_t token_begin, uint32_t tokens,
                 uint8_t* out) const;
  /// As WriteF32 from elements already in the view's dtype (tokens x row_bytes() bytes).
  Status WriteRaw(uint32_t layer, KvKind kind, uint32_t token_begin, uint32_t tokens,
                  const uint8_t* in) const;
  /// Tokens [token_begin, token_begin + tokens) of (layer, kind) as one piece of memory laid out
  /// exactly as ReadRaw/WriteRaw exchange them (tokens x row_bytes() bytes), when they lie so: a
  /// view with packed rows whose token slots follow each other (a contiguous cache, slots of one
  /// block, blocks adjacent in memory). An empty span otherwise, or for a range outside the view
  /// or of no tokens. What a receiver reads an fp16 payload straight into.
  std::span<uint8_t> RawSpan(uint32_t layer, KvKind kind, uint32_t token_begin,
                             uint32_t tokens) const;

 private:
  KvShape shape_{};
  DType dtype_ = DType::kF16;
  uint32_t block_size_ = 0;
  uint32_t num_blocks_ = 0;
  KvStrides strides_{};
  std::vector<void*> k_, v_;
  std::vector<int32_t> block_table_;
};

/// Metadata that travels with a KV dump (safetensors `__metadata__`) and a stream header.
struct KvMetadata {
  int64_t positions_start = 0;     // position id of token 0 (for RoPE)
  double rope_theta = 10000.0;     // 0 when unknown
  std::string rope_style = "none"; // "interleaved" (llama2.c/GGUF llama), "neox" (HF/qwen), "none"
  std::string model_fingerprint;   // empty when unknown
};

namespace detail {
/// Zeroed storage for a KvCache without writing the zeros: large blocks are anonymous mappings
/// aligned to 2 MiB (the kernel hands out zero pages, as transparent huge pages where the system
/// allows it on request), small ones calloc. A fresh cache costs no memset and far fewer page
/// faults, which a decode node's first request would otherwise pay on its KV-ready clock.
void* AllocateZeroed(size_t bytes);
void FreeZeroed(void* p, size_t bytes);

struct ZeroedDeleter {
  size_t bytes = 0;
  void operator()(uint8_t* p) const { FreeZeroed(p, bytes); }
};
}  // namespace detail

/// An owning, contiguous KV cache (optionally with queries), e.g. loaded from a KV dump.
class KvCache {
 public:
  KvCache() = default;
  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;
  /// A deep copy (new storage).
  KvCache(const KvCache& other);
  KvCache& operator=(const KvCache& other);
  /// Zero-filled cache. `q_heads` > 0 also allocates queries [tokens, q_heads, head_dim].
  static Result<KvCache> Create(const KvShape& shape, DType dtype, uint32_t q_heads = 0);

  const KvShape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  uint32_t q_heads() const { return q_heads_; }
  KvMetadata& metadata() { return metadata_; }
  const KvMetadata& metadata() const { return metadata_; }

  /// Raw bytes of tensor (layer, kind): [tokens, kv_heads, head_dim] of dtype().
  std::span<uint8_t> tensor(uint32_t layer, KvKind kind);
  std::span<const uint8_t> tensor(uint32_t layer, KvKind kind) const;
  /// Raw bytes of queries of `layer` ([tokens, q_heads, head_dim]); empty when q_heads() == 0.
  std::span<uint8_t> queries(uint32_t layer);
  std::span<const uint8_t> queries(uint32_t layer) const;

  /// A contiguous view over this cache's storage (valid while the cache lives and is not moved).
  KvView view() const;

 private:
  KvShape shape_{};
  DType dtype_ = DType::kF16;
  uint32_t q_heads_ = 0;
  KvMetadata metadata_;
  // Every tensor in one zeroed block, layer by layer (K, V, then queries), each at a 64-byte
  // boundary: one mapping, so a fresh cache's first writes fault in huge pages where the system
  // gives them (with a tensor per allocation, tensors under 2 MiB never could).
  std::unique_ptr<uint8_t, detail::ZeroedDeleter> storage_;
  size_t tensor_bytes_ = 0, q_bytes_ = 0, layer_stride_ = 0;
};

}  // namespace kvwire
