// Internal pieces of calibration: running statistics of one (layer, slot, kv_head), the
// RoPE-averaged key metric, and the basis construction. Double precision throughout.
#pragma once

#include <cstdint>
#include <vector>

#include "codec/fraqtl_math.h"
#include "kvwire/diagnostics.h"
#include "kvwire/profile.h"

namespace kvwire::diag {

using Mat = std::vector<double>;  // row-major square matrix

/// Adds x x^T (x: float [d]) to the d x d matrix *m.
void AddOuter(Mat* m, const float* x, size_t d);

/// Mean, second moment and a reservoir sample of rows (for codebook fitting).
struct SlotStats {
  static constexpr size_t kReservoirRows = 8192;
  explicit SlotStats(size_t d) : d(d), sum(d, 0.0), sumsq(d * d, 0.0) {}
  void Add(const float* x);

  size_t d;
  double count = 0;
  std::vector<double> sum;
  Mat sumsq;
  std::vector<float> rows;  // [<= kReservoirRows, d]
  uint64_t seen = 0;
  uint64_t rng = 0x853c49e6748fea9bull;
};

/// E_Delta[R(Delta) S R(Delta)^T] * norm with Delta distributed as `mass` (normalized here);
/// S: d x d second moment of pre-RoPE queries.
Mat RopeAveragedMetric(const Mat& s, double norm, const std::vector<double>& mass,
                       const fraqtl::Rope& rope, size_t d);

/// Builds mean, forward/inverse transforms, variances and codebooks of one basis. `metric`
/// empty = identity.
void BuildBasis(const SlotStats& stats, const Mat& metric, const CalibrationOptions& options,
                ProfileBasis* out, size_t d);

}  // namespace kvwire::diag
