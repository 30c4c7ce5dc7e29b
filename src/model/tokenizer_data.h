// The data behind kvwire::Tokenizer, shared by the llama2.c and GGUF loaders.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvwire/model.h"

namespace kvwire {

struct Tokenizer::Data {
  TokenizerKind kind = TokenizerKind::kBytes;
  std::vector<std::string> pieces;  // as stored (SentencePiece marker or GPT-2 byte alphabet)
  std::vector<float> scores;        // kScoreBpe merge priorities
  std::vector<uint8_t> control;     // 1 = produces no text (BOS, EOS, unknown, control)
  int32_t bos = -1;
  int32_t eos = -1;
  int32_t unk = -1;
  bool add_bos = false;
  bool dummy_prefix = false;        // prepend a space before encoding (SentencePiece)
  std::string space_marker;         // "" (spaces as is) or U+2581 (GGUF SentencePiece vocab)
  std::vector<std::string> merges;  // kMergeBpe: "left right", by rank
  std::string pre;                  // kMergeBpe: pre-tokenizer name (GGUF tokenizer.ggml.pre)

  // Derived by Finalize().
  std::unordered_map<std::string, int32_t> lookup;      // piece -> first id with that piece
  std::array<int32_t, 256> byte_token{};                // fallback token per byte, -1 if none
  std::vector<int16_t> byte_value;                      // per token: byte of a "<0xXX>" token or -1
  std::unordered_map<std::string, int32_t> merge_rank;  // kMergeBpe: "left right" -> rank
};

namespace model {
/// Builds the lookup tables of `d` from its pieces (call once, after filling the fields above).
void FinalizeTokenizer(Tokenizer::Data* d);
/// Appends the tokens of `text` for a kMergeBpe tokenizer (tokenizer_gpt2.cpp).
Status EncodeMergeBpe(const Tokenizer::Data& d, std::string_view text, std::vector<int32_t>* ids);
/// The pre-tokenizer split of `text` ("gpt2", "llama-bpe", "qwen2", "smollm"), for tests.
std::vector<std::string> PreTokenize(std::string_view pre, std::string_view text);
}  // namespace model

}  // namespace kvwire
