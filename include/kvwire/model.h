// kvwire/model.h — reference CPU runner for LLaMA-family decoder models.
//
// Loads llama2.c legacy checkpoints (`model.bin` + `tokenizer.bin`) and GGUF files (v2/v3,
// architectures "llama" and "qwen2"; F32/F16/BF16/Q8_0 tensors, dequantized to float32 at load)
// and runs them in float32: RMSNorm, RoPE, grouped-query attention, SwiGLU. It exists to
// produce real KV caches (capture) and to measure what a codec does to a model's predictions
// (teacher-forced continuation on top of a decoded cache: the golden protocol of `kvwire eval`,
// src/diagnostics/golden_eval.h); it is a reference, not a serving engine.
//
// KV layout (as kvwire/kv_view.h): per layer, K and V are [tokens, kv_heads, head_dim]; K is
// post-RoPE. Queries, when captured, are [tokens, heads, head_dim], post-RoPE.
//
// Determinism: every forward computes each output element with one fixed summation order, so
// results do not depend on the thread count (they may differ in the last bits between builds
// that pick different SIMD widths).
//
// Thread-safety: a Model is immutable after Load. Forward calls on one Model may come from any
// thread; they share the model's worker threads and run one at a time. A Sequence is owned by
// one caller at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvwire/kv_view.h"
#include "kvwire/status.h"

namespace kvwire {

// ------------------------------------------------------------------------------------- config

/// How RoPE pairs the channels of a head: (2i, 2i+1) (llama2.c, GGUF "llama", whose Q/K weights
/// are stored permuted for it) or (i, i + rope_dim/2) (HF "neox" order, GGUF "qwen2").
enum class RopeStyle : uint8_t { kInterleaved = 0, kNeox = 1 };
/// "interleaved" or "neox" (the spelling of KvMetadata::rope_style).
std::string_view RopeStyleName(RopeStyle style);

struct ModelConfig {
  std::string format;        // "llama2c" or "gguf"
  std::string architecture;  // "llama" (llama2.c files too) or "qwen2"
  std::string name;          // general.name of a GGUF, else the file name
  uint32_t dim = 0;          // residual width
  uint32_t hidden_dim = 0;   // SwiGLU width
  uint32_t layers = 0;
  uint32_t heads = 0;     // query heads
  uint32_t kv_heads = 0;  // key/value heads (heads % kv_heads == 0)
  uint32_t head_dim = 0;
  uint32_t vocab_size = 0;
  uint32_t max_seq_len = 0;  // context the model was trained for (longer inputs still run)
  float rms_eps = 1e-5f;
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  uint32_t rope_dim = 0;               // leading channels of a head that RoPE rotates (<= head_dim)
  bool has_rope_freq_factors = false;  // GGUF rope_freqs.weight (llama3-style scaling)
  bool tied_output = true;             // classifier shares the token embedding
  bool qkv_bias = false;               // Q/K/V projections have biases (qwen2)

  /// Parameters (weights) of the model.
  uint64_t parameters() const;
  /// One line: "llama dim=256 layers=6 heads=4/2 head_dim=64 ffn=768 vocab=256 rope=interleaved".
  std::string Summary() const;
};

// ---------------------------------------------------------------------------------- tokenizer

/// How text becomes tokens.
///   kBytes:    token id == byte value (a 256-entry byte-level vocabulary), no BOS.
///   kScoreBpe: llama2.c / SentencePiece style: look up each UTF-8 code point (byte fallback
///              tokens "<0xXX>" for unknown ones), then repeatedly merge the adjacent pair whose
///              concatenation is in the vocabulary with the highest score (leftmost on ties).
///   kMergeBpe: GPT-2 style byte-level BPE with ranked merges (GGUF "gpt2" tokenizers): the
///              pre-tokenizer of GPT-2, Llama 3 ("llama-bpe"), Qwen2 or SmolLM splits the text
///              (character classes exact for ASCII, approximated by Unicode block elsewhere),
///              then merges apply lowest rank first. Other pre-tokenizers are kUnsupported.
enum class TokenizerKind : uint8_t { kBytes = 0, kScoreBpe = 1, kMergeBpe = 2 };

/// A tokenizer. Cheap to copy (shares immutable data); thread-safe.
class Tokenizer {
 public:
  Tokenizer();  // an empty tokenizer (size() == 0); Encode fails

  /// Reads a llama2.c tokenizer.bin (int32 max_token_length, then per token: float32 score,
  /// int32 length, bytes) with `vocab_size` entries. A 256-entry file whose entry i is the
  /// single byte i is a kBytes tokenizer; anything else is kScoreBpe with llama2.c's
  /// conventions (BOS 1, EOS 2, a leading-space "dummy prefix", byte fallback at id byte+3
  /// when those entries are "<0xXX>").
  static Result<Tokenizer> LoadLlama2c(const std::string& path, uint32_t vocab_size);
  static Result<Tokenizer> ParseLlama2c(std::span<const uint8_t> bytes, uint32_t vocab_size);
  /// The 256-entry byte-level tokenizer.
  static Tokenizer Bytes();

