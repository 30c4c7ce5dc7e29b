// KV dump files in the safetensors format (https://github.com/huggingface/safetensors):
//   u64 little-endian N | N bytes of JSON header (space-padded) | tensor data
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} with
// offsets relative to the start of the data section, plus an optional "__metadata__" map of
// strings. Everything in an untrusted file is validated before a tensor is allocated.
#include "kvwire/kv_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

namespace kvwire {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; kv_file.cpp copies it without byte swaps");

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// The safetensors reference implementation refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Our headers are flat: {name: {dtype, shape: [..], data_offsets: [..]}}.
constexpr int kMaxJsonDepth = 4;

Status Corrupt(const std::string& msg) {
  return Status(StatusCode::kCorrupt, "safetensors: " + msg);
}

std::string_view SafetensorsDType(DType d) {
  switch (d) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

std::optional<DType> DTypeFromSafetensors(std::string_view s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  return std::nullopt;
}

// Rejects nesting deeper than our schema before the JSON parser sees it (a hostile header of
// a million '[' must not cost a million allocations).
Status CheckJsonDepth(std::string_view text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) {
        return Corrupt("header JSON nests deeper than " + std::to_string(kMaxJsonDepth) +
                       " levels at byte " + std::to_string(8 + i));
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return Status::Ok();
}

// Tensor name "k.<l>", "v.<l>" or "q.<l>" with a canonical decimal layer index.
struct TensorName {
  char kind = 0;  // 'k', 'v' or 'q'
  uint32_t layer = 0;
};

std::optional<TensorName> ParseTensorName(std::string_view name) {
  if (name.size() < 3 || name[1] != '.') return std::nullopt;
  if (name[0] != 'k' && name[0] != 'v' && name[0] != 'q') return std::nullopt;
  std::string_view digits = name.substr(2);
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;  // "k.01" is not layer 1
  uint32_t layer = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), layer);
  if (ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
  return TensorName{name[0], layer};
}

struct TensorEntry {
  std::string name;
  TensorName id;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to the data section
};

Result<uint64_t> JsonUint(const Json& j, const std::string& what) {
  if (!j.is_number_unsigned() && !(j.is_number_integer() && j.get<int64_t>() >= 0)) {
    return Corrupt(what + " is not a non-negative integer");
  }
  return j.get<uint64_t>();
}

Result<TensorEntry> ParseTensorEntry(const std::string& name, const Json& j) {
  const std::string where = "tensor '" + name + "'";
  auto id = ParseTensorName(name);
  if (!id) {
    return Corrupt("unexpected " + where +
                   " (a KV dump holds only k.<layer>, v.<layer>, q.<layer>)");
  }
  if (!j.is_object()) return Corrupt(where + " is not a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets") {
      return Corrupt(where + " has unexpected field '" + it.key() + "'");
    }
  }
  TensorEntry e;
  e.name = name;
  e.id = *id;

  auto dt = j.find("dtype");
  if (dt == j.end() || !dt->is_string()) return Corrupt(where + ": missing string field 'dtype'");
  auto dtype = DTypeFromSafetensors(dt->get<std::string>());
  if (!dtype) {
    return Status(StatusCode::kUnsupported, "safetensors: " + where + " has dtype '" +
                                                dt->get<std::string>() +
                                                "' (KV dumps are F32, F16 or BF16)");
  }
  e.dtype = *dtype;

  auto sh = j.find("shape");
  if (sh == j.end() || !sh->is_array()) return Corrupt(where + ": missing array field 'shape'");
  if (sh->size() != 3) {
    return Corrupt(where + " has " + std::to_string(sh->size()) +
                   " dimensions, expected 3 ([tokens, heads, head_dim])");
  }
  for (const Json& d : *sh) {
    KVWIRE_ASSIGN_OR_RETURN(uint64_t dim, JsonUint(d, where + " shape entry"));
    e.shape.push_back(dim);
  }

  auto off = j.find("data_offsets");
  if (off == j.end() || !off->is_array() || off->size() != 2) {
    return Corrupt(where + ": missing field 'data_offsets' = [begin, end]");
  }
  KVWIRE_ASSIGN_OR_RETURN(e.begin, JsonUint((*off)[0], where + " data_offsets[0]"));
  KVWIRE_ASSIGN_OR_RETURN(e.end, JsonUint((*off)[1], where + " data_offsets[1]"));
  if (e.end < e.begin) {
    return Corrupt(where + " data_offsets [" + std::to_string(e.begin) + ", " +
                   std::to_string(e.end) + "] end before begin");
  }
  return e;
}

