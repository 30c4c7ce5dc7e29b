// Tokenizers: byte-level, llama2.c score-merge BPE (against a literal transcription of
// llama2.c's quadratic merge loop), byte fallback, decoding, malformed tokenizer files.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "kvwire/model.h"
#include "model/test_models.h"

namespace kvwire {
namespace {

using testing::WriteLlama2cTokenizer;

// A SentencePiece-like llama2.c vocabulary: <unk>, BOS, EOS, 256 byte tokens, then pieces.
struct SpmVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
};

SpmVocab MakeSpmVocab(const std::vector<std::pair<std::string, float>>& extra) {
  SpmVocab v;
  v.pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  v.scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    v.pieces.push_back(buf);
    v.scores.push_back(0);
  }
  for (auto& [p, s] : extra) {
    v.pieces.push_back(p);
    v.scores.push_back(s);
  }
  return v;
}

Tokenizer Parse(const SpmVocab& v) {
  auto t = Tokenizer::ParseLlama2c(WriteLlama2cTokenizer(v.pieces, v.scores),
                                   static_cast<uint32_t>(v.pieces.size()));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : Tokenizer();
}

// llama2.c's encode(), transcribed literally (linear lookups, quadratic merging) as the oracle.
std::vector<int32_t> OracleEncode(const SpmVocab& v, const std::string& text, bool bos) {
  auto lookup = [&](const std::string& s) -> int32_t {
    for (size_t i = 0; i < v.pieces.size(); ++i) {
      if (v.pieces[i] == s) return static_cast<int32_t>(i);
    }
    return -1;
  };
  std::vector<int32_t> t;
  if (bos) t.push_back(1);
  if (!text.empty()) t.push_back(lookup(" "));
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<uint8_t>(text[i]) & 0xC0) != 0x80) buf.clear();
    buf += text[i];
    if (i + 1 < text.size() && (static_cast<uint8_t>(text[i + 1]) & 0xC0) == 0x80 &&
        buf.size() < 4) {
      continue;
    }
    const int32_t id = lookup(buf);
    if (id >= 0) {
      t.push_back(id);
    } else {
      for (char c : buf) t.push_back(static_cast<uint8_t>(c) + 3);
    }
    buf.clear();
  }
  for (;;) {
    float best = -1e10f;
    int32_t best_id = -1, best_idx = -1;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      const int32_t id = lookup(v.pieces[t[i]] + v.pieces[t[i + 1]]);
      if (id != -1 && v.scores[id] > best) {
        best = v.scores[id];
        best_id = id;
        best_idx = static_cast<int32_t>(i);
      }
    }
    if (best_idx < 0) break;
    t[best_idx] = best_id;
    t.erase(t.begin() + best_idx + 1);
  }
  return t;
}

TEST(TokenizerTest, BytesRoundTripAnyBytes) {
  const Tokenizer t = Tokenizer::Bytes();
  EXPECT_EQ(t.kind(), TokenizerKind::kBytes);
  EXPECT_EQ(t.size(), 256u);
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_FALSE(t.adds_bos());
  std::string s = "In the beginning\r\n\xff\x00\x80 \xc3\xa9";
  s.push_back('\0');
  auto ids = t.Encode(s);
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->size(), s.size());
  for (size_t i = 0; i < s.size(); ++i) EXPECT_EQ((*ids)[i], static_cast<uint8_t>(s[i]));
  EXPECT_EQ(t.Decode(*ids), s);
}

TEST(TokenizerTest, Llama2cByteLevelFileIsBytesWithoutBos) {
  std::vector<std::string> pieces;
  for (int b = 0; b < 256; ++b) pieces.emplace_back(1, static_cast<char>(b));
  auto t = Tokenizer::ParseLlama2c(WriteLlama2cTokenizer(pieces, std::vector<float>(256, 0)), 256);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->kind(), TokenizerKind::kBytes);
  EXPECT_FALSE(t->adds_bos());
  auto ids = t->Encode("And God said");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 12u);  // no BOS, no dummy prefix
  EXPECT_EQ((*ids)[0], 'A');
  EXPECT_EQ(t->Decode(*ids), "And God said");
}

TEST(TokenizerTest, ScoreMergesPickHighestScoreThenLeftmost) {
  // "aaa": pairs (a,a) at 0 and 1 tie -> the leftmost merges first -> "aa" + "a".
  const SpmVocab v = MakeSpmVocab(
      {{" ", -1}, {"a", -1}, {"b", -1}, {"aa", 5}, {"ab", 3}, {"ba", 4}, {" a", 1}, {"aab", 9}});
  const Tokenizer t = Parse(v);
  ASSERT_EQ(t.kind(), TokenizerKind::kScoreBpe);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  auto id = [&](const std::string& p) {
    return static_cast<int32_t>(std::find(v.pieces.begin(), v.pieces.end(), p) - v.pieces.begin());
  };
  auto aaa = t.Encode("aaa", false);
  ASSERT_TRUE(aaa.ok());
  // " ", a, a, a -> (a,a)@1 = 5 wins over " a" = 1 -> " ", aa, a -> nothing else merges.
  EXPECT_EQ(*aaa, (std::vector<int32_t>{id(" "), id("aa"), id("a")}));
  auto aab = t.Encode("aab", true);
  ASSERT_TRUE(aab.ok());
  EXPECT_EQ(*aab, (std::vector<int32_t>{1, id(" "), id("aab")}));
  EXPECT_EQ(*aab, OracleEncode(v, "aab", true));
  EXPECT_EQ(t.Decode(*aab), "aab");  // the dummy-prefix space is dropped after BOS
}

