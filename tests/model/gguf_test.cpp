// GGUF models, written by the test's own GGUF writer: the same weights give the same logits as
// the llama2.c file (F32 exactly; F16/Q8_0 exactly as the rounded weights), qwen2 (neox RoPE,
// Q/K/V biases) agrees with the naive reference, the vocabulary becomes a tokenizer, and
// malformed files are refused without crashing.
#include <gtest/gtest.h>

#include <random>

#include "kvwire/model.h"
#include "model/test_models.h"

namespace kvwire {
namespace {

using testing::GgmlT;
using testing::GgufWriter;
using testing::MakeTinyModel;
using testing::NaiveForward;
using testing::RelativeError;
using testing::RoundTripModel;
using testing::TinyConfig;
using testing::TinyModel;
using testing::WriteGguf;
using testing::WriteLlama2c;

std::vector<float> Logits(const std::vector<uint8_t>& file, const std::vector<int32_t>& tokens,
                          std::unique_ptr<Model>* keep = nullptr) {
  auto m = Model::LoadFromBytes(file, "model");
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (!m.ok()) return {};
  auto seq = (*m)->NewSequence(static_cast<uint32_t>(tokens.size()));
  std::vector<float> logits;
  EXPECT_TRUE((*m)->Forward(&*seq, tokens, {}, &logits).ok());
  if (keep) *keep = std::move(m).value();
  return logits;
}

std::vector<int32_t> Tokens(size_t n, uint32_t vocab) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 7 + 3) % vocab);
  return t;
}

TinyConfig GgufConfig(bool tied) {
  TinyConfig c;
  c.dim = 64;  // rows of 64: whole Q8_0 blocks
  c.hidden = 96;
  c.heads = 4;
  c.kv_heads = 2;
  c.vocab = 48;
  c.tied = tied;
  return c;
}

TEST(GgufTest, SameWeightsSameLogitsAsLlama2c) {
  const auto tokens = Tokens(40, 48);
  for (bool tied : {true, false}) {
    for (GgmlT t : {GgmlT::kF32, GgmlT::kF16, GgmlT::kQ8_0}) {
      const TinyModel m = MakeTinyModel(GgufConfig(tied), 17);
      std::unique_ptr<Model> g;
      const auto from_gguf = Logits(WriteGguf(m, t, "llama"), tokens, &g);
      const auto from_l2c = Logits(WriteLlama2c(RoundTripModel(m, t)), tokens);
      ASSERT_FALSE(from_gguf.empty());
      // Same float weights, same arithmetic: bit-identical.
      EXPECT_EQ(from_gguf, from_l2c) << "tied=" << tied << " type=" << int(t);
      EXPECT_EQ(g->config().format, "gguf");
      EXPECT_EQ(g->config().name, "tiny-test");
      EXPECT_EQ(g->config().tied_output, tied);
      EXPECT_EQ(g->config().rope_style, RopeStyle::kInterleaved);
      EXPECT_EQ(g->kv_metadata().rope_style, "interleaved");
    }
  }
}

TEST(GgufTest, Qwen2NeoxWithPermutedWeightsEqualsLlama) {
  const TinyModel m = MakeTinyModel(GgufConfig(true), 23);
  const auto tokens = Tokens(33, 48);
  std::unique_ptr<Model> q;
  const auto neox =
      Logits(WriteGguf(testing::InterleavedToNeox(m), GgmlT::kF32, "qwen2"), tokens, &q);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->config().rope_style, RopeStyle::kNeox);
  EXPECT_EQ(q->kv_metadata().rope_style, "neox");
  EXPECT_LT(RelativeError(neox, Logits(WriteLlama2c(m), tokens)), 1e-5);
}

TEST(GgufTest, Qwen2BiasesMatchNaiveReference) {
  TinyConfig c = GgufConfig(false);
  c.qkv_bias = true;
  c.neox = true;
  c.theta = 1000000.0f;
  c.eps = 1e-6f;
  const TinyModel m = MakeTinyModel(c, 29);
  const auto tokens = Tokens(30, 48);
  std::unique_ptr<Model> q;
  const auto got = Logits(WriteGguf(m, GgmlT::kF32, "qwen2"), tokens, &q);
  ASSERT_TRUE(q);
  EXPECT_TRUE(q->config().qkv_bias);
  EXPECT_EQ(q->config().rope_theta, 1000000.0);
  EXPECT_LT(RelativeError(got, NaiveForward(m, tokens)), 1e-5);
  // The biases matter: the same model without them is different.
  TinyModel nb = m;
  for (auto& l : nb.layers) l.bq.clear(), l.bk.clear(), l.bv.clear();
  EXPECT_GT(RelativeError(Logits(WriteGguf(nb, GgmlT::kF32, "qwen2"), tokens), got), 1e-3);
}