  TokenizerKind kind() const;
  uint32_t size() const;
  int32_t bos_id() const;  // -1 when there is none
  int32_t eos_id() const;  // -1 when there is none
  /// Whether Encode(text) starts with BOS by default (true for llama2.c/SPM vocabularies).
  bool adds_bos() const;

  /// Tokens of `text`, with BOS first when `add_bos` (and the vocabulary has one).
  Result<std::vector<int32_t>> Encode(std::string_view text, bool add_bos) const;
  Result<std::vector<int32_t>> Encode(std::string_view text) const {
    return Encode(text, adds_bos());
  }

  /// Text of `tokens` (control tokens such as BOS/EOS produce nothing; the dummy-prefix space is
  /// dropped at the start and after BOS, as SentencePiece does).
  std::string Decode(std::span<const int32_t> tokens) const;
  /// Text of one token that follows `prev` (-1 at the start), for streaming output.
  std::string DecodeNext(int32_t prev, int32_t token) const;
  /// The raw vocabulary entry of `token` (empty if out of range).
  std::string_view Piece(int32_t token) const;

  struct Data;  // implementation detail (src/model/tokenizer_data.h)
  explicit Tokenizer(std::shared_ptr<const Data> data);

 private:
  std::shared_ptr<const Data> d_;
};

// -------------------------------------------------------------------------------------- model

struct ModelOptions {
  /// llama2.c: tokenizer.bin to use; empty = "tokenizer.bin" beside the model, else none.
  /// GGUF: empty = the tokenizer stored in the file; a path overrides it (llama2.c format).
  std::string tokenizer_path;
  /// Worker threads of forward passes (>= 1); 0 = std::thread::hardware_concurrency().
  int threads = 0;
  /// Skip the SHA-256 of the file (fingerprint() is then empty). For quick tools only.
  bool skip_fingerprint = false;
};

/// What a forward pass returns (and whom it tells as layers finish).
struct ForwardOptions {
  enum class Logits : uint8_t { kNone, kLast, kAll };
  ForwardOptions() = default;
  ForwardOptions(Logits l) : logits(l) {}  // NOLINT(google-explicit-constructor): {Logits::kLast}

  Logits logits = Logits::kAll;
  /// Optional: called on the calling thread once per layer, in order, as soon as that layer's
  /// K and V rows of every token of this call are in the sequence (before its attention runs),
  /// so a prefill node can start sending layer l while the rest of the forward computes. Those
  /// rows are not written again by this call: another thread may read them from then on.
  std::function<void(uint32_t layer)> on_layer_done;
};

/// The running state of one sequence: its float32 KV cache (and captured queries), grown
/// token by token up to a fixed capacity. Copyable (a copy is an independent fork).
class Sequence {
 public:
  Sequence() = default;

  uint32_t tokens() const { return tokens_; }  // tokens in the cache
  uint32_t capacity() const { return capacity_; }
  int64_t positions_start() const { return positions_start_; }  // RoPE position of token 0
  bool has_queries() const { return !q_.empty(); }

  /// K or V of `layer`: float32 [capacity, kv_heads, head_dim]; rows [0, tokens()) are valid.
  std::span<const float> kv(uint32_t layer, KvKind kind) const;
  /// Queries of `layer`: float32 [capacity, heads, head_dim] (empty unless has_queries()).
  /// Rows are valid for the tokens run through Forward on this sequence (not injected ones).
  std::span<const float> queries(uint32_t layer) const;

  /// Copies tokens [begin, begin + count) of the cache (and queries if `with_queries`) into a
  /// new KvCache of `dtype`, with metadata positions_start = positions_start() + begin and
  /// the model's rope/fingerprint fields as given in `metadata` (its positions_start is
  /// overwritten).
  Result<KvCache> Export(uint32_t begin, uint32_t count, DType dtype, bool with_queries,
                         KvMetadata metadata) const;

