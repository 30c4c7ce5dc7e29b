#include "model/gguf_reader.h"

#include <algorithm>
#include <cstring>

#include "common/fp16.h"

namespace kvwire::model {
namespace {

constexpr uint64_t kMaxTensors = 1u << 20;
constexpr uint64_t kMaxKeyValues = 1u << 20;
constexpr uint64_t kMaxNameBytes = 1u << 16;
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 3;
// Smallest encodings: a metadata entry is a key length (8), a type (4) and a one-byte value; a
// tensor info a name length (8), a rank (4), one dimension (8), a type (4) and an offset (8).
constexpr uint64_t kMinKeyValueBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

struct TypeTraits {
  uint32_t block;  // elements per block
  uint32_t bytes;  // bytes per block
  const char* name;
};

const TypeTraits* Traits(uint32_t type) {
  static const struct {
    uint32_t type;
    TypeTraits t;
  } kTable[] = {
      {0, {1, 4, "F32"}},       {1, {1, 2, "F16"}},       {2, {32, 18, "Q4_0"}},
      {3, {32, 20, "Q4_1"}},    {6, {32, 22, "Q5_0"}},    {7, {32, 24, "Q5_1"}},
      {8, {32, 34, "Q8_0"}},    {9, {32, 36, "Q8_1"}},    {10, {256, 84, "Q2_K"}},
      {11, {256, 110, "Q3_K"}}, {12, {256, 144, "Q4_K"}}, {13, {256, 176, "Q5_K"}},
      {14, {256, 210, "Q6_K"}}, {15, {256, 292, "Q8_K"}}, {24, {1, 1, "I8"}},
      {25, {1, 2, "I16"}},      {26, {1, 4, "I32"}},      {27, {1, 8, "I64"}},
      {28, {1, 8, "F64"}},      {30, {1, 2, "BF16"}},
  };
  for (const auto& e : kTable) {
    if (e.type == type) return &e.t;
  }
  return nullptr;
}

// A bounds-checked little-endian cursor over the file; every read states what it was reading.
class Cursor {
 public:
  explicit Cursor(std::span<const uint8_t> b) : b_(b) {}
  uint64_t offset() const { return off_; }
  uint64_t remaining() const { return b_.size() - off_; }

  template <typename T>
  Status Read(T* v, const char* what) {
    KVWIRE_RETURN_ERROR_IF(
        remaining() < sizeof(T), kTruncated,
        std::string("GGUF: file ends at byte ") + std::to_string(off_) + " while reading " + what);
    std::memcpy(v, b_.data() + off_, sizeof(T));
    off_ += sizeof(T);
    return Status::Ok();
  }

  Status ReadString(std::string* s, uint64_t max_len, const char* what) {
    uint64_t len = 0;
    const uint64_t at = off_;
    KVWIRE_RETURN_IF_ERROR(Read(&len, what));
    KVWIRE_RETURN_ERROR_IF(len > remaining() || len > max_len, kCorrupt,
                           std::string("GGUF: ") + what + " at byte " + std::to_string(at) +
                               " has length " + std::to_string(len) + " (" +
                               std::to_string(remaining()) + " bytes left, limit " +
                               std::to_string(max_len) + ")");
    s->assign(reinterpret_cast<const char*>(b_.data() + off_), len);
    off_ += len;
    return Status::Ok();
  }

  Status Skip(uint64_t n, const char* what) {
    KVWIRE_RETURN_ERROR_IF(
        remaining() < n, kTruncated,
        std::string("GGUF: file ends at byte ") + std::to_string(off_) + " inside " + what);
    off_ += n;
    return Status::Ok();
  }

 private:
  std::span<const uint8_t> b_;
  uint64_t off_ = 0;
};

uint64_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    default:
      return 0;
  }
}

