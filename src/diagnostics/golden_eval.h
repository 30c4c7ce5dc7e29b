// The golden accuracy protocol (`kvwire eval`) as a reusable library piece.
//
// GoldenEval::Create samples `seqs` windows of P + C (+1 target) tokens of held-out text, runs
// each prefix once at full precision (float32), keeps its KV cache, and runs the uncompressed
// reference continuation once, keeping its logits. Evaluate(coder) then measures one "arm": for
// every window the coder rewrites a copy of the prefix KV (in place: encode + decode), the
// continuation runs teacher-forced on the coded cache (its own K/V stay float32) and its
// next-token distributions are compared with the reference's. So the prefix is run once per
// sequence however many arms are measured (what `kvwire diagnose` needs: hundreds of arms).
//
// Memory: per window the float32 prefix KV and the reference logits [C, vocab] are kept.
//
// Thread-safety: Evaluate may be called from one thread at a time (it runs the model).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvwire/codec.h"
#include "kvwire/kv_view.h"
#include "kvwire/model.h"
#include "kvwire/profile.h"
#include "kvwire/status.h"

namespace kvwire::diag {

struct GoldenOptions {
  uint32_t prefix = 256;  // P: coded prefix tokens
  uint32_t cont = 256;    // C: evaluated continuation tokens
  uint32_t seqs = 16;     // windows
  uint64_t seed = 1;      // window sampling
  bool bos = false;       // first fed token is BOS
};

/// What one arm measured, summed over the windows.
struct ArmResult {
  LogitStats stats;
  uint64_t coded_bytes = 0;  // bytes the coder reported (stream or payload bytes)
  uint64_t elements = 0;     // elements those bytes code
  double bits() const {
    return elements ? double(coded_bytes) * 8.0 / double(elements) : 0.0;
  }
};

/// Rewrites `kv` (float32, the prefix cache of one window) as a decoder would see it after
/// coding, and adds the bytes it cost and the elements they cover.
using KvCoder = std::function<Status(KvCache* kv, uint64_t* bytes, uint64_t* elements)>;

class GoldenEval {
 public:
  /// Samples the windows from `ids` and runs every prefix and reference continuation.
  /// `progress(fraction, stage)` is called after every window when set.
  static Result<std::unique_ptr<GoldenEval>> Create(
      const Model& model, std::span<const int32_t> ids, const GoldenOptions& options,
      const std::function<void(double, const std::string&)>& progress = {});

  const GoldenOptions& options() const { return opt_; }
  const Model& model() const { return *model_; }
  const LogitStats& reference() const { return reference_; }
  /// True when the windows had to overlap (the text is shorter than seqs x window).
  bool overlapping() const { return overlap_; }
  const std::vector<uint64_t>& window_starts() const { return starts_; }
  /// The float32 prefix KV of window `i` (read-only; coders get a copy).
  const KvCache& prefix_kv(size_t i) const { return windows_[i].prefix_kv; }

  /// Measures one arm over every window.
  Result<ArmResult> Evaluate(const KvCoder& coder) const;

 private:
  struct Window {
    std::vector<int32_t> cont, targets;
    KvCache prefix_kv;
    std::vector<float> ref_logits;  // [cont, vocab]
  };
  GoldenEval() = default;
  const Model* model_ = nullptr;
  GoldenOptions opt_;
  bool overlap_ = false;
  std::vector<uint64_t> starts_;
  std::vector<Window> windows_;
  LogitStats reference_;
};

/// A coder that writes the whole prefix as a kvwire stream with codec `spec` (level 0) and
/// decodes it: bytes are stream bytes (all-in: headers, scales and padding counted). `profile` (may be null)
/// must outlive the coder; the codec is created from it at every window (so a level's budgets
/// are read when the arm runs).
Result<KvCoder> StreamCoder(const std::string& spec, const Profile* profile, int threads);

/// A coder that codes only tensor (`layer`, `kind`) with `codec` (one chunk) and leaves every
/// other tensor uncompressed; bytes are the chunk payload + its 40-byte chunk header, elements
/// those of that one tensor.
KvCoder SingleTensorCoder(std::shared_ptr<const Codec> codec, uint32_t layer, KvKind kind);

}  // namespace kvwire::diag