Result<int64_t> ParseInt64(const std::string& key, const std::string& v) {
  int64_t x = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size()) {
    return Corrupt("__metadata__ " + key + " = '" + v + "' is not an integer");
  }
  return x;
}

Result<double> ParseDouble(const std::string& key, const std::string& v) {
  double x = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size() || !std::isfinite(x) || x < 0) {
    return Corrupt("__metadata__ " + key + " = '" + v + "' is not a non-negative number");
  }
  return x;
}

Status ParseMetadata(const Json& j, KvMetadata* meta) {
  if (!j.is_object()) return Corrupt("__metadata__ is not a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_string()) {
      return Corrupt("__metadata__ value of '" + it.key() + "' is not a string");
    }
    const std::string v = it.value().get<std::string>();
    if (it.key() == "positions_start") {
      KVWIRE_ASSIGN_OR_RETURN(meta->positions_start, ParseInt64(it.key(), v));
    } else if (it.key() == "rope_theta") {
      KVWIRE_ASSIGN_OR_RETURN(meta->rope_theta, ParseDouble(it.key(), v));
    } else if (it.key() == "rope_style") {
      if (v != "interleaved" && v != "neox" && v != "none") {
        return Corrupt("__metadata__ rope_style = '" + v +
                       "' (expected interleaved, neox or none)");
      }
      meta->rope_style = v;
    } else if (it.key() == "model_fingerprint") {
      meta->model_fingerprint = v;
    }
    // Other keys (tool names, notes) are allowed and not carried.
  }
  return Status::Ok();
}

std::string FormatDouble(double x) {
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof(buf), x);
  return ec == std::errc() ? std::string(buf, p) : std::to_string(x);
}

// Where each tensor of `cache` goes in the data section, in file order: per layer k, v, q.
struct Placement {
  std::string name;
  std::span<const uint8_t> bytes;
  std::vector<uint64_t> shape;
};

std::vector<Placement> PlaceTensors(const KvCache& cache) {
  const KvShape& s = cache.shape();
  std::vector<Placement> out;
  for (uint32_t l = 0; l < s.layers; ++l) {
    const std::string idx = std::to_string(l);
    out.push_back({"k." + idx, cache.tensor(l, KvKind::kKey), {s.tokens, s.kv_heads, s.head_dim}});
    out.push_back(
        {"v." + idx, cache.tensor(l, KvKind::kValue), {s.tokens, s.kv_heads, s.head_dim}});
    if (cache.q_heads() > 0) {
      out.push_back({"q." + idx, cache.queries(l), {s.tokens, cache.q_heads(), s.head_dim}});
    }
  }
  return out;
}