Status ReadScalar(Cursor* c, GgufType t, double* number, int64_t* integer) {
  switch (t) {
#define KVWIRE_GGUF_INT(TAG, CT)                             \
  case GgufType::TAG: {                                      \
    CT v;                                                    \
    KVWIRE_RETURN_IF_ERROR(c->Read(&v, "a metadata value")); \
    *integer = static_cast<int64_t>(v);                      \
    *number = static_cast<double>(v);                        \
    return Status::Ok();                                     \
  }
    KVWIRE_GGUF_INT(kU8, uint8_t)
    KVWIRE_GGUF_INT(kI8, int8_t)
    KVWIRE_GGUF_INT(kU16, uint16_t)
    KVWIRE_GGUF_INT(kI16, int16_t)
    KVWIRE_GGUF_INT(kU32, uint32_t)
    KVWIRE_GGUF_INT(kI32, int32_t)
    KVWIRE_GGUF_INT(kU64, uint64_t)
    KVWIRE_GGUF_INT(kI64, int64_t)
    KVWIRE_GGUF_INT(kBool, uint8_t)
#undef KVWIRE_GGUF_INT
    case GgufType::kF32: {
      float v;
      KVWIRE_RETURN_IF_ERROR(c->Read(&v, "a metadata value"));
      *number = v;
      return Status::Ok();
    }
    case GgufType::kF64: {
      double v;
      KVWIRE_RETURN_IF_ERROR(c->Read(&v, "a metadata value"));
      *number = v;
      return Status::Ok();
    }
    default:
      return Status(
          StatusCode::kCorrupt,
          "GGUF: value type " + std::to_string(static_cast<uint32_t>(t)) + " is not a scalar");
  }
}

bool ValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kF64); }

Status ReadValue(Cursor* c, GgufType type, GgufValue* out, int depth, const std::string& key) {
  out->type = type;
  if (type == GgufType::kString) return c->ReadString(&out->str, c->remaining(), "a string value");
  if (type != GgufType::kArray) return ReadScalar(c, type, &out->number, &out->integer);

  KVWIRE_RETURN_ERROR_IF(depth >= kMaxArrayDepth, kCorrupt,
                         "GGUF: arrays nested too deeply in '" + key + "'");
  uint32_t et = 0;
  uint64_t count = 0;
  KVWIRE_RETURN_IF_ERROR(c->Read(&et, "an array type"));
  KVWIRE_RETURN_IF_ERROR(c->Read(&count, "an array length"));
  KVWIRE_RETURN_ERROR_IF(
      !ValidType(et), kCorrupt,
      "GGUF: array '" + key + "' has unknown element type " + std::to_string(et));
  const auto etype = static_cast<GgufType>(et);
  out->array_type = etype;
  out->array_count = count;
  // Each element takes at least one byte (8 for a string's length), so a count larger than
  // the rest of the file is a lie: refuse it before allocating anything.
  const uint64_t min_elem = etype == GgufType::kString  ? 8
                            : etype == GgufType::kArray ? 12
                                                        : ScalarSize(etype);
  KVWIRE_RETURN_ERROR_IF(count > c->remaining() / min_elem, kCorrupt,
                         "GGUF: array '" + key + "' claims " + std::to_string(count) +
                             " elements at byte " + std::to_string(c->offset()) + ", more than " +
                             "the file can hold");
  if (etype == GgufType::kString) {
    out->strings.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
      KVWIRE_RETURN_IF_ERROR(c->ReadString(&out->strings[i], kMaxNameBytes, "an array string"));
    }
  } else if (etype == GgufType::kArray) {
    for (uint64_t i = 0; i < count; ++i) {
      GgufValue nested;
      uint32_t nt = 0;
      KVWIRE_RETURN_IF_ERROR(c->Read(&nt, "a nested array type"));
      KVWIRE_RETURN_ERROR_IF(nt != static_cast<uint32_t>(GgufType::kArray), kCorrupt,
                             "GGUF: malformed nested array in '" + key + "'");
      KVWIRE_RETURN_IF_ERROR(ReadValue(c, GgufType::kArray, &nested, depth + 1, key));
    }
  } else {
    out->numbers.resize(count);
    int64_t ignored;
    for (uint64_t i = 0; i < count; ++i) {
      KVWIRE_RETURN_IF_ERROR(ReadScalar(c, etype, &out->numbers[i], &ignored));
    }
  }
  return Status::Ok();
}

}  // namespace

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

bool GgufValue::is_number() const {
  return is_integer() || type == GgufType::kF32 || type == GgufType::kF64 ||
         type == GgufType::kBool;
}

std::string GgmlTypeName(uint32_t type) {
  const TypeTraits* t = Traits(type);
  return t ? t->name : "type " + std::to_string(type);
}

uint64_t GgufTensor::elements() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index.find(name);
  return it == tensor_index.end() ? nullptr : &tensors[it->second];
}

bool HasGgufMagic(std::span<const uint8_t> bytes) {
  return bytes.size() >= 4 && std::memcmp(bytes.data(), "GGUF", 4) == 0;
}

