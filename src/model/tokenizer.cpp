// Tokenizers: byte-level, llama2.c/SentencePiece score-merge BPE, GPT-2 merge BPE (decode only).
#include <cstdio>
#include <cstring>
#include <queue>

#include "kvwire/kv_file.h"
#include "model/tokenizer_data.h"

namespace kvwire {
namespace {

constexpr char kSpaceMarker[] = "\xe2\x96\x81";  // U+2581, SentencePiece's visible space
constexpr float kNoMergeScore = -1e10f;          // llama2.c never merges at or below this

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::string HexByte(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%02X", b);
  return buf;
}

// GPT-2 maps every byte to a printable code point; this is the inverse (code point -> byte).
int Gpt2ByteOfCodepoint(uint32_t cp) {
  static const std::array<int, 512> table = [] {
    std::array<int, 512> t;
    t.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      t[printable ? b : 256 + extra++] = b;
    }
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

// Decodes one UTF-8 code point at s[i]; returns its length (1 for an invalid byte).
size_t Utf8Next(std::string_view s, size_t i, uint32_t* cp) {
  const auto c = static_cast<uint8_t>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + len > s.size()) len = 1;
  uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) v = (v << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3f);
  *cp = v;
  return len;
}

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s.compare(i, from.size(), from) == 0) {
      out += to;
      i += from.size();
    } else {
      out += s[i++];
    }
  }
  return out;
}

// Greedy highest-score pair merging, identical in result to llama2.c's quadratic loop (which
// takes the leftmost pair on ties) but O(n log n): candidate pairs live in a heap ordered by
// (score desc, position asc) and stale entries are skipped when popped.
void MergeByScore(const Tokenizer::Data& d, std::vector<int32_t>* ids) {
  const size_t n = ids->size();
  if (n < 2) return;
  std::vector<int32_t> tok = *ids;
  std::vector<int32_t> prev(n), next(n);
  std::vector<uint8_t> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i) + 1 : -1;
  }
  struct Cand {
    float score;
    int32_t left, right, left_id, right_id, merged;
  };
  auto worse = [](const Cand& a, const Cand& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  std::string buf;
  auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    buf = d.pieces[tok[l]];
    buf += d.pieces[tok[r]];
    auto it = d.lookup.find(buf);
    if (it == d.lookup.end()) return;
    const float s = d.scores[it->second];
    if (!(s > kNoMergeScore)) return;
    heap.push({s, l, r, tok[l], tok[r], it->second});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i), static_cast<int32_t>(i + 1));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || tok[c.left] != c.left_id ||
        tok[c.right] != c.right_id) {
      continue;
    }
    tok[c.left] = c.merged;
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left], c.left);
    push(c.left, next[c.left]);
  }
  ids->clear();
  for (int32_t i = 0; i >= 0; i = next[i]) ids->push_back(tok[i]);
}

}  // namespace

namespace model {

void FinalizeTokenizer(Tokenizer::Data* d) {
  const size_t n = d->pieces.size();
  d->scores.resize(n, 0.0f);
  d->control.resize(n, 0);
  d->lookup.clear();
  d->lookup.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) d->lookup.emplace(d->pieces[i], static_cast<int32_t>(i));
  d->byte_token.fill(-1);
  d->byte_value.assign(n, -1);
  if (d->kind == TokenizerKind::kBytes) {
    for (int b = 0; b < 256; ++b) d->byte_token[b] = b;
    return;
  }
  if (d->kind == TokenizerKind::kScoreBpe) {
    for (size_t i = 0; i < n; ++i) {
      const std::string& p = d->pieces[i];
      if (p.size() == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x' && p[5] == '>' &&
          HexDigit(p[3]) >= 0 && HexDigit(p[4]) >= 0) {
        const int b = HexDigit(p[3]) * 16 + HexDigit(p[4]);
        d->byte_value[i] = static_cast<int16_t>(b);
        if (d->byte_token[b] < 0) d->byte_token[b] = static_cast<int32_t>(i);
      }
    }
    // No "<0xXX>" entry: a single-byte piece serves as the byte's token.
    for (int b = 0; b < 256; ++b) {
      if (d->byte_token[b] >= 0) continue;
      auto it = d->lookup.find(std::string(1, static_cast<char>(b)));
      if (it != d->lookup.end()) d->byte_token[b] = it->second;
    }
  }
  if (d->kind == TokenizerKind::kMergeBpe) {
    d->merge_rank.clear();
    for (size_t r = 0; r < d->merges.size(); ++r) {
      d->merge_rank.emplace(d->merges[r], static_cast<int32_t>(r));
    }
  }
  for (int32_t id : {d->bos, d->eos, d->unk}) {
    if (id >= 0 && static_cast<size_t>(id) < n) d->control[id] = 1;
  }
}

}  // namespace model