// The 8-byte length prefix plus the JSON header, padded with spaces so that the data section
// starts 8-byte aligned (as the reference writer does).
Result<std::string> BuildPrefix(const KvCache& cache, const std::vector<Placement>& tensors) {
  KVWIRE_RETURN_IF_ERROR(ValidateShape(cache.shape()));
  OrderedJson header;
  const KvMetadata& m = cache.metadata();
  KVWIRE_RETURN_ERROR_IF(!std::isfinite(m.rope_theta) || m.rope_theta < 0, kInvalidArgument,
                         "KV dump metadata: rope_theta must be finite and >= 0");
  OrderedJson meta;
  meta["format"] = "kvwire-kv-dump";
  meta["positions_start"] = std::to_string(m.positions_start);
  meta["rope_theta"] = FormatDouble(m.rope_theta);
  meta["rope_style"] = m.rope_style;
  meta["model_fingerprint"] = m.model_fingerprint;
  header["__metadata__"] = std::move(meta);
  const std::string dtype(SafetensorsDType(cache.dtype()));
  uint64_t offset = 0;
  for (const Placement& t : tensors) {
    const uint64_t n = t.bytes.size();
    header[t.name] = {{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string json = header.dump();
  json.resize((json.size() + 8 + 7) / 8 * 8 - 8, ' ');
  std::string prefix(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(prefix.data(), &n, 8);
  return prefix + json;
}

// A validated dump: where each tensor's bytes lie within the file.
struct DumpLayout {
  KvShape shape;
  DType dtype = DType::kF16;
  uint32_t q_heads = 0;
  KvMetadata meta;
  uint64_t data_start = 0;  // file offset of the data section
  std::vector<TensorEntry> entries;
};

Result<DumpLayout> ValidateDump(std::span<const uint8_t> bytes) {
  KVWIRE_RETURN_ERROR_IF(bytes.size() < 8, kTruncated,
                         "safetensors: file of " + std::to_string(bytes.size()) +
                             " bytes is shorter than the 8-byte header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  KVWIRE_RETURN_ERROR_IF(
      header_len > kMaxHeaderBytes, kCorrupt,
      "safetensors: header length " + std::to_string(header_len) + " exceeds the 100 MB bound");
  KVWIRE_RETURN_ERROR_IF(header_len > bytes.size() - 8, kTruncated,
                         "safetensors: header length " + std::to_string(header_len) +
                             " exceeds the " + std::to_string(bytes.size() - 8) +
                             " bytes after the length");
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), header_len);
  KVWIRE_RETURN_IF_ERROR(CheckJsonDepth(text));

  // Duplicate top-level keys would silently overwrite each other in the parsed object.
  std::set<std::string> keys;
  std::string duplicate;
  auto on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth == 1 && event == Json::parse_event_t::key) {
      std::string k = parsed.get<std::string>();
      if (!keys.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  Json header = Json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/false);
  KVWIRE_RETURN_ERROR_IF(
      header.is_discarded(), kCorrupt,
      "safetensors: header (bytes 8.." + std::to_string(8 + header_len) + ") is not valid JSON");
  KVWIRE_RETURN_ERROR_IF(!duplicate.empty(), kCorrupt,
                         "safetensors: header names '" + duplicate + "' twice");
  KVWIRE_RETURN_ERROR_IF(!header.is_object(), kCorrupt, "safetensors: header is not a JSON object");

  KvMetadata meta;
  std::vector<TensorEntry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      KVWIRE_RETURN_IF_ERROR(ParseMetadata(it.value(), &meta));
      continue;
    }
    KVWIRE_ASSIGN_OR_RETURN(TensorEntry e, ParseTensorEntry(it.key(), it.value()));
    entries.push_back(std::move(e));
  }

  // The data section must be exactly covered by the tensors: in bounds, no overlap, no hole.
  const uint64_t data_size = bytes.size() - 8 - header_len;
  std::vector<const TensorEntry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  for (const TensorEntry* e : by_offset) {
    KVWIRE_RETURN_ERROR_IF(e->end > data_size, kTruncated,
                           "safetensors: tensor '" + e->name + "' data_offsets end " +
                               std::to_string(e->end) + " beyond the " + std::to_string(data_size) +
                               "-byte data section");
    KVWIRE_RETURN_ERROR_IF(e->begin < covered, kCorrupt,
                           "safetensors: tensor '" + e->name + "' [" + std::to_string(e->begin) +
                               ", " + std::to_string(e->end) + ") overlaps the tensor before it");
    KVWIRE_RETURN_ERROR_IF(e->begin > covered, kCorrupt,
                           "safetensors: data bytes [" + std::to_string(covered) + ", " +
                               std::to_string(e->begin) + ") belong to no tensor");
    covered = e->end;
  }
  KVWIRE_RETURN_ERROR_IF(covered != data_size, kCorrupt,
                         "safetensors: " + std::to_string(data_size - covered) +
                             " trailing data bytes belong to no tensor");

  // Which layers exist, and one consistent shape and dtype.
  std::map<uint32_t, const TensorEntry*> k, v, q;
  for (const auto& e : entries) {
    auto& m = e.id.kind == 'k' ? k : e.id.kind == 'v' ? v : q;
    m[e.id.layer] = &e;
  }
  KVWIRE_RETURN_ERROR_IF(k.empty(), kNotFound, "safetensors: no k.<layer> tensors (not a KV dump)");
  const uint32_t layers = static_cast<uint32_t>(k.size());
  KVWIRE_RETURN_ERROR_IF(layers > kMaxLayers, kCorrupt,
                         "safetensors: " + std::to_string(layers) + " layers exceed the bound " +
                             std::to_string(kMaxLayers));
  for (uint32_t l = 0; l < layers; ++l) {
    const std::string idx = std::to_string(l);
    KVWIRE_RETURN_ERROR_IF(!k.count(l), kNotFound,
                           "safetensors: k." + idx + " is missing (k.<layer> must be 0.." +
                               std::to_string(layers - 1) + ", found k." +
                               std::to_string(k.rbegin()->first) + ")");
    KVWIRE_RETURN_ERROR_IF(!v.count(l), kNotFound, "safetensors: v." + idx + " is missing");
  }
  KVWIRE_RETURN_ERROR_IF(v.size() != layers, kCorrupt,
                         "safetensors: v." + std::to_string(v.rbegin()->first) +
                             " has no matching k." + std::to_string(v.rbegin()->first));
  KVWIRE_RETURN_ERROR_IF(!q.empty() && q.size() != layers, kCorrupt,
                         "safetensors: queries present for " + std::to_string(q.size()) + " of " +
                             std::to_string(layers) + " layers (all or none)");
  for (const auto& [l, e] : q) {
    KVWIRE_RETURN_ERROR_IF(
        l >= layers, kCorrupt,
        "safetensors: q." + std::to_string(l) + " has no matching k." + std::to_string(l));
  }

  const TensorEntry& k0 = *k.at(0);
  const DType dtype = k0.dtype;
  KvShape shape;
  shape.layers = layers;
  auto dim32 = [](uint64_t d) { return d > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(d); };
  shape.tokens = dim32(k0.shape[0]);
  shape.kv_heads = dim32(k0.shape[1]);
  shape.head_dim = dim32(k0.shape[2]);
  if (Status s = ValidateShape(shape); !s.ok()) return Corrupt("k.0 shape: " + s.message());
  uint32_t q_heads = 0;
  if (!q.empty()) {
    const TensorEntry& q0 = *q.at(0);
    KVWIRE_RETURN_ERROR_IF(q0.shape[1] == 0 || q0.shape[1] > kMaxKvHeads, kCorrupt,
                           "safetensors: q.0 has " + std::to_string(q0.shape[1]) +
                               " heads, outside [1, " + std::to_string(kMaxKvHeads) + "]");
    q_heads = static_cast<uint32_t>(q0.shape[1]);
  }
  auto shape_str = [](const std::vector<uint64_t>& s) {
    std::string out = "[";  // appended piecewise: GCC 12 warns falsely on "[" + std::string
    for (size_t i = 0; i < s.size(); ++i) out.append(i ? ", " : "").append(std::to_string(s[i]));
    return out.append("]");
  };
  for (const auto& e : entries) {
    const std::vector<uint64_t> want = {shape.tokens, e.id.kind == 'q' ? q_heads : shape.kv_heads,
                                        shape.head_dim};
    KVWIRE_RETURN_ERROR_IF(e.dtype != dtype, kCorrupt,
                           "safetensors: tensor '" + e.name + "' is " +
                               std::string(SafetensorsDType(e.dtype)) + " but k.0 is " +
                               std::string(SafetensorsDType(dtype)) + " (one dtype per dump)");
    KVWIRE_RETURN_ERROR_IF(e.shape != want, kCorrupt,
                           "safetensors: tensor '" + e.name + "' has shape " + shape_str(e.shape) +
                               ", expected " + shape_str(want));
    const uint64_t need = e.shape[0] * e.shape[1] * e.shape[2] * DTypeSize(dtype);
    KVWIRE_RETURN_ERROR_IF(e.end - e.begin != need, kCorrupt,
                           "safetensors: tensor '" + e.name + "' has " +
                               std::to_string(e.end - e.begin) +
                               " data bytes, its shape and dtype need " + std::to_string(need));
  }

  DumpLayout out;
  out.shape = shape;
  out.dtype = dtype;
  out.q_heads = q_heads;
  out.meta = std::move(meta);
  out.data_start = 8 + header_len;
  out.entries = std::move(entries);
  return out;
}

