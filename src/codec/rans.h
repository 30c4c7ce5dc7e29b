// Static rANS: the entropy stage of fraqtl's table-driven payload (docs/FORMAT.md, "fraqtl
// payload version 2").
//
// Every table is static (known to both ends before a byte is sent), so the coded size of a
// sequence of symbols is the sum of their costs, known before anything is coded: the encoder
// chooses its rate from table lookups and codes once.
//
// Parameters: probabilities in units of 1/4096 (12 bits), 32-bit states kept in [2^16, 2^32),
// 16-bit renormalisation, kLanes interleaved states per block. Symbol k of a block (k counted
// from 0 in decoding order) is coded by state k % kLanes; the encoder runs the symbols in
// reverse and the decoder forward, both through one shared stream of 16-bit words. A block is
//   u32 final encoder states [kLanes] (= the decoder's initial states), little-endian
//   u16 words, in the order the decoder reads them
// and decodes on its own. Every state starts (encoder) and must end (decoder) at 2^16, so a
// decoder that ends elsewhere, or does not consume every word exactly, has a corrupt block.
//
// Decoding symbol s with frequency f and cumulative frequency c from state x:
//   slot = x mod 4096; s = the symbol whose range [c, c + f) holds slot;
//   x = f (x >> 12) + slot - c; if x < 2^16: x = (x << 16) | next word.
// Encoding is its inverse: if x >= f << 20: emit x mod 2^16, x >>= 16; then
//   x = ((x / f) << 12) + (x mod f) + c.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvwire::rans {

inline constexpr int kProbBits = 12;
inline constexpr uint32_t kProbScale = 1u << kProbBits;
inline constexpr uint32_t kStateLower = 1u << 16;
inline constexpr int kLanes = 8;
inline constexpr size_t kBlockStateBytes = kLanes * 4;
/// Costs are in units of 1/65536 bit.
inline constexpr uint32_t kCostOne = 1u << 16;

/// -log2(f / 4096) in units of 1/65536 bit, truncated; integer arithmetic only, so every
/// machine gets the same value. f in [1, 4096].
uint32_t SymbolCost(uint32_t f);

/// Frequencies (each >= 1, summing to 4096) for probabilities p (>= 0, any positive sum), at
/// most 256 and at least 2 of them: each gets max(1, round(4096 p / sum)), then the largest
/// (lowest index on ties) is lowered, or raised, one at a time until the sum is 4096.
/// Deterministic: IEEE double arithmetic only.
std::vector<uint16_t> NormalizeFrequencies(std::span<const double> p);

/// What the encoder needs of one symbol, in one place, prepared for a step without a branch:
/// q = (x * rcp) >> 64, then x' = (q << kProbBits) + (x - q * freq) + cum. For freq > 1 rcp is
/// Table::rcp and cum the symbol's; for freq = 1, rcp = 2^64 - 1 gives q = x - 1 (x >= 1), and
/// cum is the symbol's plus 4095, which makes x' = (x << kProbBits) + the symbol's cum.
struct EncSym {
  uint64_t rcp;
  uint32_t freq, cum;
};

/// One static table over symbols [0, n), 2 <= n <= 256.
struct Table {
  std::vector<uint16_t> freq, cum;  // [n]
  std::vector<uint32_t> cost;       // [n], SymbolCost(freq)
  /// [4096]: symbol | freq << 8 | (slot - cum) << 20 of the symbol that owns the slot.
  std::vector<uint32_t> slots;
  /// Division by freq for the encoder: x / f == (x * rcp) >> 64 for every 32-bit x (f > 1;
  /// rcp = 0 stands for f = 1).
  std::vector<uint64_t> rcp;
  /// [n]: rcp, freq and cum of each symbol together (BlockEncoder::EncodeBlock).
  std::vector<EncSym> enc;
  /// Expected cost of a symbol under the table itself, sum f * cost / 4096, in 1/65536 bit.
  uint64_t entropy = 0;
  size_t size() const { return freq.size(); }
};

/// Builds `t` from frequencies; false when they are not a valid table (size, zero, sum).
/// Without `slots` the decoding slots are left empty (an encoder does not need them).
bool BuildTable(std::span<const uint16_t> freq, Table* t, bool slots = true);

/// The table with 256 equally likely symbols (8 bits each).
const Table& UniformByteTable();

