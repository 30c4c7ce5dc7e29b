// Calibrator: statistics of calibration windows -> profile bases (kvwire/diagnostics.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "codec/baseline_linalg.h"
#include "codec/fraqtl_math.h"
#include "codec/lloyd_max.h"
#include "common/fp16.h"
#include "diagnostics/calibration_stats.h"
#include "kvwire/diagnostics.h"

namespace kvwire {

using diag::Mat;
using diag::SlotStats;

struct Calibrator::Impl {
  Shape shape;
  CalibrationOptions options;
  fraqtl::Rope rope;
  // [layers, 3 slots, kv_heads]
  std::vector<SlotStats> stats;
  // Per (layer, kv_head): second moments of the group's queries, post- and pre-RoPE.
  std::vector<Mat> q_post, q_pre;
  std::vector<double> q_count;
  // Per (layer, kv_head): attention mass by offset Delta = m - n (sums over queries).
  std::vector<std::vector<double>> offset_mass;
  std::vector<Mat> v_metric;  // empty entries: identity
  uint64_t tokens = 0;
  bool any_queries = false, all_queries = true;

  SlotStats& slot(uint32_t l, ProfileSlot s, uint32_t h) {
    return stats[(size_t{l} * kProfileSlots + static_cast<uint32_t>(s)) * shape.kv_heads + h];
  }
};

Calibrator::Calibrator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Calibrator::~Calibrator() = default;

Result<std::unique_ptr<Calibrator>> Calibrator::Create(const Shape& shape,
                                                       const CalibrationOptions& options) {
  KVWIRE_RETURN_IF_ERROR(ValidateShape({shape.layers, 1, shape.kv_heads, shape.head_dim}));
  KVWIRE_RETURN_ERROR_IF(shape.heads != 0 && shape.heads % shape.kv_heads != 0, kInvalidArgument,
                         "calibrate: heads must be a multiple of kv_heads");
  KVWIRE_RETURN_ERROR_IF(
      options.basis != "metric" && options.basis != "pca" && options.basis != "random",
      kInvalidArgument, "calibrate: basis must be metric, pca or random");
  KVWIRE_RETURN_ERROR_IF(
      options.offset_weighting != "attention" && options.offset_weighting != "uniform",
      kInvalidArgument, "calibrate: offset weighting must be attention or uniform");
  auto impl = std::make_unique<Impl>();
  impl->shape = shape;
  impl->options = options;
  impl->rope.theta = shape.rope_style == "none" ? 0 : shape.rope_theta;
  impl->rope.neox = shape.rope_style == "neox";
  impl->rope.rope_dim = shape.rope_dim;
  impl->rope.CacheFrequencies();
  const size_t d = shape.head_dim, lh = size_t{shape.layers} * shape.kv_heads;
  impl->stats.resize(lh * kProfileSlots, SlotStats(d));
  impl->q_post.assign(lh, Mat(d * d, 0.0));
  impl->q_pre.assign(lh, Mat(d * d, 0.0));
  impl->q_count.assign(lh, 0.0);
  impl->offset_mass.resize(lh);
  impl->v_metric.resize(lh);
  return std::unique_ptr<Calibrator>(new Calibrator(std::move(impl)));
}

Status Calibrator::SetValueMetric(uint32_t layer, uint32_t kv_head,
                                  std::span<const double> metric) {
  const size_t d = impl_->shape.head_dim;
  KVWIRE_RETURN_ERROR_IF(
      layer >= impl_->shape.layers || kv_head >= impl_->shape.kv_heads || metric.size() != d * d,
      kInvalidArgument, "calibrate: value metric of the wrong shape");
  impl_->v_metric[size_t{layer} * impl_->shape.kv_heads + kv_head].assign(metric.begin(),
                                                                          metric.end());
  return Status::Ok();
}

namespace {

// Row `row` of a [rows, width] tensor of `dtype` as float.
void ReadRow(std::span<const uint8_t> bytes, DType dtype, size_t row, size_t width, float* out) {
  const size_t es = DTypeSize(dtype);
  const uint8_t* p = bytes.data() + row * width * es;
  for (size_t i = 0; i < width; ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&out[i], p + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = dtype == DType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
    }
  }
}

}  // namespace