// Opens and maps `path` read-only (MAP_PRIVATE: pages come from the page cache, nothing is
// copied), with its pages mapped up front. *size receives the file's size.
Result<void*> MapFile(const std::string& path, size_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return Status(err == ENOENT ? StatusCode::kNotFound : StatusCode::kIoError,
                  path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status(StatusCode::kIoError, path + ": not a regular file");
  }
  *size = static_cast<size_t>(st.st_size);
  if (*size == 0) {
    ::close(fd);
    return Status(StatusCode::kTruncated, path + ": empty file");
  }
  // MAP_POPULATE: every caller reads the whole dump, so its pages are mapped in one call here
  // rather than by a page fault per 64 KiB as a copy or the sender reaches them (on a VM each
  // fault exits to the hypervisor). A 512 MiB dump in the page cache: 16-38 ms to map, and a
  // fp16 send that reads it about a tenth faster (bench/cli_transfer.sh).
  void* map = ::mmap(nullptr, *size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED)
    return Status(StatusCode::kIoError, path + ": mmap: " + std::strerror(errno));
  return map;
}

// The tensors of a validated dump, copied into a cache of their own.
Result<KvCache> CopyDump(const DumpLayout& d, std::span<const uint8_t> bytes) {
  // Validated: the file holds every byte we are about to allocate.
  KVWIRE_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(d.shape, d.dtype, d.q_heads));
  cache.metadata() = d.meta;
  const uint8_t* data = bytes.data() + d.data_start;
  for (const auto& e : d.entries) {
    std::span<uint8_t> dst = e.id.kind == 'k'   ? cache.tensor(e.id.layer, KvKind::kKey)
                             : e.id.kind == 'v' ? cache.tensor(e.id.layer, KvKind::kValue)
                                                : cache.queries(e.id.layer);
    std::memcpy(dst.data(), data + e.begin, dst.size());
  }
  return cache;
}

}  // namespace