GgufWriter SpmVocab(std::vector<std::string>* pieces) {
  *pieces = {"<unk>", "<s>", "</s>"};
  std::vector<float> scores = {0, 0, 0};
  std::vector<int32_t> types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    pieces->push_back(buf);
    scores.push_back(0);
    types.push_back(6);
  }
  const std::vector<std::pair<std::string, float>> words = {{"\xe2\x96\x81", -1},
                                                            {"h", -2},
                                                            {"e", -2},
                                                            {"l", -2},
                                                            {"o", -2},
                                                            {"w", -2},
                                                            {"r", -2},
                                                            {"d", -2},
                                                            {"he", -1.5f},
                                                            {"ll", -1.4f},
                                                            {"hell", -1},
                                                            {"hello", -0.5f},
                                                            {"\xe2\x96\x81hello", -0.1f},
                                                            {"\xe2\x96\x81w", -1.2f},
                                                            {"or", -1.3f},
                                                            {"\xe2\x96\x81wor", -1},
                                                            {"\xe2\x96\x81world", -0.2f},
                                                            {"ld", -1.1f}};
  for (auto& [p, s] : words) {
    pieces->push_back(p);
    scores.push_back(s);
    types.push_back(1);
  }
  GgufWriter w;
  w.KvStr("tokenizer.ggml.model", "llama");
  w.KvStrArr("tokenizer.ggml.tokens", *pieces);
  w.KvF32Arr("tokenizer.ggml.scores", scores);
  w.KvI32Arr("tokenizer.ggml.token_type", types);
  w.KvU32("tokenizer.ggml.bos_token_id", 1);
  w.KvU32("tokenizer.ggml.eos_token_id", 2);
  w.KvU32("tokenizer.ggml.unknown_token_id", 0);
  return w;
}

TEST(GgufTest, SentencePieceVocabularyBecomesTokenizer) {
  std::vector<std::string> pieces;
  GgufWriter w = SpmVocab(&pieces);
  TinyConfig c = GgufConfig(true);
  c.vocab = static_cast<uint32_t>(pieces.size());
  auto m = Model::LoadFromBytes(WriteGguf(MakeTinyModel(c, 3), GgmlT::kF32, "llama", &w), "m.gguf");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE((*m)->TokenizerStatus().ok());
  const Tokenizer& t = (*m)->tokenizer();
  EXPECT_EQ(t.kind(), TokenizerKind::kScoreBpe);
  EXPECT_TRUE(t.adds_bos());
  auto id = [&](const std::string& p) {
    return static_cast<int32_t>(std::find(pieces.begin(), pieces.end(), p) - pieces.begin());
  };
  auto ids = t.Encode("hello world");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, id("\xe2\x96\x81hello"), id("\xe2\x96\x81world")}));
  EXPECT_EQ(t.Decode(*ids), "hello world");
  auto odd = t.Encode("hi\n", false);  // 'i' and '\n' are not pieces: byte fallback
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(t.Decode(*odd), "hi\n");
  EXPECT_EQ((*odd)[2], 3 + 'i');
}