Status Calibrator::AddWindow(const KvCache& w) {
  Impl& m = *impl_;
  const Shape& s = m.shape;
  const KvShape& ws = w.shape();
  KVWIRE_RETURN_ERROR_IF(
      ws.layers != s.layers || ws.kv_heads != s.kv_heads || ws.head_dim != s.head_dim,
      kInvalidArgument, "calibrate: window shape does not match the model");
  const size_t d = s.head_dim, T = ws.tokens, H = s.kv_heads;
  const bool has_q = w.q_heads() > 0;
  KVWIRE_RETURN_ERROR_IF(has_q && s.heads != 0 && w.q_heads() != s.heads, kInvalidArgument,
                         "calibrate: window has " + std::to_string(w.q_heads()) +
                             " query heads, "
                             "expected " +
                             std::to_string(s.heads));
  m.any_queries = m.any_queries || has_q;
  m.all_queries = m.all_queries && has_q;
  const uint32_t qh = has_q ? w.q_heads() : 0, group = qh ? qh / H : 1;
  const int64_t pos0 = w.metadata().positions_start;
  const bool rope = m.rope.enabled();
  const uint32_t half = rope ? m.rope.rope_dim / 2 : 0;
  std::vector<float> cs(2 * std::max<uint32_t>(half, 1) * T);
  if (rope) {
    for (size_t t = 0; t < T; ++t)
      m.rope.Angles(pos0 + int64_t(t), &cs[2 * half * t], &cs[2 * half * t + half]);
  }
  std::vector<float> row(std::max<size_t>(d * H, d * qh)), x(d);
  std::vector<double> xd(d);
  std::vector<float> keys(T * H * d), queries(T * qh * d);
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (size_t t = 0; t < T; ++t) {
      ReadRow(w.tensor(l, KvKind::kKey), w.dtype(), t, H * d, &keys[t * H * d]);
      ReadRow(w.tensor(l, KvKind::kValue), w.dtype(), t, H * d, row.data());
      for (uint32_t h = 0; h < H; ++h) {
        const float* k = &keys[(t * H + h) * d];
        m.slot(l, ProfileSlot::kKey, h).Add(k);
        m.slot(l, ProfileSlot::kValue, h).Add(&row[h * d]);
        if (rope) {
          std::copy_n(k, d, x.data());
          m.rope.Rotate(x.data(), &cs[2 * half * t], &cs[2 * half * t + half], /*undo=*/true);
          m.slot(l, ProfileSlot::kKeyPreRope, h).Add(x.data());
        }
      }
      if (has_q) ReadRow(w.queries(l), w.dtype(), t, qh * d, &queries[t * qh * d]);
    }
    if (!has_q) continue;
    // Query second moments, post- and pre-RoPE, summed over the heads of each group.
    for (size_t t = 0; t < T; ++t) {
      for (uint32_t g = 0; g < qh; ++g) {
        const uint32_t h = g / group;
        const float* q = &queries[(t * qh + g) * d];
        diag::AddOuter(&m.q_post[size_t{l} * H + h], q, d);
        if (rope) {
          std::copy_n(q, d, x.data());
          m.rope.Rotate(x.data(), &cs[2 * half * t], &cs[2 * half * t + half], /*undo=*/true);
          diag::AddOuter(&m.q_pre[size_t{l} * H + h], x.data(), d);
        }
        if (g % group == 0) m.q_count[size_t{l} * H + h] += 1.0;
      }
    }
    // Attention mass by offset (causal softmax of the window's own scores).
    if (rope) {
      const bool uniform = m.options.offset_weighting == "uniform";
      std::vector<double> sc(T);
      const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
      for (uint32_t g = 0; g < qh; ++g) {
        const uint32_t h = g / group;
        auto& mass = m.offset_mass[size_t{l} * H + h];
        if (mass.size() < T) mass.resize(T, 0.0);
        for (size_t i = 0; i < T; ++i) {
          if (uniform) {
            for (size_t n = 0; n <= i; ++n) mass[i - n] += 1.0 / static_cast<double>(i + 1);
            continue;
          }
          const float* q = &queries[(i * qh + g) * d];
          double mx = -1e300;
          for (size_t n = 0; n <= i; ++n) {
            const float* k = &keys[(n * H + h) * d];
            double dot = 0;
            for (size_t j = 0; j < d; ++j) dot += static_cast<double>(q[j]) * k[j];
            sc[n] = dot * inv_sqrt_d;
            mx = std::max(mx, sc[n]);
          }
          double sum = 0;
          for (size_t n = 0; n <= i; ++n) sum += (sc[n] = std::exp(sc[n] - mx));
          for (size_t n = 0; n <= i; ++n) mass[i - n] += sc[n] / sum;
        }
      }
    }
  }
  m.tokens += T;
  return Status::Ok();
}