Result<KvCache> ParseKvDump(std::span<const uint8_t> bytes) {
  KVWIRE_ASSIGN_OR_RETURN(DumpLayout d, ValidateDump(bytes));
  return CopyDump(d, bytes);
}

Result<KvCache> LoadKvDump(const std::string& path) {
  // Mapped rather than read: a dump can be gigabytes, and we copy it into the cache anyway.
  size_t size = 0;
  KVWIRE_ASSIGN_OR_RETURN(void* map, MapFile(path, &size));
  Result<KvCache> cache = ParseKvDump({static_cast<const uint8_t*>(map), size});
  ::munmap(map, size);
  if (!cache.ok()) return cache.status().WithContext(path);
  return cache;
}

Result<MappedKvDump> MappedKvDump::Open(const std::string& path) {
  MappedKvDump m;
  KVWIRE_ASSIGN_OR_RETURN(m.map_, MapFile(path, &m.size_));
  const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(m.map_), m.size_);
  auto d = ValidateDump(bytes);
  if (!d.ok()) return d.status().WithContext(path);
  std::vector<void*> k(d->shape.layers), v(d->shape.layers);
  bool aligned = true;
  for (const auto& e : d->entries) {
    const uint64_t at = d->data_start + e.begin;
    aligned &= at % DTypeSize(d->dtype) == 0;
    // The view never writes through these (the sender only reads its source).
    void* p = const_cast<uint8_t*>(bytes.data() + at);
    if (e.id.kind == 'k') k[e.id.layer] = p;
    if (e.id.kind == 'v') v[e.id.layer] = p;
  }
  if (!aligned) {
    // A writer that did not pad its header: elements would be read misaligned, so the dump is
    // read into memory instead (as LoadKvDump does), and the mapping is no longer needed.
    auto cache = CopyDump(*d, bytes);
    if (!cache.ok()) return cache.status().WithContext(path);
    m.copy_ = std::make_unique<KvCache>(std::move(*cache));
    m.view_ = m.copy_->view();
    m.metadata_ = m.copy_->metadata();
    ::munmap(std::exchange(m.map_, nullptr), std::exchange(m.size_, 0));
    return m;
  }
  KVWIRE_ASSIGN_OR_RETURN(m.view_, KvView::Contiguous(d->shape, d->dtype, std::move(k), std::move(v)));
  m.metadata_ = d->meta;
  return m;
}

MappedKvDump::MappedKvDump(MappedKvDump&& o) noexcept { *this = std::move(o); }

MappedKvDump& MappedKvDump::operator=(MappedKvDump&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, size_);
    map_ = std::exchange(o.map_, nullptr);
    size_ = std::exchange(o.size_, 0);
    view_ = o.view_;
    metadata_ = std::move(o.metadata_);
    copy_ = std::move(o.copy_);
  }
  return *this;
}

