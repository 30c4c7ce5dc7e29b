// Basis construction and codebook fitting (calibration_stats.h, kvwire/diagnostics.h).
#include <algorithm>
#include <cmath>

#include "codec/baseline_linalg.h"
#include "codec/lloyd_max.h"
#include "codec/rans.h"
#include "diagnostics/calibration_stats.h"

namespace kvwire {

std::vector<float> FitLloydMax(std::span<const float> x, int bits, double* mse) {
  const auto& gauss = baseline::GaussianLloydMax(bits);
  const size_t L = gauss.levels.size(), n = x.size();
  std::vector<double> lv(gauss.levels.begin(), gauss.levels.end());
  std::vector<double> s1(n + 1, 0.0), s2(n + 1, 0.0);
  for (size_t i = 0; i < n; ++i) {
    s1[i + 1] = s1[i] + x[i];
    s2[i + 1] = s2[i] + static_cast<double>(x[i]) * x[i];
  }
  std::vector<size_t> edge(L + 1);
  auto cells = [&] {
    edge[0] = 0;
    edge[L] = n;
    for (size_t i = 1; i < L; ++i) {
      const float t = static_cast<float>(0.5 * (lv[i - 1] + lv[i]));
      // Values equal to a threshold go to the lower level (as the codec quantizes).
      edge[i] = static_cast<size_t>(std::upper_bound(x.begin(), x.end(), t) - x.begin());
    }
  };
  for (int it = 0; it < 200 && n > 0; ++it) {
    cells();
    double move = 0;
    for (size_t i = 0; i < L; ++i) {
      const size_t c = edge[i + 1] - edge[i];
      if (c == 0) continue;
      const double nl = (s1[edge[i + 1]] - s1[edge[i]]) / static_cast<double>(c);
      move = std::max(move, std::fabs(nl - lv[i]));
      lv[i] = nl;
    }
    if (move < 1e-7) break;
  }
  std::vector<float> out(L);
  bool ok = n > 0;
  for (size_t i = 0; i < L; ++i) {
    out[i] = static_cast<float>(lv[i]);
    if (i > 0 && !(out[i] > out[i - 1])) ok = false;
  }
  if (!ok) out = gauss.levels;  // degenerate sample: fall back to the Gaussian codebook
  for (size_t i = 0; i < L; ++i) lv[i] = out[i];
  cells();
  double err = 0;
  for (size_t i = 0; i < L; ++i) {
    const size_t a = edge[i], b = edge[i + 1];
    err += (s2[b] - s2[a]) - 2.0 * lv[i] * (s1[b] - s1[a]) + lv[i] * lv[i] * double(b - a);
  }
  *mse = n > 0 ? std::max(0.0, err / static_cast<double>(n)) : gauss.distortion;
  return out;
}

namespace diag {

void AddOuter(Mat* m, const float* x, size_t d) {
  double* p = m->data();
  for (size_t i = 0; i < d; ++i) {
    const double xi = x[i];
    for (size_t j = 0; j < d; ++j) p[i * d + j] += xi * x[j];
  }
}

void SlotStats::Add(const float* x) {
  count += 1;
  for (size_t i = 0; i < d; ++i) sum[i] += x[i];
  AddOuter(&sumsq, x, d);
  // Reservoir sampling with a fixed-seed splitmix64: deterministic for a given input order.
  ++seen;
  size_t slot = rows.size() / d;
  if (slot >= kReservoirRows) {
    rng += 0x9e3779b97f4a7c15ull;
    uint64_t z = rng;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    slot = z % seen;
    if (slot >= kReservoirRows) return;
    std::copy_n(x, d, rows.data() + slot * d);
    return;
  }
  rows.insert(rows.end(), x, x + d);
}

Mat RopeAveragedMetric(const Mat& s, double norm, const std::vector<double>& mass,
                       const fraqtl::Rope& rope, size_t d) {
  double total = 0;
  for (double w : mass) total += w;
  Mat out(d * d, 0.0);
  if (!(total > 0)) {  // no offsets seen: the unrotated (naive) metric
    for (size_t i = 0; i < d * d; ++i) out[i] = s[i] * norm;
    return out;
  }
  const uint32_t half = rope.rope_dim / 2;
  std::vector<double> c(half), sn(half);
  Mat x(d * d);
  auto rotate_rows = [&](Mat* m) {  // each row r of *m becomes R r (as a vector)
    for (size_t r = 0; r < d; ++r) {
      double* v = m->data() + r * d;
      for (uint32_t i = 0; i < half; ++i) {
        const uint32_t i0 = rope.neox ? i : 2 * i, i1 = rope.neox ? i + half : 2 * i + 1;
        const double a = v[i0], b = v[i1];
        v[i0] = a * c[i] - b * sn[i];
        v[i1] = a * sn[i] + b * c[i];
      }
    }
  };
  for (size_t delta = 0; delta < mass.size(); ++delta) {
    const double w = mass[delta] / total;
    if (w == 0) continue;
    for (uint32_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(delta) * std::pow(rope.theta, -2.0 * i / rope.rope_dim);
      c[i] = std::cos(a);
      sn[i] = std::sin(a);
    }
    // R S R^T: S symmetric, so rotating its rows gives (R S)^T = S R^T; transpose, rotate again.
    x = s;
    rotate_rows(&x);  // rows: S R^T
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = i + 1; j < d; ++j) std::swap(x[i * d + j], x[j * d + i]);
    }
    rotate_rows(&x);  // rows of R S, rotated: (R S) R^T
    for (size_t i = 0; i < d * d; ++i) out[i] += w * norm * x[i];
  }
  for (size_t i = 0; i < d; ++i) {  // symmetrize the rounding
    for (size_t j = i + 1; j < d; ++j) {
      const double v = 0.5 * (out[i * d + j] + out[j * d + i]);
      out[i * d + j] = out[j * d + i] = v;
    }
  }
  return out;
}

