// kvwire/diagnostics.h — calibration of fraqtl profiles (bases, codebooks, rANS tables).
//
// Calibration accumulates, per (layer, K|V, kv_head), the mean and covariance of the cached
// vectors and a downstream metric M, then builds the coding basis:
//   K  (post-RoPE): M = sum over the query heads g of the KV group of E[q_g q_g^T] / head_dim,
//      so x^T M x is the expected squared logit error a key error x causes;
//   K  (pre-RoPE, coded before RoPE is applied): a query at position m and a key at n interact
//      as q~^T R(n - m) k~, so the error of k~ is seen through R(m - n) q~; the metric is
//      E_Delta[R(Delta) S~ R(Delta)^T] with S~ the pre-RoPE query second moment and Delta = m - n
//      distributed as attention distributes it over offsets ("attention") or uniformly over
//      causal pairs ("uniform");
//   V: M = sum over the query heads g of the group of W_O,g^T W_O,g (identity for KV dumps, which
//      carry no weights);
// then A = M^{1/2} (ridge-regularized), the eigenbasis U of A C A (C: covariance) and
// z = U^T A (x - mu), so the squared error of z is the metric error ("metric" basis). "pca" uses
// M = I; "random" a seeded random rotation. Lloyd-Max codebooks for 1..8 bits are fitted to the
// pooled normalized coefficients z_i / sqrt(lambda_i). All in double precision with the
// deterministic eigensolver, so the same input gives the same profile bytes.
//
// Thread-safety: a Calibrator is used by one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvwire/kv_view.h"
#include "kvwire/model.h"
#include "kvwire/profile.h"
#include "kvwire/status.h"

namespace kvwire {

struct CalibrationOptions {
  std::string basis = "metric";                // "metric", "pca" or "random"
  std::string offset_weighting = "attention";  // pre-RoPE K metric: "attention" or "uniform"
  double ridge = 1e-3;                         // metric regularization, relative to trace / dim
  bool calibrated_codebooks = true;            // false: Gaussian Lloyd-Max (no codebooks stored)
  uint64_t seed = 1;                           // random basis
  /// Ladder of level budgets written to the profile (uniform per layer until diagnosed).
  std::vector<double> ladder = {0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0};
  /// Called with (fraction done in [0, 1], stage) from the calibrating thread.
  std::function<void(double, const std::string&)> progress;
};

/// Accumulates calibration windows, then builds a Profile.
class Calibrator {
 public:
  struct Shape {
    uint32_t layers = 0, kv_heads = 0, heads = 0, head_dim = 0;
    double rope_theta = 0;  // 0: unknown (no pre-RoPE bases)
    std::string rope_style = "none";
    uint32_t rope_dim = 0;
  };
  static Result<std::unique_ptr<Calibrator>> Create(const Shape& shape,
                                                    const CalibrationOptions& options);
  ~Calibrator();

  /// Adds one window: a cache of [tokens, kv_heads, head_dim] K (post-RoPE) and V, with queries
  /// [tokens, heads, head_dim] (post-RoPE) when available; RoPE positions from its metadata.
  /// Without queries the K metric falls back to the identity (noted in the profile).
  Status AddWindow(const KvCache& window);
  /// Sets the V metric of (layer, kv_head): [head_dim, head_dim] row-major, symmetric PSD.
  Status SetValueMetric(uint32_t layer, uint32_t kv_head, std::span<const double> metric);
  /// Builds the profile (bases, codebooks, ladder of uniform levels).
  Result<Profile> Finish(const std::string& model_fingerprint, const std::string& source);

  struct Impl;

 private:
  explicit Calibrator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Calibrates on `tokens` run through `model` in consecutive windows of `window` tokens (with
/// queries), V metric from the model file's W_O (`model_path` is re-read for the weights).
Result<Profile> CalibrateFromModel(const Model& model, const std::string& model_path,
                                   std::span<const int32_t> tokens, uint32_t window,
                                   const CalibrationOptions& options);

/// Calibrates on KV dumps (safetensors, with q.<layer> if captured --with-queries); the V
/// metric is the identity (dumps carry no weights).
Result<Profile> CalibrateFromDumps(std::span<const KvCache> dumps,
                                   const CalibrationOptions& options);

/// Lloyd-Max codebook of `bits` fitted to `samples` (deterministic; starts from the Gaussian
/// codebook). Returns 2^bits strictly ascending levels and, in *mse, the sample distortion.
std::vector<float> FitLloydMax(std::span<const float> sorted_samples, int bits, double* mse);

}  // namespace kvwire
