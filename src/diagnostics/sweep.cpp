// Sensitivity sweep and per-(layer, K|V) bit allocation (sweep.h).
#include "diagnostics/sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

namespace kvwire::diag {

std::vector<double> SweepResult::KlTable() const {
  std::vector<double> t(cells.size());
  for (size_t i = 0; i < cells.size(); ++i) t[i] = cells[i].kl;
  return t;
}

Result<SweepResult> RunSweep(const GoldenEval& eval, const Profile& profile,
                             const SweepOptions& o) {
  KVWIRE_RETURN_ERROR_IF(o.bits.empty(), kInvalidArgument, "sweep: no bit-widths");
  for (size_t i = 0; i < o.bits.size(); ++i) {
    KVWIRE_RETURN_ERROR_IF(o.bits[i] < 1 || o.bits[i] > 16 || (i && o.bits[i] <= o.bits[i - 1]),
                           kInvalidArgument, "sweep: bit-widths must ascend within [1, 16]");
  }
  SweepResult r;
  r.layers = profile.layers;
  r.bits = o.bits;
  r.ref_ppl = eval.reference().ppl();
  r.cells.resize(size_t{r.layers} * 2 * o.bits.size());
  const size_t total = r.cells.size();
  size_t done = 0;
  for (size_t bi = 0; bi < o.bits.size(); ++bi) {
    const std::string spec = "fraqtl@" + std::to_string(o.bits[bi]) + o.codec_options;
    KVWIRE_ASSIGN_OR_RETURN(std::unique_ptr<Codec> made, CreateCodec(spec, &profile));
    std::shared_ptr<const Codec> codec(std::move(made));
    for (uint32_t l = 0; l < r.layers; ++l) {
      for (uint32_t k = 0; k < 2; ++k) {
        const KvKind kind = k ? KvKind::kValue : KvKind::kKey;
        KVWIRE_ASSIGN_OR_RETURN(ArmResult a, eval.Evaluate(SingleTensorCoder(codec, l, kind)));
        SweepCell& c = r.cells[(size_t{l} * 2 + k) * o.bits.size() + bi];
        c.kl = a.stats.mean_kl();
        c.dppl = a.stats.ppl() - r.ref_ppl;
        c.top1 = a.stats.top1();
        c.bits = a.bits();
        ++done;
        if (o.progress) {
          char stage[64];
          std::snprintf(stage, sizeof(stage), "sweep L%u %s @%d", l, k ? "V" : "K", o.bits[bi]);
          o.progress(double(done) / double(total), stage);
        }
      }
    }
  }
  return r;
}

double ModelKl(std::span<const double> kl, std::span<const int> bits, double b,
               double min_log_decay) {
  const size_t n = std::min(kl.size(), bits.size());
  if (n == 0) return 0.0;
  constexpr double kFloor = 1e-15;  // KL of float noise; keeps the logs finite
  // log KL at the swept widths, made monotone: each point at least `min_log_decay` per bit
  // below the previous one (a noisy measurement never makes more bits look worse).
  double l[16];
  const size_t m = std::min<size_t>(n, 16);
  for (size_t i = 0; i < m; ++i) {
    l[i] = std::log(std::max(kl[i], kFloor));
    if (i > 0) l[i] = std::min(l[i], l[i - 1] - min_log_decay * double(bits[i] - bits[i - 1]));
  }
  if (m == 1) return std::exp(l[0] - min_log_decay * (b - bits[0]));
  auto slope = [&](size_t i) {  // between i and i + 1 (already <= -min_log_decay)
    return (l[i + 1] - l[i]) / double(bits[i + 1] - bits[i]);
  };
  if (b <= bits[0]) return std::exp(l[0] + slope(0) * (b - bits[0]));
  if (b >= bits[m - 1]) return std::exp(l[m - 1] + slope(m - 2) * (b - bits[m - 1]));
  size_t i = 0;
  while (i + 2 < m && b > bits[i + 1]) ++i;
  return std::exp(l[i] + slope(i) * (b - bits[i]));
}

Result<std::vector<double>> AllocateBudgets(std::span<const double> kl, std::span<const int> bits,
                                            size_t tensors, double budget,
                                            const AllocationOptions& o) {
  KVWIRE_RETURN_ERROR_IF(tensors == 0 || bits.empty() || kl.size() != tensors * bits.size(),
                         kInvalidArgument, "allocate: KL table shape does not match");
  KVWIRE_RETURN_ERROR_IF(!(budget > 0 && budget <= 16), kInvalidArgument,
                         "allocate: budget outside (0, 16]");
  for (double v : kl) {
    KVWIRE_RETURN_ERROR_IF(!std::isfinite(v), kInvalidArgument, "allocate: non-finite KL");
  }
  for (size_t i = 0; i < bits.size(); ++i) {
    KVWIRE_RETURN_ERROR_IF(bits[i] < 0 || bits[i] > 16 || (i && bits[i] <= bits[i - 1]),
                           kInvalidArgument, "allocate: swept bit-widths must ascend");
  }
  const double lo = budget * std::clamp(o.min_fraction, 0.0, 1.0);
  const double hi = std::min(16.0, std::max(budget, std::min(o.max_bits,
                                                              std::max(budget * 4, budget + 2))));
  const uint64_t units = uint64_t{std::max<uint32_t>(o.units_per_tensor, 1)} * tensors;
  const double unit = (budget - lo) * double(tensors) / double(units);
  std::vector<uint64_t> given(tensors, 0);
  std::vector<double> out(tensors, lo);
  if (unit <= 0) return out;
  auto at = [&](size_t t, double b) {
    return ModelKl(kl.subspan(t * bits.size(), bits.size()), bits, b, o.min_log_decay);
  };
  std::vector<double> cur(tensors);
  for (size_t t = 0; t < tensors; ++t) cur[t] = at(t, lo);
  for (uint64_t u = 0; u < units; ++u) {
    size_t best = tensors;
    double best_gain = -1, best_next = 0;
    for (size_t t = 0; t < tensors; ++t) {
      const double b = lo + double(given[t] + 1) * unit;
      if (b > hi + 1e-9) continue;
      const double next = at(t, b);
      const double gain = cur[t] - next;
      if (gain > best_gain) {  // ties: the lowest index (deterministic)
        best_gain = gain;
        best = t;
        best_next = next;
      }
    }
    if (best == tensors) {  // every tensor at hi (cannot happen while hi >= budget)
      break;
    }
    ++given[best];
    cur[best] = best_next;
  }
  uint64_t sum = 0;
  for (uint64_t g : given) sum += g;
  // Whatever could not be placed (only if hi < budget) goes evenly.
  const double rest = double(units - sum) * unit / double(tensors);
  for (size_t t = 0; t < tensors; ++t) out[t] = lo + double(given[t]) * unit + rest;
  return out;
}

}  // namespace kvwire::diag
