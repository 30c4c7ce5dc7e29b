// `kvwire diagnose` steps 2 and 3: the per-(layer, K|V) sensitivity sweep
// and the allocation of bits per (layer, K|V) from it.
//
// Sweep: for each layer and K|V, only that one tensor is coded with fraqtl at each of a few
// bit-widths (default 2, 3, 4 bits/element, uniform budget), every other tensor stays
// uncompressed, and the damage is measured end to end with the golden protocol (KL, dPPL,
// top-1 on the continuation).
//
// Allocation: per tensor the sweep gives KL at the swept bit-widths; a model of KL(b) per
// tensor interpolates log KL linearly between the swept points and extrapolates with the end
// slopes (each clamped to a minimum decay, so KL decreases with bits). Joint KL is modelled as
// the sum of the per-tensor KLs (small perturbations add to first order). Greedy marginal
// allocation: every tensor starts at `lo` = budget * min_fraction, then units of bits go one at
// a time to the tensor whose modelled KL drops most for it, never above `hi`; the units are
// sized so the mean over tensors is exactly the budget (every (layer, K|V) tensor has the same
// number of elements, so the plain mean is the bits/element average).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "diagnostics/golden_eval.h"
#include "kvwire/profile.h"
#include "kvwire/status.h"

namespace kvwire::diag {

struct SweepOptions {
  std::vector<int> bits = {2, 3, 4};
  /// Extra fraqtl options for the swept codec (e.g. "" or ":entropy=none").
  std::string codec_options;
  /// (fraction done, stage) after every measured arm.
  std::function<void(double, const std::string&)> progress;
};

struct SweepCell {
  double kl = 0, dppl = 0, top1 = 0;
  double bits = 0;  // measured bits/element of the coded tensor (payload + chunk header)
};

struct SweepResult {
  uint32_t layers = 0;
  std::vector<int> bits;
  double ref_ppl = 0;
  /// [(2 * layer + kind) * bits.size() + bit index]
  std::vector<SweepCell> cells;
  const SweepCell& at(uint32_t layer, uint32_t kind, size_t bi) const {
    return cells[(size_t{layer} * 2 + kind) * bits.size() + bi];
  }
  /// KL table [tensors][bits] as AllocateBudgets takes it.
  std::vector<double> KlTable() const;
};

/// Runs the sweep: layers x 2 x bits.size() arms of `eval`.
Result<SweepResult> RunSweep(const GoldenEval& eval, const Profile& profile,
                             const SweepOptions& options);

struct AllocationOptions {
  double min_fraction = 0.5;  // lo = budget * min_fraction
  double max_bits = 12;        // hi = min(max_bits, max(budget * 4, budget + 2)), at most 16
  uint32_t units_per_tensor = 32;
  double min_log_decay = 0.1;  // each tensor's KL falls at least by e^-0.1 per bit
};

/// Modelled KL of one tensor at `b` bits from its swept KLs (`kl[i]` at `bits[i]`, ascending).
double ModelKl(std::span<const double> kl, std::span<const int> bits, double b,
               double min_log_decay = 0.1);

/// Bits per tensor (`tensors` entries, index 2 * layer + kind) whose mean is `budget`.
/// `kl` is [tensors][bits.size()] row-major.
Result<std::vector<double>> AllocateBudgets(std::span<const double> kl, std::span<const int> bits,
                                            size_t tensors, double budget,
                                            const AllocationOptions& options = {});

}  // namespace kvwire::diag
