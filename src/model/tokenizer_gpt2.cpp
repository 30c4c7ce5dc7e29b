// GPT-2-style byte-level BPE encoding (GGUF tokenizer.ggml.model == "gpt2"): split the text
// with the model's pre-tokenizer pattern, map each piece's bytes to GPT-2's printable
// alphabet, then apply the ranked merges (lowest rank first, leftmost on ties).
//
// The pre-tokenizer patterns are hand-written matchers equivalent to the regular expressions
// of GPT-2, Llama 3 ("llama-bpe"), Qwen2 and SmolLM. Letter/number/space classes are exact for
// ASCII; for other code points they follow the major Unicode blocks (an approximation of
// \p{L} / \p{N}, documented as such).
#include <queue>

#include "model/tokenizer_data.h"

namespace kvwire::model {
namespace {

enum class Pre { kGpt2, kLlama3, kQwen2, kSmollm };

bool InRanges(uint32_t cp, std::initializer_list<std::pair<uint32_t, uint32_t>> ranges) {
  for (auto [lo, hi] : ranges) {
    if (cp >= lo && cp <= hi) return true;
  }
  return false;
}

bool IsSpace(uint32_t cp) {
  return cp == ' ' || (cp >= '\t' && cp <= '\r') ||
         InRanges(cp, {{0x85, 0x85},
                       {0xA0, 0xA0},
                       {0x1680, 0x1680},
                       {0x2000, 0x200A},
                       {0x2028, 0x2029},
                       {0x202F, 0x202F},
                       {0x205F, 0x205F},
                       {0x3000, 0x3000}});
}

bool IsNumber(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return InRanges(cp, {{0xB2, 0xB3},
                       {0xB9, 0xB9},
                       {0xBC, 0xBE},
                       {0x660, 0x669},
                       {0x6F0, 0x6F9},
                       {0x7C0, 0x7C9},
                       {0x966, 0x96F},
                       {0x9E6, 0x9EF},
                       {0xE50, 0xE59},
                       {0x2070, 0x2070},
                       {0x2074, 0x2079},
                       {0x2080, 0x2089},
                       {0x2150, 0x2189},
                       {0x2460, 0x249B},
                       {0x24EA, 0x24FF},
                       {0x2776, 0x2793},
                       {0x3007, 0x3007},
                       {0x3021, 0x3029},
                       {0xFF10, 0xFF19}});
}

bool IsLetter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  if (cp == 0xAA || cp == 0xB5 || cp == 0xBA) return true;
  if (IsSpace(cp) || IsNumber(cp)) return false;
  // Controls, punctuation, symbols, combining marks, format characters, private use, emoji.
  return !InRanges(
      cp,
      {{0x80, 0xBF},     {0xD7, 0xD7},     {0xF7, 0xF7},       {0x2C2, 0x2C5},    {0x2D2, 0x2DF},
       {0x2E5, 0x2FF},   {0x300, 0x36F},   {0x483, 0x489},     {0x591, 0x5C7},    {0x600, 0x60F},
       {0x64B, 0x65F},   {0x2000, 0x206F}, {0x20A0, 0x20FF},   {0x2100, 0x214F},  {0x2190, 0x2BFF},
       {0x2E00, 0x2E7F}, {0x3000, 0x3004}, {0x3008, 0x3020},   {0x3030, 0x303F},  {0xD800, 0xF8FF},
       {0xFE00, 0xFE6F}, {0xFEFF, 0xFEFF}, {0xFF01, 0xFF0F},   {0xFF1A, 0xFF20},  {0xFF3B, 0xFF40},
       {0xFF5B, 0xFF65}, {0xFFF0, 0xFFFF}, {0x1F000, 0x1FAFF}, {0xE0000, 0xE007F}});
}

bool IsOther(uint32_t cp) { return !IsSpace(cp) && !IsLetter(cp) && !IsNumber(cp); }

struct Cps {
  std::vector<uint32_t> cp;    // code points
  std::vector<size_t> offset;  // byte offset of each code point (+ one past the end)
};

Cps Decode(std::string_view s) {
  Cps r;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (i + len > s.size()) len = 1;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<uint8_t>(s[i + k]) & 0xC0) != 0x80) len = 1;
    }
    uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) v = (v << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
    r.cp.push_back(v);
    r.offset.push_back(i);
    i += len;
  }
  r.offset.push_back(s.size());
  return r;
}