Tokenizer::Tokenizer() = default;
Tokenizer::Tokenizer(std::shared_ptr<const Data> data) : d_(std::move(data)) {}

Tokenizer Tokenizer::Bytes() {
  auto d = std::make_shared<Data>();
  d->kind = TokenizerKind::kBytes;
  for (int b = 0; b < 256; ++b) d->pieces.emplace_back(1, static_cast<char>(b));
  model::FinalizeTokenizer(d.get());
  return Tokenizer(std::move(d));
}

Result<Tokenizer> Tokenizer::ParseLlama2c(std::span<const uint8_t> bytes, uint32_t vocab_size) {
  KVWIRE_RETURN_ERROR_IF(vocab_size == 0 || vocab_size > (1u << 24), kInvalidArgument,
                         "tokenizer: vocab size " + std::to_string(vocab_size) + " out of range");
  size_t off = 0;
  auto read_u32 = [&](uint32_t* v) -> Status {
    KVWIRE_RETURN_ERROR_IF(bytes.size() - off < 4, kTruncated,
                           "tokenizer.bin: ends at byte " + std::to_string(off) + " (expected " +
                               std::to_string(vocab_size) + " entries)");
    std::memcpy(v, bytes.data() + off, 4);
    off += 4;
    return Status::Ok();
  };
  uint32_t max_len = 0;
  KVWIRE_RETURN_IF_ERROR(read_u32(&max_len));
  // The entry count comes from the model's header, not from this file; every entry takes at
  // least 8 bytes (score, length), so a count the file cannot hold is refused before the tables
  // are sized from it.
  KVWIRE_RETURN_ERROR_IF(vocab_size > (bytes.size() - off) / 8, kTruncated,
                         "tokenizer.bin: " + std::to_string(bytes.size()) +
                             " bytes cannot hold the model's " + std::to_string(vocab_size) +
                             " entries (8 bytes each at least)");
  auto d = std::make_shared<Data>();
  d->pieces.resize(vocab_size);
  d->scores.resize(vocab_size);
  for (uint32_t i = 0; i < vocab_size; ++i) {
    uint32_t score_bits = 0, len = 0;
    KVWIRE_RETURN_IF_ERROR(read_u32(&score_bits));
    KVWIRE_RETURN_IF_ERROR(read_u32(&len));
    std::memcpy(&d->scores[i], &score_bits, 4);
    KVWIRE_RETURN_ERROR_IF(len > (1u << 16) || len > bytes.size() - off, kCorrupt,
                           "tokenizer.bin: entry " + std::to_string(i) + " at byte " +
                               std::to_string(off - 4) + " has length " + std::to_string(len) +
                               " beyond the file or the 64 KiB limit");
    d->pieces[i].assign(reinterpret_cast<const char*>(bytes.data() + off), len);
    off += len;
  }
  bool byte_level = vocab_size == 256;
  for (uint32_t i = 0; byte_level && i < 256; ++i) {
    byte_level = d->pieces[i].size() == 1 && static_cast<uint8_t>(d->pieces[i][0]) == i;
  }
  if (byte_level) {
    d->kind = TokenizerKind::kBytes;
  } else {
    // llama2.c conventions: <unk> 0, BOS 1, EOS 2, a dummy-prefix space before the text.
    d->kind = TokenizerKind::kScoreBpe;
    d->unk = 0;
    d->bos = vocab_size > 1 ? 1 : -1;
    d->eos = vocab_size > 2 ? 2 : -1;
    d->add_bos = d->bos >= 0;
  }
  model::FinalizeTokenizer(d.get());
  d->dummy_prefix = d->kind == TokenizerKind::kScoreBpe && d->lookup.count(" ") > 0;
  return Tokenizer(std::move(d));
}

Result<Tokenizer> Tokenizer::LoadLlama2c(const std::string& path, uint32_t vocab_size) {
  KVWIRE_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadFileBytes(path, 1ull << 30));
  auto t = ParseLlama2c(bytes, vocab_size);
  if (!t.ok()) return t.status().WithContext(path);
  return t;
}

