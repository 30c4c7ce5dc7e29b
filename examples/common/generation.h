// Greedy decoding and the accuracy measure the examples report, on kvwire::Model, plus views of
// a Sequence's or a KvCache's rows that can be handed to a Sender or a Receiver.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvwire/kv_view.h"
#include "kvwire/model.h"
#include "kvwire/status.h"

namespace kvwire::examples {

/// Rows [begin, begin + count) of `seq`'s float32 cache as a contiguous KvView (no copy), within
/// its capacity: rows not computed yet can be viewed (a prefill pushes each layer once Forward
/// has written it). Valid while `seq` lives and is not moved; Forward only appends rows, so a
/// live sequence can keep generating while a sender reads rows it already holds.
Result<KvView> SequenceRows(const Sequence& seq, const ModelConfig& config, uint32_t begin,
                            uint32_t count);

/// The first `tokens` rows of `cache` as a KvView (no copy).
Result<KvView> CachePrefix(const KvCache& cache, uint32_t tokens);

/// Greedy decoding exactly as Model::Generate does it: feeds `input`, appends the argmax, feeds
/// it, ... until `count` tokens are out (no EOS stop). `seq` must have room for `count` tokens.
/// `token_ns`, when given, receives the NowNs() time each token was produced.
Result<std::vector<int32_t>> GreedyDecode(const Model& model, Sequence* seq, int32_t input,
                                          uint32_t count, std::vector<int64_t>* token_ns = nullptr);

/// Top-1 agreement under teacher forcing: runs `inputs` on top of `kv` (K post-RoPE from
/// `positions_start`) and counts the rows whose argmax equals `targets[i]` (the reference
/// run's greedy token at that position). `inputs` and `targets` have the same length.
struct Agreement {
  uint32_t positions = 0;
  uint32_t agree = 0;
  int32_t first_miss = -1;  // first position whose argmax differs (-1: none)
  double fraction() const { return positions ? double(agree) / positions : 0.0; }
};
Result<Agreement> TeacherForcedTop1(const Model& model, const KvView& kv, int64_t positions_start,
                                    std::span<const int32_t> inputs,
                                    std::span<const int32_t> targets);

/// Index of the first difference between `a` and `b` (-1 when equal, including the length).
int32_t FirstDifference(std::span<const int32_t> a, std::span<const int32_t> b);

/// Smallest gap between the best and the second-best logit over the greedy steps of a run
/// (how close the reference came to a tie: a lossy cache flips tokens where it is small).
/// Runs `prompt` then `tokens` (teacher-forced) in one pass.
Result<float> SmallestTop1Margin(const Model& model, std::span<const int32_t> prompt,
                                 std::span<const int32_t> tokens);

}  // namespace kvwire::examples