/// Encodes one block. Symbols are pushed in reverse decoding order (last symbol first); the
/// caller passes each symbol's decoding index k, which picks its lane (k % kLanes).
class BlockEncoder {
 public:
  BlockEncoder() { Reset(); }
  void Reset();
  /// Room for `symbols` more symbols (each emits at most one word).
  void Reserve(size_t symbols) {
    if (words_.size() < used_ + symbols + 1) words_.resize(used_ + symbols + 1);
  }
  /// Requires Reserve for this symbol.
  void Put(uint32_t k, uint32_t symbol, const Table& t) {
    uint32_t x = x_[k % kLanes];
    const uint32_t f = t.freq[symbol];
    // Renormalise without a branch (it is taken about once per 16 / cost symbols, at random):
    // the word is stored either way and kept when x would leave 32 bits (x >= f << 20).
    const uint32_t out = x >= (f << (32 - kProbBits)) ? 1u : 0u;
    words_[used_] = static_cast<uint16_t>(x);
    used_ += out;
    x >>= 16 * out;
    const uint64_t r = t.rcp[symbol];
    const uint32_t q =
        r ? static_cast<uint32_t>((static_cast<unsigned __int128>(x) * r) >> 64) : x;
    x_[k % kLanes] = (q << kProbBits) + (x - q * f) + t.cum[symbol];
  }
  /// Puts n symbols at once, sym[k] the entry of symbol k (k in decoding order, 0 first):
  /// the same words and states as Put(k, ...) for k = n - 1 down to 0, with the states held in
  /// registers. Calls Reserve itself. With AVX-512 whole groups of kLanes symbols take one
  /// vector step each (`vector` = false keeps the scalar steps, for tests).
  void PutAll(const EncSym* const* sym, size_t n, bool vector = true);
  /// Appends the block (states, then words in decoding order) to `out`.
  void Finish(std::vector<uint8_t>* out);
  /// Bytes Finish will append.
  size_t Bytes() const { return kBlockStateBytes + 2 * used_; }

 private:
  uint32_t x_[kLanes];
  std::vector<uint16_t> words_;
  size_t used_ = 0;
};

/// Decodes one block, symbols in order. Tables are addressed as slot tables (Table::slots) laid
/// one after another in a pool: symbol j of a Decode call uses pool[offsets[j] + slot].
/// Ok() after the last symbol says whether the block was consistent.
class BlockDecoder {
 public:
  /// `block` must hold at least kBlockStateBytes bytes and an even number of word bytes.
  explicit BlockDecoder(std::span<const uint8_t> block);
  /// Decodes the next n symbols into out[0, n). Groups of kLanes symbols starting at a lane-0
  /// symbol decode together with AVX2 where the CPU has it (the same words, the same states).
  void Decode(const uint32_t* pool, const uint32_t* offsets, size_t n, uint32_t* out);
  /// Every word consumed, no read past the end, every state back at 2^16.
  bool Ok() const;

  /// Decode on up to kMaxStreams blocks at once: dec[s] decodes n[s] symbols with offsets[s]
  /// into out[s], exactly as dec[s]->Decode would. A block's groups form one dependency chain
  /// (each state waits for its last table lookup and for the words the group before took), so
  /// decoding several blocks side by side keeps the core busy.
  static constexpr int kMaxStreams = 4;
  static void DecodeSideBySide(BlockDecoder* const* dec, int streams, const uint32_t* pool,
                               const uint32_t* const* offsets, const size_t* n,
                               uint32_t* const* out);

 private:
  uint32_t One(const uint32_t* pool, uint32_t offset) {
    uint32_t& x = x_[k_++ % kLanes];
    const uint32_t e = pool[offset + (x & (kProbScale - 1))];
    x = ((e >> 8) & 0xfffu) * (x >> kProbBits) + (e >> 20);
    if (x < kStateLower) {
      uint32_t w = 0;
      if (pos_ + 2 <= size_) {
        w = uint32_t{data_[pos_]} | uint32_t{data_[pos_ + 1]} << 8;
        pos_ += 2;
      } else {
        overrun_ = true;
      }
      x = (x << 16) | w;
    }
    return e & 0xffu;
  }

  uint32_t x_[kLanes];
  const uint8_t* data_;
  size_t pos_ = 0, size_ = 0;
  uint64_t k_ = 0;
  bool overrun_ = false;
};

}  // namespace kvwire::rans