MappedKvDump::~MappedKvDump() {
  if (map_) ::munmap(map_, size_);
}

Result<std::vector<uint8_t>> SerializeKvDump(const KvCache& cache) {
  const std::vector<Placement> tensors = PlaceTensors(cache);
  KVWIRE_ASSIGN_OR_RETURN(std::string prefix, BuildPrefix(cache, tensors));
  std::vector<uint8_t> out(prefix.begin(), prefix.end());
  for (const Placement& t : tensors) out.insert(out.end(), t.bytes.begin(), t.bytes.end());
  return out;
}

namespace {

// Writes `path`.tmp piece by piece, then renames it over `path`.
class AtomicFile {
 public:
  static Result<AtomicFile> Open(const std::string& path) {
    AtomicFile f;
    f.path_ = path;
    f.tmp_ = path + ".tmp";
    f.file_ = std::fopen(f.tmp_.c_str(), "wb");
    if (!f.file_) return Status(StatusCode::kIoError, f.tmp_ + ": " + std::strerror(errno));
    return f;
  }
  AtomicFile(AtomicFile&& o) noexcept
      : path_(std::move(o.path_)),
        tmp_(std::move(o.tmp_)),
        file_(std::exchange(o.file_, nullptr)) {}
  AtomicFile& operator=(AtomicFile&&) = delete;
  ~AtomicFile() {
    if (file_) {  // abandoned (error path): leave nothing behind
      std::fclose(file_);
      std::remove(tmp_.c_str());
    }
  }

  Status Write(const void* data, size_t n) {
    if (n > 0 && std::fwrite(data, 1, n, file_) != n) {
      return Status(StatusCode::kIoError, tmp_ + ": write failed: " + std::strerror(errno));
    }
    return Status::Ok();
  }

  Status Commit() {
    const bool flushed = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
    const int err = errno;
    const bool closed = std::fclose(file_) == 0;
    file_ = nullptr;
    if (!flushed || !closed) {
      std::remove(tmp_.c_str());
      return Status(StatusCode::kIoError, tmp_ + ": write failed: " + std::strerror(err));
    }
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int rerr = errno;
      std::remove(tmp_.c_str());
      return Status(StatusCode::kIoError, "rename to " + path_ + ": " + std::strerror(rerr));
    }
    return Status::Ok();
  }

 private:
  AtomicFile() = default;
  std::string path_, tmp_;
  std::FILE* file_ = nullptr;
};

}  // namespace

Status SaveKvDump(const std::string& path, const KvCache& cache) {
  // Streamed to the file so that a multi-gigabyte cache is not copied into one buffer first.
  const std::vector<Placement> tensors = PlaceTensors(cache);
  KVWIRE_ASSIGN_OR_RETURN(std::string prefix, BuildPrefix(cache, tensors));
  KVWIRE_ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Open(path));
  KVWIRE_RETURN_IF_ERROR(file.Write(prefix.data(), prefix.size()));
  for (const Placement& t : tensors)
    KVWIRE_RETURN_IF_ERROR(file.Write(t.bytes.data(), t.bytes.size()));
  return file.Commit();
}

Result<std::vector<uint8_t>> ReadFileBytes(const std::string& path, uint64_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    return Status(err == ENOENT ? StatusCode::kNotFound : StatusCode::kIoError,
                  path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(::fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    std::fclose(f);
    return Status(StatusCode::kIoError, path + ": not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) {
    std::fclose(f);
    return Status(StatusCode::kResourceExhausted, path + ": " + std::to_string(size) +
                                                      " bytes exceed the limit of " +
                                                      std::to_string(max_bytes));
  }
  std::vector<uint8_t> bytes(size);
  const size_t got = size ? std::fread(bytes.data(), 1, size, f) : 0;
  const bool err = std::ferror(f);
  std::fclose(f);
  if (err || got != size) {
    return Status(StatusCode::kIoError, path + ": read " + std::to_string(got) + " of " +
                                            std::to_string(size) + " bytes");
  }
  return bytes;
}

Status WriteFileBytes(const std::string& path, std::span<const uint8_t> bytes) {
  KVWIRE_ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Open(path));
  KVWIRE_RETURN_IF_ERROR(file.Write(bytes.data(), bytes.size()));
  return file.Commit();
}

}  // namespace kvwire
