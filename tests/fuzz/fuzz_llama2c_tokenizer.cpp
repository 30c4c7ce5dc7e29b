// Fuzz target of the llama2.c tokenizer reader (Tokenizer::ParseLlama2c, src/model/tokenizer.cpp):
// u32 max_token_length, then per entry f32 score, u32 length, bytes. The entry count is not in
// the file; it comes from the model's header (another untrusted file).
//
// Input: bytes 0-2 are the vocabulary size the model would announce (little-endian, 0..2^24-1),
// the rest is the tokenizer.bin.
//
// Nothing may crash, hang or allocate beyond a bound proportional to the input (alloc_bound.h),
// whatever the announced size; refusals carry a message. A tokenizer that loads has exactly
// the announced entries, each the bytes of its entry in the file; it is byte-level exactly when
// its 256 entries are the 256 bytes; it encodes text to ids of its vocabulary and a byte-level
// one round-trips (model_checks.h).
//
// A violated invariant calls Fail(), which aborts: a crash for libFuzzer and a failed ctest for
// the replay (replay_parser_main.cpp). Built as a libFuzzer binary with KVWIRE_BUILD_FUZZ=ON.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "fuzz/alloc_bound.h"
#include "fuzz/model_checks.h"
#include "kvwire/model.h"

namespace kvwire {
namespace {

constexpr const char* kTarget = "fuzz_llama2c_tokenizer";

[[noreturn]] void Fail(const char* what, const std::string& detail = "") {
  fuzz::ModelFail(kTarget, what, detail);
}

uint32_t VocabOf(std::span<const uint8_t> in) {
  uint32_t v = 0;
  for (size_t i = 0; i < 3 && i < in.size(); ++i) v |= uint32_t{in[i]} << (8 * i);
  return v;
}

std::span<const uint8_t> FileOf(std::span<const uint8_t> in) {
  return in.subspan(std::min<size_t>(3, in.size()));
}

// Each entry's piece is the entry's bytes in the file.
void CheckPieces(const Tokenizer& tok, std::span<const uint8_t> file) {
  size_t off = 4;
  bool bytes_only = tok.size() == 256;
  for (uint32_t i = 0; i < tok.size(); ++i) {
    uint32_t len = 0;
    if (off + 8 > file.size()) Fail("an entry lies beyond the file");
    std::memcpy(&len, file.data() + off + 4, 4);
    off += 8;
    if (len > file.size() - off) Fail("an entry's bytes lie beyond the file");
    const std::string_view piece = tok.Piece(static_cast<int32_t>(i));
    if (piece.size() != len || (len > 0 && std::memcmp(piece.data(), file.data() + off, len) != 0)) {
      Fail("a piece differs from its entry in the file", std::to_string(i));
    }
    bytes_only = bytes_only && len == 1 && file[off] == i;
    off += len;
  }
  if (bytes_only != (tok.kind() == TokenizerKind::kBytes)) {
    Fail("byte-level exactly when the 256 entries are the 256 bytes");
  }
}

}  // namespace
}  // namespace kvwire

bool KvwireFuzzAccepts(std::span<const uint8_t> input) {
  return kvwire::Tokenizer::ParseLlama2c(kvwire::FileOf(input), kvwire::VocabOf(input)).ok();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvwire;
  const std::span<const uint8_t> in(data, size);
  const uint32_t vocab = VocabOf(in);
  const std::span<const uint8_t> file = FileOf(in);
  Result<Tokenizer> tok = [&] {
    fuzz::AllocBound bound(kTarget, size);
    return Tokenizer::ParseLlama2c(file, vocab);
  }();
  if (!tok.ok()) {
    const StatusCode c = tok.status().code();
    if (c != StatusCode::kCorrupt && c != StatusCode::kTruncated &&
        c != StatusCode::kInvalidArgument) {
      Fail("unexpected error code", tok.status().ToString());
    }
    if (c == StatusCode::kInvalidArgument && vocab != 0) Fail("a valid vocab size refused");
    if (tok.status().message().empty()) Fail("error without a message");
    return 0;
  }
  if (tok->size() != vocab) Fail("entry count differs from the announced size");
  CheckPieces(*tok, file);
  if (tok->kind() == TokenizerKind::kScoreBpe &&
      (tok->bos_id() != (vocab > 1 ? 1 : -1) || tok->eos_id() != (vocab > 2 ? 2 : -1))) {
    Fail("llama2.c BOS/EOS conventions");
  }
  const size_t tail = std::min<size_t>(file.size(), 48);
  fuzz::CheckTokenizer(
      kTarget, *tok,
      std::string_view(reinterpret_cast<const char*>(file.data() + file.size() - tail), tail));
  return 0;
}