 private:
  friend class Model;
  uint32_t tokens_ = 0;
  uint32_t capacity_ = 0;
  int64_t positions_start_ = 0;
  uint32_t heads_ = 0;
  uint32_t kv_heads_ = 0;
  uint32_t head_dim_ = 0;
  std::vector<std::vector<float>> k_, v_, q_;  // per layer
};

class Model {
 public:
  /// Loads a llama2.c .bin or a GGUF file (detected by its magic). Every size, count and offset
  /// read from the file is validated first: a malformed file is kCorrupt/kTruncated with the
  /// reason, an unsupported architecture/tensor type kUnsupported, never a crash.
  static Result<std::unique_ptr<Model>> Load(const std::string& path,
                                             const ModelOptions& options = {});
  /// Loads from bytes in memory (fingerprint of those bytes). `name` labels errors.
  static Result<std::unique_ptr<Model>> LoadFromBytes(std::span<const uint8_t> bytes,
                                                      std::string_view name,
                                                      const ModelOptions& options = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const;
  /// "sha256:<hex>" of the model file (empty if skipped).
  const std::string& fingerprint() const;
  /// The model's tokenizer (size() == 0 when none was found).
  const Tokenizer& tokenizer() const;
  /// Ok when tokenizer() can encode text; otherwise the reason (no tokenizer file, a tokenizer
  /// kind this build cannot encode with).
  Status TokenizerStatus() const;
  int threads() const;
  /// rope_theta, rope_style, model_fingerprint filled in; positions_start = 0.
  KvMetadata kv_metadata() const;

  /// An empty sequence that can hold `capacity` tokens; `with_queries` also keeps the queries
  /// of every token run through it.
  Result<Sequence> NewSequence(uint32_t capacity, bool with_queries = false,
                               int64_t positions_start = 0) const;
  /// A sequence whose cache starts as `kv` (e.g. decoded from a kvwire stream): its shape must
  /// match the model (layers, kv_heads, head_dim); K must be post-RoPE for positions
  /// positions_start, positions_start + 1, ... Room for `extra_capacity` more tokens.
  Result<Sequence> SequenceFromKv(const KvView& kv, uint32_t extra_capacity,
                                  int64_t positions_start = 0) const;

  /// Runs `tokens` on top of `seq` (appending their K/V, and queries if the sequence keeps
  /// them). With Logits::kAll, `logits` becomes float32 [tokens, vocab] (row i is the
  /// next-token distribution after tokens[i]); with kLast, [1, vocab]; with kNone it is left
  /// untouched (may be null). Token ids must be < vocab_size; the sequence must have room.
  Status Forward(Sequence* seq, std::span<const int32_t> tokens, const ForwardOptions& options,
                 std::vector<float>* logits) const;

  /// Prefill `tokens` from position `positions_start` and return their KV cache (capture).
  Result<KvCache> Prefill(std::span<const int32_t> tokens, DType dtype = DType::kF32,
                          bool with_queries = false, int64_t positions_start = 0) const;
  /// Teacher-forced continuation: logits [tokens, vocab] of `tokens` run on top of `prefix`
  /// (at positions positions_start + prefix tokens, ...). The continuation's own K/V stay
  /// float32.
  Result<std::vector<float>> Continue(const KvView& prefix, std::span<const int32_t> tokens,
                                      int64_t positions_start = 0) const;
  /// Greedy decoding: `prompt` then up to `max_new_tokens` argmax tokens (stops after EOS when
  /// `stop_at_eos` and the tokenizer has one). Returns the new tokens only.
  Result<std::vector<int32_t>> Generate(std::span<const int32_t> prompt, uint32_t max_new_tokens,
                                        bool stop_at_eos = true) const;

  struct Impl;  // implementation detail

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ------------------------------------------------------------------------- accuracy metrics

/// Per-position comparison of a coded run's next-token distributions with a reference run's
/// (the golden protocol's KL, perplexity and top-1). Accumulates over positions and sequences.
struct LogitStats {
  uint64_t positions = 0;
  double nll_sum = 0;       // sum of -log p(target) (nats)
  double kl_sum = 0;        // sum of KL(reference || this) (nats)
  uint64_t top1_agree = 0;  // argmax equal to the reference's argmax

  double ppl() const;  // exp(nll_sum / positions)
  double mean_kl() const;
  double top1() const;  // fraction in [0, 1]
  void Merge(const LogitStats& other);
};

/// Adds `rows` positions: logits and ref_logits are [rows, vocab]; targets[i] is the token that
/// follows row i (its log-probability enters the NLL). Pass ref_logits == logits (same pointer)
/// for the reference run itself.
Status AccumulateLogitStats(std::span<const float> logits, std::span<const float> ref_logits,
                            std::span<const int32_t> targets, uint32_t vocab, LogitStats* stats);

/// Start offsets of `count` windows of `window` tokens in a sequence of `total` tokens, chosen
/// deterministically by `seed`: non-overlapping whenever count * window <= total (random
/// slack between windows), otherwise evenly spread with overlap. Sorted ascending.
/// kInvalidArgument if total < window.
Result<std::vector<uint64_t>> SampleWindows(uint64_t total, uint32_t window, uint32_t count,
                                            uint64_t seed);

}  // namespace kvwire