Result<GgufFile> ParseGguf(std::span<const uint8_t> bytes) {
  KVWIRE_RETURN_ERROR_IF(!HasGgufMagic(bytes), kCorrupt, "GGUF: bad magic (not a GGUF file)");
  Cursor c(bytes);
  KVWIRE_RETURN_IF_ERROR(c.Skip(4, "the magic"));
  GgufFile f;
  KVWIRE_RETURN_IF_ERROR(c.Read(&f.version, "the version"));
  KVWIRE_RETURN_ERROR_IF(f.version == 1, kVersionMismatch,
                         "GGUF: version 1 files are not supported (convert to v3)");
  KVWIRE_RETURN_ERROR_IF((f.version & 0xffff) == 0 && f.version != 0, kUnsupported,
                         "GGUF: big-endian files are not supported");
  KVWIRE_RETURN_ERROR_IF(
      f.version != 2 && f.version != 3, kVersionMismatch,
      "GGUF: version " + std::to_string(f.version) + " (this build reads 2 and 3)");
  uint64_t n_tensors = 0, n_kv = 0;
  KVWIRE_RETURN_IF_ERROR(c.Read(&n_tensors, "the tensor count"));
  KVWIRE_RETURN_IF_ERROR(c.Read(&n_kv, "the metadata count"));
  KVWIRE_RETURN_ERROR_IF(n_tensors > kMaxTensors || n_kv > kMaxKeyValues, kCorrupt,
                         "GGUF: " + std::to_string(n_tensors) + " tensors / " +
                             std::to_string(n_kv) + " metadata entries exceed the limits");
  // The tensor table is sized from n_tensors: counts that the rest of the file cannot hold are
  // lies, refused before anything is allocated (both counts are below 2^20: no overflow).
  KVWIRE_RETURN_ERROR_IF(
      n_kv * kMinKeyValueBytes + n_tensors * kMinTensorInfoBytes > c.remaining(), kCorrupt,
      "GGUF: " + std::to_string(n_tensors) + " tensors and " + std::to_string(n_kv) +
          " metadata entries do not fit in the " + std::to_string(c.remaining()) +
          " bytes after the header");

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    uint32_t type = 0;
    KVWIRE_RETURN_IF_ERROR(c.ReadString(&key, kMaxNameBytes, "a metadata key"));
    const uint64_t at = c.offset();
    KVWIRE_RETURN_IF_ERROR(c.Read(&type, "a metadata type"));
    KVWIRE_RETURN_ERROR_IF(!ValidType(type), kCorrupt,
                           "GGUF: metadata '" + key + "' at byte " + std::to_string(at) +
                               " has unknown type " + std::to_string(type));
    GgufValue v;
    KVWIRE_RETURN_IF_ERROR(ReadValue(&c, static_cast<GgufType>(type), &v, 0, key));
    KVWIRE_RETURN_ERROR_IF(f.metadata.count(key), kCorrupt,
                           "GGUF: duplicate metadata key '" + key + "'");
    f.metadata.emplace(std::move(key), std::move(v));
  }
  if (const GgufValue* a = f.Find("general.alignment")) {
    KVWIRE_RETURN_ERROR_IF(!a->is_integer() || a->integer <= 0 || a->integer > (1 << 16) ||
                               (a->integer & (a->integer - 1)) != 0,
                           kCorrupt, "GGUF: general.alignment must be a power of two <= 65536");
    f.alignment = static_cast<uint64_t>(a->integer);
  }

  f.tensors.resize(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor& t = f.tensors[i];
    KVWIRE_RETURN_IF_ERROR(c.ReadString(&t.name, kMaxNameBytes, "a tensor name"));
    uint32_t n_dims = 0;
    KVWIRE_RETURN_IF_ERROR(c.Read(&n_dims, "a tensor rank"));
    KVWIRE_RETURN_ERROR_IF(n_dims == 0 || n_dims > kMaxDims, kCorrupt,
                           "GGUF: tensor '" + t.name + "' has rank " + std::to_string(n_dims));
    t.dims.resize(n_dims);
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      KVWIRE_RETURN_IF_ERROR(c.Read(&t.dims[d], "a tensor dimension"));
      KVWIRE_RETURN_ERROR_IF(
          t.dims[d] == 0 || t.dims[d] > (1ull << 40) || elements > (1ull << 40) / t.dims[d],
          kCorrupt, "GGUF: tensor '" + t.name + "' has an invalid shape");
      elements *= t.dims[d];
    }
    KVWIRE_RETURN_IF_ERROR(c.Read(&t.type, "a tensor type"));
    KVWIRE_RETURN_IF_ERROR(c.Read(&t.offset, "a tensor offset"));
    const TypeTraits* tr = Traits(t.type);
    KVWIRE_RETURN_ERROR_IF(!tr, kUnsupported,
                           "GGUF: tensor '" + t.name + "' has ggml type " + std::to_string(t.type) +
                               " that this reader does not know");
    KVWIRE_RETURN_ERROR_IF(t.dims[0] % tr->block != 0, kCorrupt,
                           "GGUF: tensor '" + t.name + "' row of " + std::to_string(t.dims[0]) +
                               " elements is not a whole number of " + tr->name + " blocks");
    t.bytes = elements / tr->block * tr->bytes;
    KVWIRE_RETURN_ERROR_IF(f.tensor_index.count(t.name), kCorrupt,
                           "GGUF: duplicate tensor '" + t.name + "'");
    f.tensor_index.emplace(t.name, i);
  }

  const uint64_t data = (c.offset() + f.alignment - 1) / f.alignment * f.alignment;
  KVWIRE_RETURN_ERROR_IF(data > bytes.size() && n_tensors > 0, kTruncated,
                         "GGUF: file ends before its data section");
  f.data_offset = data;
  const uint64_t data_bytes = bytes.size() > data ? bytes.size() - data : 0;
  for (GgufTensor& t : f.tensors) {
    KVWIRE_RETURN_ERROR_IF(t.offset % f.alignment != 0, kCorrupt,
                           "GGUF: tensor '" + t.name + "' offset " + std::to_string(t.offset) +
                               " is not aligned to " + std::to_string(f.alignment));
    KVWIRE_RETURN_ERROR_IF(t.offset > data_bytes || t.bytes > data_bytes - t.offset, kTruncated,
                           "GGUF: tensor '" + t.name + "' [" + std::to_string(t.offset) + ", +" +
                               std::to_string(t.bytes) + ") lies outside the " +
                               std::to_string(data_bytes) + "-byte data section");
    t.offset += data;
  }
  // No two tensors share bytes: each weight comes from its own part of the file, so what the
  // loaders dequantize stays proportional to the file (aliased tensors would let a small file
  // stand for many copies of one large tensor).
  std::vector<const GgufTensor*> by_offset;
  by_offset.reserve(f.tensors.size());
  for (const GgufTensor& t : f.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& prev = *by_offset[i - 1];
    const GgufTensor& t = *by_offset[i];
    KVWIRE_RETURN_ERROR_IF(t.offset < prev.offset + prev.bytes, kCorrupt,
                           "GGUF: tensor '" + t.name + "' at data offset " +
                               std::to_string(t.offset - data) + " overlaps tensor '" + prev.name +
                               "' [" + std::to_string(prev.offset - data) + ", +" +
                               std::to_string(prev.bytes) + ")");
  }
  return f;
}