TEST(TokenizerTest, MatchesLlama2cOracleOnRandomText) {
  std::mt19937 rng(7);
  const std::string alphabet = "ab c\n\xc3\xa9";  // includes a 2-byte code point not in vocab
  std::vector<std::pair<std::string, float>> extra = {
      {" ", 0}, {"a", 0}, {"b", 0}, {"c", 0}, {"\n", 0}};
  std::uniform_real_distribution<float> score(-5, 5);
  std::uniform_int_distribution<int> pick(0, 3);
  const char* atoms[] = {"a", "b", "c", " "};
  for (int i = 0; i < 60; ++i) {  // random multi-character pieces with random scores
    std::string p;
    const int len = 2 + i % 4;
    for (int k = 0; k < len; ++k) p += atoms[pick(rng)];
    extra.emplace_back(p, score(rng));
  }
  const SpmVocab v = MakeSpmVocab(extra);
  const Tokenizer t = Parse(v);
  std::uniform_int_distribution<int> ch(0, static_cast<int>(alphabet.size()) - 1);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    const int len = trial % 40;
    for (int k = 0; k < len; ++k) {
      const int c = ch(rng);
      if (static_cast<uint8_t>(alphabet[c]) == 0xc3 || static_cast<uint8_t>(alphabet[c]) == 0xa9) {
        text += "\xc3\xa9";
      } else {
        text += alphabet[c];
      }
    }
    auto ids = t.Encode(text, trial % 2 == 0);
    ASSERT_TRUE(ids.ok());
    ASSERT_EQ(*ids, OracleEncode(v, text, trial % 2 == 0)) << "text '" << text << "'";
    EXPECT_EQ(t.Decode(*ids), text);
  }
}

TEST(TokenizerTest, ByteFallbackAndDecode) {
  const SpmVocab v = MakeSpmVocab({{" ", -1}, {"x", -1}});
  const Tokenizer t = Parse(v);
  auto ids = t.Encode("x\xc3\xa9", false);  // "é" is not in the vocabulary
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->size(), 4u);
  EXPECT_EQ((*ids)[2], 0xC3 + 3);
  EXPECT_EQ((*ids)[3], 0xA9 + 3);
  EXPECT_EQ(t.Decode(*ids), "x\xc3\xa9");
  EXPECT_EQ(t.DecodeNext(-1, 1), "");  // BOS produces no text
}

TEST(TokenizerTest, MalformedFilesAreErrors) {
  const SpmVocab v = MakeSpmVocab({{" ", 0}});
  const auto good = WriteLlama2cTokenizer(v.pieces, v.scores);
  const auto n = static_cast<uint32_t>(v.pieces.size());
  for (size_t cut = 0; cut < good.size(); cut += 7) {
    auto t = Tokenizer::ParseLlama2c(std::span<const uint8_t>(good.data(), cut), n);
    EXPECT_FALSE(t.ok()) << "cut at " << cut;
  }
  auto bad = good;
  const int32_t huge = 0x7fffffff;
  std::memcpy(bad.data() + 4 + 4, &huge, 4);  // first entry's length
  auto t = Tokenizer::ParseLlama2c(bad, n);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kCorrupt);
  EXPECT_FALSE(Tokenizer::ParseLlama2c(good, 0).ok());
  EXPECT_FALSE(Tokenizer::LoadLlama2c("/nonexistent/tokenizer.bin", 10).ok());
  EXPECT_FALSE(Tokenizer().Encode("x").ok());
}

// The entry count comes from the model's header: a count the file cannot hold is refused
// before the vocabulary tables are sized from it (2^24 - 1 entries would be 512 MiB of strings).
TEST(TokenizerTest, VocabSizeBeyondTheFileIsRefusedBeforeAllocating) {
  const auto one = WriteLlama2cTokenizer({"a"}, {0.0f});  // 13 bytes: one entry
  auto t = Tokenizer::ParseLlama2c(one, (1u << 24) - 1);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kTruncated);
  EXPECT_NE(t.status().message().find("cannot hold"), std::string::npos)
      << t.status().ToString();
  EXPECT_EQ(Tokenizer::ParseLlama2c(one, 2).status().code(), StatusCode::kTruncated);
  ASSERT_TRUE(Tokenizer::ParseLlama2c(one, 1).ok());
}

TEST(TokenizerTest, Stories260KTokenizer) {
  const std::string shared = testing::TestDataDir();
  if (shared.empty()) GTEST_SKIP() << testing::kTestDataMissing;
  auto t = Tokenizer::LoadLlama2c(shared + "/models/stories260K/tok512.bin", 512);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->kind(), TokenizerKind::kScoreBpe);
  auto ids = t->Encode("Once upon a time");
  ASSERT_TRUE(ids.ok());
  // Agrees with tools/llama2c_reference.py (an independent implementation of run.c).
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 403, 407, 261, 378}));
  std::ifstream f(shared + "/text/TinyStories-valid-sample.txt", std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  auto all = t->Encode(ss.str());
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 15555u);  // as tools/llama2c_reference.py counts
  EXPECT_EQ(t->Decode(*all), ss.str());
}

}  // namespace
}  // namespace kvwire