TEST(GgufTest, Gpt2VocabularyBecomesTokenizer) {
  GgufWriter w;
  // GPT-2 byte alphabet: space is U+0120 ("Ġ"), printable ASCII is itself.
  const std::string G = "\xc4\xa0";
  const std::vector<std::string> pieces = {"H", "i", "t", G + "there", "Hi",  "<|end|>", G,
                                           "h", "e", "r", "th",        "the", "ther",    "there"};
  w.KvStr("tokenizer.ggml.model", "gpt2");
  w.KvStr("tokenizer.ggml.pre", "gpt2");
  w.KvStrArr("tokenizer.ggml.tokens", pieces);
  w.KvI32Arr("tokenizer.ggml.token_type", {1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1, 1});
  w.KvStrArr("tokenizer.ggml.merges", {"H i", "t h", "th e", "the r", "ther e", G + " there"});
  w.KvU32("tokenizer.ggml.eos_token_id", 5);
  TinyConfig c = GgufConfig(true);
  c.vocab = 48;
  auto m = Model::LoadFromBytes(WriteGguf(MakeTinyModel(c, 3), GgmlT::kF32, "llama", &w), "m.gguf");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const Tokenizer& t = (*m)->tokenizer();
  EXPECT_EQ(t.kind(), TokenizerKind::kMergeBpe);
  EXPECT_EQ(t.Decode(std::vector<int32_t>{4, 3, 5}), "Hi there");
  // This toy vocabulary lacks most byte symbols, so text outside it cannot be encoded...
  EXPECT_FALSE(t.Encode("xyz").ok());
  // ...but text made of its pieces can (the default gpt2 pre-tokenizer, no BOS).
  auto ids = t.Encode("Hi there");
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(*ids, (std::vector<int32_t>{4, 3}));
  EXPECT_TRUE((*m)->TokenizerStatus().code() != StatusCode::kOk);  // cannot encode "a"
}

// ---- malformed files ------------------------------------------------------------------------

std::vector<uint8_t> SmallGguf() {
  TinyConfig c = GgufConfig(true);
  c.layers = 1;
  c.hidden = 32;
  std::vector<std::string> pieces;
  GgufWriter w = SpmVocab(&pieces);
  c.vocab = static_cast<uint32_t>(pieces.size());
  return WriteGguf(MakeTinyModel(c, 5), GgmlT::kQ8_0, "llama", &w);
}

TEST(GgufTest, EveryTruncationIsAnError) {
  const auto good = SmallGguf();
  ASSERT_TRUE(Model::LoadFromBytes(good, "g").ok());
  for (size_t cut = 0; cut < good.size(); cut += (cut < 8192 ? 1 : 97)) {
    auto r = Model::LoadFromBytes(std::span<const uint8_t>(good.data(), cut), "g");
    ASSERT_FALSE(r.ok()) << "cut " << cut;
  }
}

TEST(GgufTest, RandomCorruptionNeverCrashes) {
  const auto good = SmallGguf();
  std::mt19937 rng(99);
  int refused = 0;
  for (int trial = 0; trial < 400; ++trial) {
    auto bad = good;
    const int flips = 1 + trial % 4;
    for (int f = 0; f < flips; ++f) {
      // Mostly inside the header/metadata/tensor table, where lengths and counts live.
      const size_t at = rng() % std::min<size_t>(bad.size(), trial % 2 ? 12000 : bad.size());
      bad[at] = static_cast<uint8_t>(rng());
    }
    auto r = Model::LoadFromBytes(bad, "g");  // ok or a clean error; never a crash
    refused += !r.ok();
  }
  EXPECT_GT(refused, 0);
}

