// `kvwire diagnose` after calibration (steps 2-4 of the diagnostic): sweep, allocate,
// validate each ladder level jointly, measure the baselines in the same run, decide the optional
// fraqtl steps from measurement, write the profile's levels and the report.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "diagnostics/golden_eval.h"
#include "diagnostics/sweep.h"
#include "kvwire/profile.h"
#include "kvwire/status.h"

namespace kvwire::diag {

struct DiagnoseOptions {
  std::vector<int> sweep_bits = {2, 3, 4};
  std::vector<double> ladder = {0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  std::vector<std::string> baselines = {"q4_0",    "kivi2",   "kivi4",  "int3-token",
                                        "int4-token", "rank-8", "rank-16", "rank-32",
                                        "turbo2",  "turbo3",  "turbo4"};
  /// Also measure uniform fraqtl@B at every level; the level keeps whichever of the
  /// allocated and the uniform budgets measured the lower KL.
  bool compare_uniform = true;
  AllocationOptions allocation;
  int threads = 1;  // stream encode threads
  /// (fraction of all arms done, stage).
  std::function<void(double, const std::string&)> progress;
};

/// One measured arm of the golden protocol.
struct ArmRow {
  std::string label;  // what the report calls it
  std::string spec;   // codec spec
  double target = 0;  // nominal bits/element (0 for baselines)
  double bits = 0;    // measured all-in bits/element (stream bytes)
  double kl = -1, dppl = 0, dppl_pct = 0, top1 = 0;
  std::string error;  // non-empty: the arm could not run (reason)
  bool ok() const { return error.empty(); }
};

struct LevelOutcome {
  std::string name;
  double budget = 0;
  std::vector<double> allocation;  // [layers * 2] greedy allocation from the sweep
  double predicted_kl = 0;         // sum of the modelled single-tensor KLs at the allocation
  ArmRow allocated, uniform;
  bool chose_allocated = true;  // false: the level keeps uniform budgets (measured better)
};

struct DiagnoseResult {
  SweepResult sweep;
  std::vector<LevelOutcome> levels;
  std::vector<ArmRow> baselines;
  std::string sign_verdict, delta_verdict;  // one line each
  double ref_ppl = 0;
  uint64_t positions = 0;
  double sweep_s = 0, validate_s = 0, baselines_s = 0;
};

/// Runs steps 2-3 on `eval` with `profile` (calibrated); writes the levels (budgets and
/// measured KL/dPPL/top-1) and a summary line per level into `profile` (levels named "%g" of
/// the budget are replaced or added; other levels are left as they are).
Result<DiagnoseResult> Diagnose(const GoldenEval& eval, Profile* profile,
                                const DiagnoseOptions& options);

/// What the report says about the run (free text, already formatted).
struct ReportContext {
  std::string command, date, model, model_summary, fingerprint, calib_text, sweep_text;
  std::string profile_path, profile_id, calib_source, machine;
  double calibrate_s = 0, reference_s = 0, total_s = 0;
};

/// Writes DIR/report.md, DIR/sensitivity.svg (layer x bits heat map of the sweep's KL) and
/// DIR/rate_distortion.svg (KL, log scale, against bits for fraqtl and every baseline);
/// creates DIR if needed.
Status WriteDiagnoseReport(const std::string& dir, const DiagnoseResult& result,
                           const Profile& profile, const GoldenEval& eval,
                           const ReportContext& context);

}  // namespace kvwire::diag