Result<Profile> Calibrator::Finish(const std::string& fingerprint, const std::string& source) {
  Impl& m = *impl_;
  const Shape& s = m.shape;
  const size_t d = s.head_dim, H = s.kv_heads;
  KVWIRE_RETURN_ERROR_IF(m.tokens < 2, kInvalidArgument, "calibrate: fewer than 2 tokens");
  Profile p;
  p.model_fingerprint = fingerprint;
  p.layers = s.layers;
  p.kv_heads = s.kv_heads;
  p.heads = s.heads;
  p.head_dim = s.head_dim;
  const bool rope = m.rope.enabled();
  p.rope_theta = rope ? s.rope_theta : 0;
  p.rope_style = rope ? s.rope_style : "none";
  p.rope_dim = rope ? s.rope_dim : 0;
  p.basis_kind = m.options.basis;
  const bool use_q = m.all_queries;
  p.key_metric = use_q ? std::string("query; pre-RoPE: query rotated by ") +
                             m.options.offset_weighting + "-weighted offsets"
                       : "identity (no queries captured)";
  bool any_v = false;
  for (const Mat& v : m.v_metric) any_v = any_v || !v.empty();
  p.value_metric = any_v ? "W_O^T W_O of the group's query heads" : "identity (no W_O weights)";
  if (m.options.basis != "metric")
    p.key_metric = p.value_metric = "identity (" + m.options.basis + ")";
  p.calib_tokens = m.tokens;
  p.calib_source = source;
  p.bases.resize(size_t{s.layers} * kProfileSlots * H);
  const size_t total = p.bases.size();
  size_t done = 0;
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (uint32_t sl = 0; sl < kProfileSlots; ++sl) {
      const auto slot = static_cast<ProfileSlot>(sl);
      for (uint32_t h = 0; h < H; ++h, ++done) {
        if (m.options.progress)
          m.options.progress(0.9 + 0.1 * double(done) / total, "bases and codebooks");
        if (slot == ProfileSlot::kKeyPreRope && !rope) continue;
        const size_t lh = size_t{l} * H + h;
        Mat metric;  // empty: identity
        if (m.options.basis == "metric") {
          if (slot == ProfileSlot::kValue) {
            metric = m.v_metric[lh];
          } else if (use_q && m.q_count[lh] > 0) {
            const double norm = 1.0 / (m.q_count[lh] * static_cast<double>(d));
            if (slot == ProfileSlot::kKey) {
              metric = m.q_post[lh];
              for (double& v : metric) v *= norm;
            } else {
              metric = diag::RopeAveragedMetric(m.q_pre[lh], norm, m.offset_mass[lh], m.rope, d);
            }
          }
        }
        diag::BuildBasis(m.slot(l, slot, h), metric, m.options, &p.basis(l, slot, h), d);
      }
    }
  }
  for (double b : m.options.ladder) {
    ProfileLevel lv;
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", b);
    lv.name = buf;
    lv.bits = b;
    lv.budgets.assign(size_t{s.layers} * 2, b);
    p.levels.push_back(std::move(lv));
  }
  KVWIRE_RETURN_IF_ERROR(p.Validate().WithContext("calibrate"));
  if (m.options.progress) m.options.progress(1.0, "done");
  return p;
}

}  // namespace kvwire
