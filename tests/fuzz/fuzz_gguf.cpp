// Fuzz target of the GGUF reader (src/model/gguf_reader.cpp: container, metadata, tensor table,
// dequantization) and the GGUF model loader on top of it (src/model/gguf_loader.cpp:
// configuration from metadata, weights, the vocabulary as a tokenizer). The input is the file.
//
// Nothing may crash, hang or allocate beyond a bound proportional to the input (alloc_bound.h),
// and refusals carry a message. What ParseGguf accepts must hold together:
//  * version 2 or 3, a power-of-two alignment, an aligned data section inside the file;
//  * every tensor of rank 1-4 lies inside the data section, aligned, with the byte size its
//    type and shape give (the block table is restated here), no two tensors overlap, and the
//    name index finds each one;
//  * arrays hold as many elements as they announce;
//  * dequantized tensors have one float per element, and F32 tensors are the input's bytes;
//  * parsing again gives the same file.
// A model that LoadGgufModel accepts has weights of the sizes its configuration says, its
// tokenizer encodes to ids of its vocabulary, and Model::LoadFromBytes loads it and runs a token.
//
// A violated invariant calls Fail(), which aborts: a crash for libFuzzer and a failed ctest for
// the replay (replay_parser_main.cpp). Built as a libFuzzer binary with KVWIRE_BUILD_FUZZ=ON.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/alloc_bound.h"
#include "fuzz/model_checks.h"
#include "model/gguf_reader.h"
#include "model/model_impl.h"

namespace kvwire {
namespace {

constexpr const char* kTarget = "fuzz_gguf";

[[noreturn]] void Fail(const char* what, const std::string& detail = "") {
  fuzz::ModelFail(kTarget, what, detail);
}

// ggml block layouts (elements per block, bytes per block), from ggml's type traits.
bool BlockOf(uint32_t type, uint64_t* elements, uint64_t* bytes) {
  struct Row {
    uint32_t type, elements, bytes;
  };
  static constexpr Row kRows[] = {
      {0, 1, 4},      {1, 1, 2},      {2, 32, 18},    {3, 32, 20},    {6, 32, 22},
      {7, 32, 24},    {8, 32, 34},    {9, 32, 36},    {10, 256, 84},  {11, 256, 110},
      {12, 256, 144}, {13, 256, 176}, {14, 256, 210}, {15, 256, 292}, {24, 1, 1},
      {25, 1, 2},     {26, 1, 4},     {27, 1, 8},     {28, 1, 8},     {30, 1, 2},
  };
  for (const Row& r : kRows) {
    if (r.type == type) {
      *elements = r.elements;
      *bytes = r.bytes;
      return true;
    }
  }
  return false;
}

bool AllowedError(StatusCode c) {
  return c == StatusCode::kCorrupt || c == StatusCode::kTruncated ||
         c == StatusCode::kVersionMismatch || c == StatusCode::kUnsupported;
}

void CheckFile(const model::GgufFile& f, std::span<const uint8_t> in) {
  using model::GgufType;
  if (f.version != 2 && f.version != 3) Fail("version");
  if (f.alignment == 0 || (f.alignment & (f.alignment - 1)) != 0 || f.alignment > 65536) {
    Fail("alignment is not a power of two <= 65536");
  }
  if (f.data_offset % f.alignment != 0) Fail("data section not aligned");
  if (!f.tensors.empty() && f.data_offset > in.size()) Fail("data section beyond the file");
  for (const auto& [key, v] : f.metadata) {
    if (f.Find(key) != &v) Fail("Find does not find a metadata key");
    if (v.type != GgufType::kArray) continue;
    if (v.array_type == GgufType::kString && v.strings.size() != v.array_count) {
      Fail("string array size differs from its count", key);
    }
    if (v.array_type != GgufType::kString && v.array_type != GgufType::kArray &&
        v.numbers.size() != v.array_count) {
      Fail("number array size differs from its count", key);
    }
  }
  if (f.tensor_index.size() != f.tensors.size()) Fail("tensor index size");
  std::vector<std::pair<uint64_t, uint64_t>> extents;
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    const model::GgufTensor& t = f.tensors[i];
    if (f.FindTensor(t.name) != &t) Fail("FindTensor does not find a tensor", t.name);
    if (t.dims.empty() || t.dims.size() > 4) Fail("tensor rank", t.name);
    uint64_t elements = 1;
    for (uint64_t d : t.dims) {
      if (d == 0 || d > (1ull << 40) / elements) Fail("tensor dimension", t.name);
      elements *= d;
    }
    if (t.elements() != elements) Fail("elements()", t.name);
    uint64_t block = 0, block_bytes = 0;
    if (!BlockOf(t.type, &block, &block_bytes)) Fail("tensor of an unknown type accepted", t.name);
    if (t.dims[0] % block != 0 || t.bytes != elements / block * block_bytes) {
      Fail("tensor byte size differs from its type and shape", t.name);
    }
    if (t.offset < f.data_offset || (t.offset - f.data_offset) % f.alignment != 0 ||
        t.offset > in.size() || t.bytes > in.size() - t.offset) {
      Fail("tensor outside the data section or unaligned", t.name);
    }
    if (t.bytes > 0) extents.emplace_back(t.offset, t.offset + t.bytes);
  }
  std::sort(extents.begin(), extents.end());
  for (size_t i = 1; i < extents.size(); ++i) {
    if (extents[i].first < extents[i - 1].second) Fail("two tensors overlap");
  }
}

void CheckDequantize(const model::GgufFile& f, std::span<const uint8_t> in) {
  for (const model::GgufTensor& t : f.tensors) {
    Result<std::vector<float>> v = [&] {
      fuzz::AllocBound bound(kTarget, in.size());
      return model::DequantizeGgufTensor(in, t);
    }();
    if (!v.ok()) {
      if (v.status().code() != StatusCode::kUnsupported) {
        Fail("dequantization refused a validated tensor", v.status().ToString());
      }
      continue;
    }
    if (v->size() != t.elements()) Fail("dequantized size", t.name);
    if (t.type == 0 && std::memcmp(v->data(), in.data() + t.offset, t.bytes) != 0) {
      Fail("F32 tensor differs from the input bytes", t.name);
    }
  }
}

bool SameFile(const model::GgufFile& a, const model::GgufFile& b) {
  if (a.version != b.version || a.alignment != b.alignment || a.data_offset != b.data_offset ||
      a.metadata.size() != b.metadata.size() || a.tensors.size() != b.tensors.size()) {
    return false;
  }
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const auto &x = a.tensors[i], &y = b.tensors[i];
    if (x.name != y.name || x.dims != y.dims || x.type != y.type || x.offset != y.offset ||
        x.bytes != y.bytes) {
      return false;
    }
  }
  return std::equal(a.metadata.begin(), a.metadata.end(), b.metadata.begin(),
                    [](const auto& x, const auto& y) {
                      const model::GgufValue &v = x.second, &w = y.second;
                      return x.first == y.first && v.type == w.type && v.integer == w.integer &&
                             v.str == w.str && v.strings == w.strings &&
                             v.array_count == w.array_count;
                    });
}

}  // namespace
}  // namespace kvwire