void BuildBasis(const SlotStats& st, const Mat& metric, const CalibrationOptions& options,
                ProfileBasis* out, size_t d) {
  const double n = std::max(st.count, 1.0);
  std::vector<double> mean(d);
  for (size_t i = 0; i < d; ++i) mean[i] = st.sum[i] / n;
  Mat cov(d * d);
  for (size_t i = 0; i < d; ++i) {
    for (size_t j = 0; j < d; ++j) cov[i * d + j] = st.sumsq[i * d + j] / n - mean[i] * mean[j];
  }
  // A = M^{1/2} and A^{-1} (identity without a metric).
  Mat a(d * d, 0.0), ainv(d * d, 0.0);
  if (metric.empty()) {
    for (size_t i = 0; i < d; ++i) a[i * d + i] = ainv[i * d + i] = 1.0;
  } else {
    Mat m = metric;
    double tr = 0;
    for (size_t i = 0; i < d; ++i) tr += m[i * d + i];
    const double ridge = std::max(options.ridge * tr / d, 1e-30);
    for (size_t i = 0; i < d; ++i) m[i * d + i] += ridge;
    std::vector<double> mu, q;
    baseline::SymmetricEigen(d, m, &mu, &q);  // rows of q: eigenvectors
    for (size_t k = 0; k < d; ++k) {
      const double s = std::sqrt(std::max(mu[k], ridge)), si = 1.0 / s;
      for (size_t i = 0; i < d; ++i) {
        for (size_t j = 0; j < d; ++j) {
          a[i * d + j] += q[k * d + i] * s * q[k * d + j];
          ainv[i * d + j] += q[k * d + i] * si * q[k * d + j];
        }
      }
    }
  }
  auto matmul = [d](const Mat& x, const Mat& y) {
    Mat r(d * d, 0.0);
    for (size_t i = 0; i < d; ++i) {
      for (size_t k = 0; k < d; ++k) {
        const double v = x[i * d + k];
        for (size_t j = 0; j < d; ++j) r[i * d + j] += v * y[k * d + j];
      }
    }
    return r;
  };
  Mat fwd, inv;  // fwd rows: directions; inv = fwd^{-1}
  std::vector<double> var(d);
  if (options.basis == "random") {
    Mat r = baseline::RandomOrthogonal(d, options.seed);
    std::vector<std::pair<double, size_t>> order(d);
    const Mat rc = matmul(r, cov);
    for (size_t i = 0; i < d; ++i) {
      double v = 0;
      for (size_t j = 0; j < d; ++j) v += rc[i * d + j] * r[i * d + j];
      order[i] = {v, i};
    }
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& x, const auto& y) { return x.first > y.first; });
    fwd.resize(d * d);
    for (size_t i = 0; i < d; ++i) {
      var[i] = std::max(order[i].first, 0.0);
      std::copy_n(r.data() + order[i].second * d, d, fwd.data() + i * d);
    }
    inv.resize(d * d);
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = 0; j < d; ++j) inv[j * d + i] = fwd[i * d + j];
    }
  } else {
    const Mat cy = matmul(matmul(a, cov), a);
    std::vector<double> lam, v;
    baseline::SymmetricEigen(d, cy, &lam, &v);
    fwd = matmul(v, a);  // row i: v_i^T A
    Mat vt(d * d);
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = 0; j < d; ++j) vt[j * d + i] = v[i * d + j];
    }
    inv = matmul(ainv, vt);
    for (size_t i = 0; i < d; ++i) var[i] = std::max(lam[i], 0.0);
    for (size_t i = 1; i < d; ++i) var[i] = std::min(var[i], var[i - 1]);
  }
  out->mean.assign(mean.begin(), mean.end());
  out->forward.assign(fwd.begin(), fwd.end());
  out->inverse.assign(inv.begin(), inv.end());
  out->variance = var;
  out->distortion.assign(kProfileMaxBits + 1, 1.0);
  out->codebook_levels.clear();
  if (!options.calibrated_codebooks) {
    for (int b = 1; b <= kProfileMaxBits; ++b)
      out->distortion[b] = baseline::GaussianLloydMax(b).distortion;
    return;
  }
  // Pooled normalized coefficients of the sampled rows (directions with non-negligible variance).
  std::vector<float> u;
  const size_t rows = st.rows.size() / d;
  u.reserve(rows * d);
  std::vector<double> xc(d);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < d; ++j) xc[j] = st.rows[r * d + j] - mean[j];
    for (size_t i = 0; i < d; ++i) {
      if (!(var[i] > 1e-9 * var[0])) continue;
      double z = 0;
      for (size_t j = 0; j < d; ++j) z += fwd[i * d + j] * xc[j];
      u.push_back(static_cast<float>(z / std::sqrt(var[i])));
    }
  }
  std::sort(u.begin(), u.end());
  double e0 = 0;
  for (float x : u) e0 += static_cast<double>(x) * x;
  out->distortion[0] = u.empty() ? 1.0 : std::min(e0 / u.size(), 16.0);
  out->rans_freq.clear();
  for (int b = 1; b <= kProfileMaxBits; ++b) {
    double mse = 0;
    const std::vector<float> lv = FitLloydMax(u, b, &mse);
    out->codebook_levels.insert(out->codebook_levels.end(), lv.begin(), lv.end());
    out->distortion[b] = std::min(mse, 16.0);
    // rANS frequencies: how often each cell occurs (threshold ties go to the lower cell, as
    // the codec quantizes), plus one half so that no cell is impossible.
    std::vector<double> count(lv.size(), 0.5);
    size_t lo = 0;
    for (size_t c = 0; c < lv.size(); ++c) {
      const size_t hi =
          c + 1 < lv.size()
              ? static_cast<size_t>(std::upper_bound(u.begin(), u.end(),
                                                     0.5f * (lv[c] + lv[c + 1])) -
                                    u.begin())
              : u.size();
      count[c] += static_cast<double>(hi - lo);
      lo = hi;
    }
    const std::vector<uint16_t> f = rans::NormalizeFrequencies(count);
    out->rans_freq.insert(out->rans_freq.end(), f.begin(), f.end());
  }
}

}  // namespace diag
}  // namespace kvwire
