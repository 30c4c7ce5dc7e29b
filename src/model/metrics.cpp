// Accuracy metrics of the golden protocol (`kvwire eval`) and deterministic windows.
#include <algorithm>
#include <cmath>

#include "kvwire/model.h"

namespace kvwire {
namespace {

// splitmix64: a tiny, fully specified generator, so window choice is identical on every
// platform and standard library.
uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Log-sum-exp of a row, in double.
double LogSumExp(const float* row, uint32_t n, double max) {
  double s = 0;
  for (uint32_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(row[i]) - max);
  return max + std::log(s);
}

uint32_t ArgMax(const float* row, uint32_t n) {
  return static_cast<uint32_t>(std::max_element(row, row + n) - row);
}

}  // namespace

double LogitStats::ppl() const { return positions ? std::exp(nll_sum / positions) : 0.0; }
double LogitStats::mean_kl() const { return positions ? kl_sum / positions : 0.0; }
double LogitStats::top1() const {
  return positions ? static_cast<double>(top1_agree) / positions : 0.0;
}
void LogitStats::Merge(const LogitStats& o) {
  positions += o.positions;
  nll_sum += o.nll_sum;
  kl_sum += o.kl_sum;
  top1_agree += o.top1_agree;
}

Status AccumulateLogitStats(std::span<const float> logits, std::span<const float> ref_logits,
                            std::span<const int32_t> targets, uint32_t vocab, LogitStats* stats) {
  const size_t rows = targets.size();
  KVWIRE_RETURN_ERROR_IF(
      vocab == 0 || logits.size() != rows * vocab || ref_logits.size() != rows * vocab,
      kInvalidArgument, "AccumulateLogitStats: logits must be [targets, vocab] for both runs");
  for (size_t r = 0; r < rows; ++r) {
    KVWIRE_RETURN_ERROR_IF(targets[r] < 0 || static_cast<uint32_t>(targets[r]) >= vocab,
                           kInvalidArgument, "AccumulateLogitStats: target outside the vocabulary");
  }
  const bool same = logits.data() == ref_logits.data();
  for (size_t r = 0; r < rows; ++r) {
    const float* a = logits.data() + r * vocab;
    const float* b = ref_logits.data() + r * vocab;
    const uint32_t am = ArgMax(a, vocab), bm = same ? am : ArgMax(b, vocab);
    const double lse_a = LogSumExp(a, vocab, a[am]);
    stats->nll_sum += lse_a - static_cast<double>(a[targets[r]]);
    stats->top1_agree += am == bm;
    if (!same) {
      const double lse_b = LogSumExp(b, vocab, b[bm]);
      double kl = 0;
      for (uint32_t i = 0; i < vocab; ++i) {
        const double lb = static_cast<double>(b[i]) - lse_b;
        const double la = static_cast<double>(a[i]) - lse_a;
        kl += std::exp(lb) * (lb - la);
      }
      stats->kl_sum += std::max(kl, 0.0);  // rounding can make an exact 0 slightly negative
    }
    ++stats->positions;
  }
  return Status::Ok();
}

Result<std::vector<uint64_t>> SampleWindows(uint64_t total, uint32_t window, uint32_t count,
                                            uint64_t seed) {
  KVWIRE_RETURN_ERROR_IF(window == 0 || count == 0, kInvalidArgument,
                         "SampleWindows: window and count must be > 0");
  KVWIRE_RETURN_ERROR_IF(total < window, kInvalidArgument,
                         "text has " + std::to_string(total) +
                             " tokens, fewer than one window of " + std::to_string(window));
  std::vector<uint64_t> starts(count);
  if (uint64_t{count} * window <= total) {
    // Non-overlapping: window i starts at i * window plus a sorted uniform share of the slack.
    const uint64_t slack = total - uint64_t{count} * window;
    uint64_t state = seed;
    std::vector<uint64_t> cuts(count);
    for (auto& c : cuts) c = slack ? SplitMix64(&state) % (slack + 1) : 0;
    std::sort(cuts.begin(), cuts.end());
    for (uint32_t i = 0; i < count; ++i) starts[i] = uint64_t{i} * window + cuts[i];
  } else {
    // Not enough text: evenly spread windows, overlapping as little as the length allows.
    const uint64_t span = total - window;
    for (uint32_t i = 0; i < count; ++i) starts[i] = count == 1 ? 0 : span * i / (count - 1);
  }
  return starts;
}

}  // namespace kvwire