TokenizerKind Tokenizer::kind() const { return d_ ? d_->kind : TokenizerKind::kBytes; }
uint32_t Tokenizer::size() const { return d_ ? static_cast<uint32_t>(d_->pieces.size()) : 0; }
int32_t Tokenizer::bos_id() const { return d_ ? d_->bos : -1; }
int32_t Tokenizer::eos_id() const { return d_ ? d_->eos : -1; }
bool Tokenizer::adds_bos() const { return d_ && d_->add_bos && d_->bos >= 0; }

std::string_view Tokenizer::Piece(int32_t token) const {
  if (!d_ || token < 0 || static_cast<size_t>(token) >= d_->pieces.size()) return {};
  return d_->pieces[token];
}

Result<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  KVWIRE_RETURN_ERROR_IF(!d_, kInvalidArgument, "no tokenizer loaded");
  std::vector<int32_t> ids;
  if (add_bos && d_->bos >= 0) ids.push_back(d_->bos);
  if (d_->kind == TokenizerKind::kBytes) {
    for (char c : text) ids.push_back(static_cast<uint8_t>(c));
    return ids;
  }
  if (d_->kind == TokenizerKind::kMergeBpe) {
    KVWIRE_RETURN_IF_ERROR(model::EncodeMergeBpe(*d_, text, &ids));
    return ids;
  }
  if (text.empty()) return ids;
  std::string norm;
  if (d_->dummy_prefix) norm = " ";
  norm.append(text);
  if (!d_->space_marker.empty()) norm = ReplaceAll(norm, " ", d_->space_marker);

  std::vector<int32_t> sym;
  sym.reserve(norm.size());
  for (size_t i = 0; i < norm.size();) {
    // A code point is a lead byte plus up to three continuation bytes (as llama2.c groups them).
    size_t j = i + 1;
    while (j < norm.size() && j - i < 4 && (static_cast<uint8_t>(norm[j]) & 0xc0) == 0x80) ++j;
    auto it = d_->lookup.find(norm.substr(i, j - i));
    if (it != d_->lookup.end()) {
      sym.push_back(it->second);
    } else {
      for (size_t k = i; k < j; ++k) {
        const auto b = static_cast<uint8_t>(norm[k]);
        int32_t id = d_->byte_token[b];
        if (id < 0) id = d_->unk;
        KVWIRE_RETURN_ERROR_IF(id < 0, kInvalidArgument,
                               "tokenizer cannot encode byte " + HexByte(b) + " at text offset " +
                                   std::to_string(k) + " (no byte fallback or unknown token)");
        sym.push_back(id);
      }
    }
    i = j;
  }
  MergeByScore(*d_, &sym);
  ids.insert(ids.end(), sym.begin(), sym.end());
  return ids;
}

std::string Tokenizer::DecodeNext(int32_t prev, int32_t token) const {
  if (!d_ || token < 0 || static_cast<size_t>(token) >= d_->pieces.size()) return {};
  const std::string& p = d_->pieces[token];
  switch (d_->kind) {
    case TokenizerKind::kBytes:
      return p;
    case TokenizerKind::kMergeBpe: {
      if (d_->control[token]) return {};
      std::string out;
      for (size_t i = 0; i < p.size();) {
        uint32_t cp;
        const size_t len = Utf8Next(p, i, &cp);
        const int b = Gpt2ByteOfCodepoint(cp);
        if (b >= 0) {
          out += static_cast<char>(b);
        } else {
          out.append(p, i, len);
        }
        i += len;
      }
      return out;
    }
    case TokenizerKind::kScoreBpe: {
      if (d_->control[token]) return {};
      if (d_->byte_value[token] >= 0)
        return std::string(1, static_cast<char>(d_->byte_value[token]));
      std::string out = d_->space_marker.empty() ? p : ReplaceAll(p, d_->space_marker, " ");
      if (d_->dummy_prefix && (prev < 0 || prev == d_->bos) && !out.empty() && out[0] == ' ') {
        out.erase(0, 1);
      }
      return out;
    }
  }
  return {};
}

std::string Tokenizer::Decode(std::span<const int32_t> tokens) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t t : tokens) {
    out += DecodeNext(prev, t);
    prev = t;
  }
  return out;
}

}  // namespace kvwire
