// GPT-2-style byte-level BPE: the hand-written pre-tokenizers against Python's `re` running the
// original regular expressions (ASCII-translated: \p{L} -> [A-Za-z], \p{N} -> [0-9]), and
// ranked merges on a small vocabulary.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "kvwire/model.h"
#include "model/test_models.h"
#include "model/tokenizer_data.h"

namespace kvwire {
namespace {

std::string Hex(const std::string& s) {
  static const char* k = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) {
    h += k[c >> 4];
    h += k[c & 15];
  }
  return h;
}

TEST(Gpt2PreTokenizerTest, MatchesPythonRegexOnAsciiText) {
  if (std::system("/usr/bin/python3 -c 'import re' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "SKIPPED: /usr/bin/python3 not available";
  }
  const std::string dir = testing::ScratchDir("gpt2");
  std::mt19937 rng(5);
  const std::string alphabet = "aZ bQ'sdlvtmre019 \n\r\t.,!?-'";
  std::vector<std::string> texts = {"Hello world",    "I'm  here's 12345 apples!!\n\n  ok",
                                    "  leading",      "trailing   ",
                                    "x\r\n\r\n  y",   "'LL 'Re 'd",
                                    "a1b22c333d4444", " 42 .\n"};
  for (int i = 0; i < 300; ++i) {
    std::string t;
    const int len = 1 + i % 30;
    for (int k = 0; k < len; ++k) t += alphabet[rng() % alphabet.size()];
    texts.push_back(t);
  }
  {
    std::ofstream f(dir + "/in.txt");
    for (auto& t : texts) f << Hex(t) << "\n";
  }
  const std::string script = R"PY(
import re, sys
L, N = 'A-Za-z', '0-9'
gpt2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?[%s]+| ?[%s]+| ?[^\s%s%s]+|\s+(?!\S)|\s+" % (L, N, L, N)
def llama(num):
    return (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n%s%s]?[%s]+|[%s]%s| ?[^\s%s%s]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+") % (L, N, L, N, num, L, N)
pats = {'gpt2': gpt2, 'llama-bpe': llama('{1,3}'), 'qwen2': llama('')}
for line in open(sys.argv[1]):
    s = bytes.fromhex(line.strip()).decode()
    out = []
    for name in ('gpt2', 'llama-bpe', 'qwen2', 'smollm'):
        if name == 'smollm':
            pieces = []
            for part in re.split('([0-9])', s):
                if part:
                    pieces += [part] if re.fullmatch('[0-9]', part) else re.findall(gpt2, part)
        else:
            pieces = re.findall(pats[name], s)
        out.append(' '.join(p.encode().hex() for p in pieces))
    print('|'.join(out))
)PY";
  std::ofstream(dir + "/split.py") << script;
  ASSERT_EQ(
      std::system(("/usr/bin/python3 " + dir + "/split.py " + dir + "/in.txt > " + dir + "/out.txt")
                      .c_str()),
      0);
  std::ifstream in(dir + "/out.txt");
  std::string line;
  size_t row = 0;
  const char* names[] = {"gpt2", "llama-bpe", "qwen2", "smollm"};
  while (std::getline(in, line)) {
    ASSERT_LT(row, texts.size());
    std::vector<std::string> expected(4);
    std::stringstream ls(line);
    for (auto& e : expected) std::getline(ls, e, '|');
    for (int p = 0; p < 4; ++p) {
      std::string got;
      for (const auto& piece : model::PreTokenize(names[p], texts[row])) {
        got += (got.empty() ? "" : " ") + Hex(piece);
      }
      EXPECT_EQ(got, expected[p]) << names[p] << " on '" << texts[row] << "'";
    }
    ++row;
  }
  EXPECT_EQ(row, texts.size());
  std::filesystem::remove_all(dir);
}

TEST(Gpt2PreTokenizerTest, NonAsciiLettersStayInWords) {
  const auto p = model::PreTokenize("gpt2", "caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 ok");
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[0], "caf\xc3\xa9");
  EXPECT_EQ(p[1], " na\xc3\xafve");
  EXPECT_EQ(p[2], " \xe2\x80\x94");  // an em dash is punctuation
  EXPECT_EQ(p[3], " ok");
}

TEST(Gpt2BpeTest, RankedMergesAndRoundTrip) {
  auto d = std::make_shared<Tokenizer::Data>();
  d->kind = TokenizerKind::kMergeBpe;
  d->pre = "gpt2";
  // All 256 byte symbols of GPT-2's alphabet, then merged pieces.
  std::vector<std::string> bytes_alpha;
  {
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const uint32_t cp = printable ? b : 256 + extra++;
      std::string s;
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
      bytes_alpha.push_back(s);
    }
  }
  d->pieces = bytes_alpha;
  const std::string G = "\xc4\xa0";  // the GPT-2 symbol of a space
  for (const std::string& p :
       std::vector<std::string>{"th", "the", G + "t", G + "th", G + "the", "er", "he"}) {
    d->pieces.push_back(p);
  }
  d->merges = {"t h", "th e", G + " t", G + "t h", G + "th e", "e r", "h e"};
  model::FinalizeTokenizer(d.get());
  const Tokenizer t(d);
  auto ids = t.Encode("the other", false);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  // "the" -> t h e: "t h" (rank 0) before "h e" (rank 6) -> th e -> the.
  // " other" -> Ġ o t h e r: "t h" -> th; "th e" -> the; Ġ o stays; "e r" never applies
  // because e was merged into "the" first.
  auto id = [&](const std::string& p) {
    return static_cast<int32_t>(std::find(d->pieces.begin(), d->pieces.end(), p) -
                                d->pieces.begin());
  };
  EXPECT_EQ(*ids, (std::vector<int32_t>{id("the"), id(G), id("o"), id("the"), id("r")}));
  EXPECT_EQ(t.Decode(*ids), "the other");
  auto odd = t.Encode("\xc3\xa9\t\n", false);  // every byte has a symbol
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(t.Decode(*odd), "\xc3\xa9\t\n");
  d->pre = "falcon";
  EXPECT_EQ(Tokenizer(d).Encode("x").status().code(), StatusCode::kUnsupported);
}

}  // namespace
}  // namespace kvwire