bool KvwireFuzzAccepts(std::span<const uint8_t> input) {
  return kvwire::model::ParseGguf(input).ok();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvwire;
  const std::span<const uint8_t> in(data, size);
  Result<model::GgufFile> f = [&] {
    fuzz::AllocBound bound(kTarget, size);
    return model::ParseGguf(in);
  }();
  if (!f.ok()) {
    if (!AllowedError(f.status().code())) Fail("unexpected error code", f.status().ToString());
    if (f.status().message().empty()) Fail("error without a message");
    return 0;
  }
  CheckFile(*f, in);
  auto again = model::ParseGguf(in);
  if (!again.ok() || !SameFile(*f, *again)) Fail("parsing is not deterministic");
  CheckDequantize(*f, in);

  Result<model::LoadedModel> lm = [&] {
    fuzz::AllocBound bound(kTarget, size);
    return model::LoadGgufModel(in);
  }();
  if (!lm.ok()) {
    if (!AllowedError(lm.status().code())) Fail("unexpected error code", lm.status().ToString());
    if (lm.status().message().empty()) Fail("error without a message");
    return 0;
  }
  fuzz::CheckLoadedModel(kTarget, *lm);
  const size_t tail = std::min<size_t>(size, 48);
  fuzz::CheckTokenizer(kTarget, lm->tokenizer,
                       std::string_view(reinterpret_cast<const char*>(data + size - tail), tail));
  fuzz::CheckModelFromBytes(kTarget, in, *lm);
  return 0;
}
