// GGUF (v2/v3) container parsing: metadata key/values and the tensor table, fully validated
// against the buffer before anything is trusted. Model semantics live in gguf_loader.cpp.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "kvwire/status.h"

namespace kvwire::model {

enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

/// One metadata value. Scalars keep their numeric value; arrays of strings or numbers are
/// materialized (nested arrays are validated and skipped).
struct GgufValue {
  GgufType type = GgufType::kU8;
  GgufType array_type = GgufType::kU8;  // for kArray
  uint64_t array_count = 0;
  double number = 0;    // every numeric scalar (and bool) as a double
  int64_t integer = 0;  // integer scalars exactly
  std::string str;
  std::vector<std::string> strings;  // array of strings
  std::vector<double> numbers;       // array of numbers / bools

  bool is_integer() const;
  bool is_number() const;  // integer, float or bool
};

/// ggml tensor types this reader knows the block layout of.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};
/// "F32", "Q8_0", ... or "type <n>".
std::string GgmlTypeName(uint32_t type);

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> dims;  // ne[0] (fastest varying) first
  uint32_t type = 0;
  uint64_t offset = 0;  // absolute offset in the file
  uint64_t bytes = 0;   // size of its data
  uint64_t elements() const;
};

struct GgufFile {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensor> tensors;
  std::map<std::string, size_t> tensor_index;  // name -> index in tensors

  const GgufValue* Find(const std::string& key) const;
  const GgufTensor* FindTensor(const std::string& name) const;
};

bool HasGgufMagic(std::span<const uint8_t> bytes);

/// Parses and validates header, metadata and tensor table (every tensor inside the data
/// section, aligned, of a size that matches its type and shape; no duplicate names).
Result<GgufFile> ParseGguf(std::span<const uint8_t> bytes);

/// Converts tensor `t` of `file_bytes` to float32 (F32, F16, BF16 and Q8_0; others are
/// kUnsupported).
Result<std::vector<float>> DequantizeGgufTensor(std::span<const uint8_t> file_bytes,
                                                const GgufTensor& t);

}  // namespace kvwire::model
