// kvwire/kv_file.h — KV dump files (safetensors), readable by any Python tool.
//
// Tensors `k.<layer>` and `v.<layer>` of shape [tokens, kv_heads, head_dim] (F32, F16 or BF16),
// optional `q.<layer>` of shape [tokens, n_heads, head_dim], and `__metadata__` with
// `positions_start`, `rope_theta`, `rope_style` and `model_fingerprint` (strings, as the
// safetensors format requires). All k/v tensors share one dtype and shape.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvwire/kv_view.h"
#include "kvwire/status.h"

namespace kvwire {

/// Loads a KV dump. The file is validated (header JSON size bound, offsets within the file, every
/// expected tensor present with a consistent shape/dtype) before any tensor is allocated.
Result<KvCache> LoadKvDump(const std::string& path);
/// Same, from bytes in memory.
Result<KvCache> ParseKvDump(std::span<const uint8_t> bytes);

/// A KV dump mapped into memory instead of read: view() points into the file's pages (the
/// page cache), so opening costs the validation of the header, not a copy of the tensors.
/// Validated as LoadKvDump validates. The view is for reading (the mapping is read-only:
/// writing through it faults). Tensors that lie misaligned for their dtype (a writer that did
/// not pad its header) are read into memory instead. Queries (`q.<layer>`) are not exposed.
/// Move-only; the view lives as long as the object.
class MappedKvDump {
 public:
  static Result<MappedKvDump> Open(const std::string& path);
  MappedKvDump(MappedKvDump&& o) noexcept;
  MappedKvDump& operator=(MappedKvDump&& o) noexcept;
  ~MappedKvDump();

  const KvView& view() const { return view_; }
  const KvShape& shape() const { return view_.shape(); }
  DType dtype() const { return view_.dtype(); }
  const KvMetadata& metadata() const { return metadata_; }

 private:
  MappedKvDump() = default;
  void* map_ = nullptr;
  size_t size_ = 0;
  KvView view_;
  KvMetadata metadata_;
  std::unique_ptr<KvCache> copy_;  // the misaligned case
};

/// Writes a KV dump (atomically: to `path`.tmp, then renamed).
Status SaveKvDump(const std::string& path, const KvCache& cache);
/// Serializes a KV dump to bytes.
Result<std::vector<uint8_t>> SerializeKvDump(const KvCache& cache);

/// Reads a whole file (bounded by `max_bytes`), or writes one atomically.
Result<std::vector<uint8_t>> ReadFileBytes(const std::string& path, uint64_t max_bytes = 1ull << 36);
Status WriteFileBytes(const std::string& path, std::span<const uint8_t> bytes);

}  // namespace kvwire