Result<std::vector<float>> DequantizeGgufTensor(std::span<const uint8_t> file_bytes,
                                                const GgufTensor& t) {
  const uint64_t n = t.elements();
  KVWIRE_RETURN_ERROR_IF(t.offset + t.bytes > file_bytes.size(), kInternal,
                         "GGUF: tensor outside the file");
  const uint8_t* src = file_bytes.data() + t.offset;
  std::vector<float> out;
  switch (static_cast<GgmlType>(t.type)) {
    case GgmlType::kF32:
      out.resize(n);
      std::memcpy(out.data(), src, n * 4);
      break;
    case GgmlType::kF16:
    case GgmlType::kBF16: {
      const bool bf = static_cast<GgmlType>(t.type) == GgmlType::kBF16;
      out.resize(n);
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = bf ? Bf16ToFloat(h) : HalfToFloat(h);
      }
      break;
    }
    case GgmlType::kQ8_0: {
      // Block of 32: fp16 scale d, then 32 int8 q; value = d * q.
      out.resize(n);
      for (uint64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * 34;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = HalfToFloat(dh);
        for (int i = 0; i < 32; ++i) out[b * 32 + i] = d * static_cast<int8_t>(blk[2 + i]);
      }
      break;
    }
    default:
      return Status(StatusCode::kUnsupported,
                    "GGUF: tensor '" + t.name + "' is " + GgmlTypeName(t.type) +
                        "; this runner reads F32, F16, BF16 and Q8_0 (requantize the model)");
  }
  return out;
}

}  // namespace kvwire::model