TEST(GgufTest, SpecificDefectsGetSpecificErrors) {
  const TinyModel m = MakeTinyModel(GgufConfig(true), 2);
  auto load = [](const std::vector<uint8_t>& b) { return Model::LoadFromBytes(b, "g").status(); };
  auto gguf = WriteGguf(m, GgmlT::kF32, "llama");
  ASSERT_TRUE(load(gguf).ok());

  auto v1 = gguf;
  v1[4] = 1;
  EXPECT_EQ(load(v1).code(), StatusCode::kVersionMismatch);
  auto many = gguf;
  const uint64_t huge = 1ull << 50;
  std::memcpy(many.data() + 8, &huge, 8);  // tensor count
  EXPECT_EQ(load(many).code(), StatusCode::kCorrupt);
  auto kvs = gguf;
  std::memcpy(kvs.data() + 16, &huge, 8);  // metadata count
  EXPECT_EQ(load(kvs).code(), StatusCode::kCorrupt);
  auto keylen = gguf;
  std::memcpy(keylen.data() + 24, &huge, 8);  // first key's length
  EXPECT_EQ(load(keylen).code(), StatusCode::kCorrupt);

  EXPECT_EQ(load(WriteGguf(m, GgmlT::kF32, "gpt2")).code(), StatusCode::kUnsupported);
  {
    GgufWriter w;
    w.KvStr("llama.rope.scaling.type", "yarn");
    EXPECT_EQ(load(WriteGguf(m, GgmlT::kF32, "llama", &w)).code(), StatusCode::kUnsupported);
  }
  auto patch_after = [](std::vector<uint8_t> b, const std::string& key, std::ptrdiff_t skip,
                        const void* value, size_t n) {
    auto it = std::search(b.begin(), b.end(), key.begin(), key.end());
    EXPECT_NE(it, b.end()) << key;
    if (it != b.end()) std::memcpy(&*it + key.size() + skip, value, n);
    return b;
  };
  {
    // A known type the runner does not dequantize (Q4_0): the tensor's type field follows its
    // name, rank and two dimensions.
    const uint32_t q4_0 = 2;
    EXPECT_EQ(load(patch_after(gguf, "token_embd.weight", 4 + 16, &q4_0, 4)).code(),
              StatusCode::kUnsupported);
    const uint32_t q4_k = 12;  // 256-element blocks do not divide a 64-element row
    EXPECT_EQ(load(patch_after(gguf, "token_embd.weight", 4 + 16, &q4_k, 4)).code(),
              StatusCode::kCorrupt);
    const uint32_t unknown = 99;
    EXPECT_EQ(load(patch_after(gguf, "token_embd.weight", 4 + 16, &unknown, 4)).code(),
              StatusCode::kUnsupported);
    const uint64_t far = 1ull << 40;  // its offset: outside the data section
    EXPECT_EQ(load(patch_after(gguf, "token_embd.weight", 4 + 16 + 4, &far, 8)).code(),
              StatusCode::kTruncated);
    const uint64_t unaligned = 4;
    EXPECT_EQ(load(patch_after(gguf, "token_embd.weight", 4 + 16 + 4, &unaligned, 8)).code(),
              StatusCode::kCorrupt);
    const uint64_t zero = 0;  // a zero dimension
    EXPECT_EQ(load(patch_after(gguf, "token_embd.weight", 4, &zero, 8)).code(),
              StatusCode::kCorrupt);
  }
  {
    // The metadata says ffn 80, the tensors are 96 wide; a required tensor is missing.
    const uint32_t ffn = 80;
    EXPECT_EQ(load(patch_after(gguf, "llama.feed_forward_length", 4, &ffn, 4)).code(),
              StatusCode::kCorrupt);
    EXPECT_EQ(load(patch_after(gguf, "output_norm.weight", -1, "X", 1)).code(),
              StatusCode::kCorrupt);
    const uint32_t zero = 0;
    EXPECT_EQ(load(patch_after(gguf, "llama.attention.head_count", 4, &zero, 4)).code(),
              StatusCode::kCorrupt);
  }
}

// A tensor count the file cannot hold is refused before the tensor table is sized from it
// (2^20 entries would be tens of MB for a 24-byte file).
TEST(GgufTest, TensorCountBeyondTheFileIsRefused) {
  std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
  testing::Put(&b, uint32_t{3});
  testing::Put(&b, uint64_t{1} << 20);  // tensors
  testing::Put(&b, uint64_t{0});        // metadata entries
  const Status s = Model::LoadFromBytes(b, "g").status();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("do not fit"), std::string::npos) << s.ToString();
}

// Two tensors over the same bytes are refused: otherwise a small file could stand for many
// copies of one large tensor, each dequantized into its own buffer.
TEST(GgufTest, OverlappingTensorsAreRefused) {
  const TinyModel m = MakeTinyModel(GgufConfig(true), 2);
  auto gguf = WriteGguf(m, GgmlT::kF32, "llama");
  ASSERT_TRUE(Model::LoadFromBytes(gguf, "g").ok());
  const std::string name = "blk.0.attn_k.weight";
  auto it = std::search(gguf.begin(), gguf.end(), name.begin(), name.end());
  ASSERT_NE(it, gguf.end());
  const uint64_t zero = 0;  // its offset (after rank, two dimensions, type): token_embd's
  std::memcpy(&*it + name.size() + 4 + 16 + 4, &zero, 8);
  const Status s = Model::LoadFromBytes(gguf, "g").status();
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("overlaps"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace kvwire