// Length (in code points) of the match at i, trying the pattern's alternatives in order.
size_t MatchAt(const std::vector<uint32_t>& c, size_t i, Pre pre) {
  size_t n = c.size();
  if (pre == Pre::kSmollm) {
    // SmolLM isolates every digit first, then applies the GPT-2 pattern to the pieces between.
    if (IsNumber(c[i])) return 1;
    n = i;
    while (n < c.size() && !IsNumber(c[n])) ++n;
  }
  auto lower = [](uint32_t x) { return x < 0x80 ? (x | 0x20) : x; };
  auto run = [&](size_t j, auto pred) {
    while (j < n && pred(c[j])) ++j;
    return j;
  };
  const bool llama3 = pre == Pre::kLlama3 || pre == Pre::kQwen2;
  // Contractions: 's 't 're 've 'm 'll 'd (case-insensitive for Llama 3 / Qwen2).
  if (c[i] == '\'' && i + 1 < n) {
    auto is = [&](size_t k, char ch) {
      return i + k < n && (llama3 ? lower(c[i + k]) : c[i + k]) == static_cast<uint32_t>(ch);
    };
    if (is(1, 's') || is(1, 't') || is(1, 'm') || is(1, 'd')) return 2;
    if ((is(1, 'r') && is(2, 'e')) || (is(1, 'v') && is(2, 'e')) || (is(1, 'l') && is(2, 'l'))) {
      return 3;
    }
  }
  if (llama3) {
    // [^\r\n\p{L}\p{N}]?\p{L}+
    {
      size_t j = i;
      if (c[j] != '\r' && c[j] != '\n' && !IsLetter(c[j]) && !IsNumber(c[j])) ++j;
      const size_t e = run(j, IsLetter);
      if (e > j) return e - i;  // (without the optional character c[i] would have to be a letter)
    }
    // \p{N}{1,3} (Qwen2: \p{N})
    if (IsNumber(c[i])) {
      const size_t e = run(i, IsNumber);
      return std::min<size_t>(e - i, pre == Pre::kQwen2 ? 1 : 3);
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    {
      const size_t j = c[i] == ' ' ? i + 1 : i;
      const size_t e = run(j, IsOther);
      if (e > j) return run(e, [](uint32_t x) { return x == '\r' || x == '\n'; }) - i;
    }
    // \s*[\r\n]+
    {
      const size_t e = run(i, IsSpace);
      size_t last_nl = n;
      for (size_t k = i; k < e; ++k) {
        if (c[k] == '\r' || c[k] == '\n') last_nl = k;
      }
      if (last_nl != n) return last_nl + 1 - i;
    }
  } else {
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
    const size_t j = c[i] == ' ' && i + 1 < n ? i + 1 : i;
    for (auto pred : {IsLetter, IsNumber, IsOther}) {
      if (pred(c[j])) {
        return run(j, pred) - i;
      }
    }
  }
  // \s+(?!\S) then \s+
  const size_t e = run(i, IsSpace);
  if (e == n) return e - i;
  return e - i >= 2 ? e - i - 1 : e - i;
}

std::string ByteToGpt2(uint8_t b) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t extra = 0;
    for (uint32_t x = 0; x < 256; ++x) {
      const bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174;
      t[x] = printable ? x : 256 + extra++;
    }
    return t;
  }();
  const uint32_t cp = table[b];
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

void MergeByRank(const Tokenizer::Data& d, std::vector<std::string>* sym) {
  const size_t n = sym->size();
  if (n < 2) return;
  std::vector<int32_t> next(n), prev(n);
  std::vector<uint8_t> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
    prev[i] = static_cast<int32_t>(i) - 1;
  }
  struct Cand {
    int32_t rank, left, right;
    size_t left_len, right_len;
  };
  auto worse = [](const Cand& a, const Cand& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    auto it = d.merge_rank.find((*sym)[l] + " " + (*sym)[r]);
    if (it != d.merge_rank.end()) heap.push({it->second, l, r, (*sym)[l].size(), (*sym)[r].size()});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i), static_cast<int32_t>(i + 1));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right ||
        (*sym)[c.left].size() != c.left_len || (*sym)[c.right].size() != c.right_len) {
      continue;
    }
    (*sym)[c.left] += (*sym)[c.right];
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left], c.left);
    push(c.left, next[c.left]);
  }
  std::vector<std::string> out;
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(std::move((*sym)[i]));
  *sym = std::move(out);
}

}  // namespace

std::vector<std::string> PreTokenize(std::string_view pre_name, std::string_view text) {
  const Pre pre = pre_name == "llama-bpe" ? Pre::kLlama3
                  : pre_name == "qwen2"   ? Pre::kQwen2
                  : pre_name == "smollm"  ? Pre::kSmollm
                                          : Pre::kGpt2;
  const Cps cps = Decode(text);
  std::vector<std::string> out;
  for (size_t i = 0; i < cps.cp.size();) {
    const size_t len = std::max<size_t>(1, MatchAt(cps.cp, i, pre));
    out.emplace_back(text.substr(cps.offset[i], cps.offset[i + len] - cps.offset[i]));
    i += len;
  }
  return out;
}

Status EncodeMergeBpe(const Tokenizer::Data& d, std::string_view text, std::vector<int32_t>* ids) {
  Pre pre;
  if (d.pre.empty() || d.pre == "gpt2" || d.pre == "default") {
    pre = Pre::kGpt2;
  } else if (d.pre == "llama-bpe" || d.pre == "llama3" || d.pre == "smaug-bpe") {
    pre = Pre::kLlama3;
  } else if (d.pre == "qwen2") {
    pre = Pre::kQwen2;
  } else if (d.pre == "smollm") {
    pre = Pre::kSmollm;
  } else {
    return Status(StatusCode::kUnsupported,
                  "GPT-2-style tokenizer with pre-tokenizer '" + d.pre +
                      "' is not implemented (gpt2, llama-bpe, qwen2, smollm are)");
  }
  const Cps cps = Decode(text);
  std::vector<std::string> sym;
  for (size_t i = 0; i < cps.cp.size();) {
    const size_t len = std::max<size_t>(1, MatchAt(cps.cp, i, pre));
    sym.clear();
    for (size_t b = cps.offset[i]; b < cps.offset[i + len]; ++b) {
      sym.push_back(ByteToGpt2(static_cast<uint8_t>(text[b])));
    }
    MergeByRank(d, &sym);
    for (const std::string& s : sym) {
      auto it = d.lookup.find(s);
      int32_t id = it != d.lookup.end() ? it->second : d.unk;
      KVWIRE_RETURN_ERROR_IF(id < 0, kInvalidArgument,
                             "tokenizer: no token for piece '" + s +
                                 "' (byte-level vocabulary "
                                 "without all 256 byte symbols?)");
      ids->push_back(id);
    }
    i += len;
  }
  return Status::Ok();
}

}  // namespace kvwire::model
