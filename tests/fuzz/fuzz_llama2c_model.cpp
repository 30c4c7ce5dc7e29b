// Fuzz target of the llama2.c model reader (src/model/llama2c_loader.cpp): a 7 x int32 header,
// then float32 weights in run.c's order. The input is the file.
//
// Nothing may crash, hang or allocate beyond a bound proportional to the input (alloc_bound.h);
// refusals are kCorrupt/kTruncated with a message. A model that loads must hold together: a
// valid configuration, weights of the sizes it implies (model_checks.h), and the weights are
// the input's floats: writing them back in the file's order, with the header and the skipped
// RoPE tables copied from the input, gives the input again byte for byte. Model::LoadFromBytes
// then loads it too and runs a token.
//
// A violated invariant calls Fail(), which aborts: a crash for libFuzzer and a failed ctest for
// the replay (replay_parser_main.cpp). Built as a libFuzzer binary with KVWIRE_BUILD_FUZZ=ON.
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "fuzz/alloc_bound.h"
#include "fuzz/model_checks.h"
#include "model/model_impl.h"

namespace kvwire {
namespace {

constexpr const char* kTarget = "fuzz_llama2c_model";

[[noreturn]] void Fail(const char* what, const std::string& detail = "") {
  fuzz::ModelFail(kTarget, what, detail);
}

// The file `lm` was read from, with the header and the RoPE tables (which the reader skips)
// taken from `in`.
std::vector<uint8_t> WriteBack(const model::LoadedModel& lm, std::span<const uint8_t> in) {
  std::vector<uint8_t> out(in.begin(), in.begin() + 28);
  auto put = [&](const std::vector<float>& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    out.insert(out.end(), p, p + v.size() * sizeof(float));
  };
  const model::ModelWeights& w = lm.weights;
  put(w.embedding);
  for (const auto& l : w.layers) put(l.attn_norm);
  for (const auto& l : w.layers) put(l.wq);
  for (const auto& l : w.layers) put(l.wk);
  for (const auto& l : w.layers) put(l.wv);
  for (const auto& l : w.layers) put(l.wo);
  for (const auto& l : w.layers) put(l.ffn_norm);
  for (const auto& l : w.layers) put(l.w1);
  for (const auto& l : w.layers) put(l.w2);
  for (const auto& l : w.layers) put(l.w3);
  put(w.final_norm);
  const uint64_t rope_bytes = uint64_t{lm.config.max_seq_len} * lm.config.head_dim / 2 * 2 * 4;
  if (out.size() + rope_bytes > in.size()) Fail("weights and RoPE tables exceed the input");
  out.insert(out.end(), in.begin() + out.size(), in.begin() + out.size() + rope_bytes);
  if (!lm.config.tied_output) put(w.output);
  return out;
}

}  // namespace
}  // namespace kvwire

bool KvwireFuzzAccepts(std::span<const uint8_t> input) {
  return kvwire::model::LoadLlama2cModel(input).ok();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvwire;
  const std::span<const uint8_t> in(data, size);
  Result<model::LoadedModel> lm = [&] {
    fuzz::AllocBound bound(kTarget, size);
    return model::LoadLlama2cModel(in);
  }();
  if (!lm.ok()) {
    const StatusCode c = lm.status().code();
    if (c != StatusCode::kCorrupt && c != StatusCode::kTruncated) {
      Fail("unexpected error code", lm.status().ToString());
    }
    if (lm.status().message().empty()) Fail("error without a message");
    return 0;
  }
  if (lm->config.format != "llama2c" || lm->config.head_dim * lm->config.heads != lm->config.dim) {
    Fail("format or head_dim");
  }
  fuzz::CheckLoadedModel(kTarget, *lm);
  const std::vector<uint8_t> back = WriteBack(*lm, in);
  if (back.size() != size || std::memcmp(back.data(), data, size) != 0) {
    Fail("weights written back differ from the input");
  }
  fuzz::CheckModelFromBytes(kTarget, in, *lm);
  return 0;
}
