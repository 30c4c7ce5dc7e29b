// Calibration sources: the reference runner (queries + W_O) or KV dumps (kvwire/diagnostics.h).
#include <algorithm>

#include "kvwire/diagnostics.h"
#include "kvwire/kv_file.h"
#include "model/model_impl.h"

namespace kvwire {
namespace {

// W_O,g^T W_O,g summed over the query heads g of each KV group, from the model file's weights.
Status SetValueMetrics(const std::string& model_path, const ModelConfig& c, Calibrator* cal) {
  KVWIRE_ASSIGN_OR_RETURN(auto bytes, ReadFileBytes(model_path));
  auto loaded =
      model::LooksLikeGguf(bytes) ? model::LoadGgufModel(bytes) : model::LoadLlama2cModel(bytes);
  if (!loaded.ok()) return loaded.status().WithContext("calibrate: reading W_O");
  const model::ModelWeights& w = loaded->weights;
  const size_t d = c.head_dim, in = size_t{c.heads} * d, group = c.heads / c.kv_heads;
  KVWIRE_RETURN_ERROR_IF(w.layers.size() != c.layers, kInternal, "calibrate: layer count mismatch");
  for (uint32_t l = 0; l < c.layers; ++l) {
    const std::vector<float>& wo = w.layers[l].wo;  // [dim, heads * head_dim]
    KVWIRE_RETURN_ERROR_IF(wo.size() != size_t{c.dim} * in, kInternal, "calibrate: W_O shape");
    for (uint32_t h = 0; h < c.kv_heads; ++h) {
      std::vector<double> m(d * d, 0.0);
      for (size_t g = h * group; g < (h + 1) * group; ++g) {
        for (size_t r = 0; r < c.dim; ++r) {
          const float* row = wo.data() + r * in + g * d;
          for (size_t i = 0; i < d; ++i) {
            const double ri = row[i];
            for (size_t j = 0; j < d; ++j) m[i * d + j] += ri * row[j];
          }
        }
      }
      KVWIRE_RETURN_IF_ERROR(cal->SetValueMetric(l, h, m));
    }
  }
  return Status::Ok();
}

}  // namespace

Result<Profile> CalibrateFromModel(const Model& model, const std::string& model_path,
                                   std::span<const int32_t> tokens, uint32_t window,
                                   const CalibrationOptions& options) {
  const ModelConfig& c = model.config();
  KVWIRE_RETURN_ERROR_IF(window < 2, kInvalidArgument, "calibrate: window must be >= 2 tokens");
  KVWIRE_RETURN_ERROR_IF(tokens.size() < 2, kInvalidArgument,
                         "calibrate: the calibration text has fewer than 2 tokens");
  Calibrator::Shape shape;
  shape.layers = c.layers;
  shape.kv_heads = c.kv_heads;
  shape.heads = c.heads;
  shape.head_dim = c.head_dim;
  // Llama3-style frequency factors change the angles: pre-RoPE coding is off for such models.
  if (!c.has_rope_freq_factors) {
    shape.rope_theta = c.rope_theta;
    shape.rope_style = std::string(RopeStyleName(c.rope_style));
    shape.rope_dim = c.rope_dim;
  }
  KVWIRE_ASSIGN_OR_RETURN(auto cal, Calibrator::Create(shape, options));
  if (options.basis == "metric") KVWIRE_RETURN_IF_ERROR(SetValueMetrics(model_path, c, cal.get()));
  const size_t windows = (tokens.size() + window - 1) / window;
  for (size_t i = 0; i < windows; ++i) {
    const size_t b = i * window, n = std::min<size_t>(window, tokens.size() - b);
    if (n < 2) break;
    if (options.progress) options.progress(0.9 * double(i) / windows, "prefill + statistics");
    KVWIRE_ASSIGN_OR_RETURN(KvCache kv, model.Prefill(tokens.subspan(b, n), DType::kF32, true, 0));
    KVWIRE_RETURN_IF_ERROR(cal->AddWindow(kv));
  }
  return cal->Finish(model.fingerprint(), std::to_string(tokens.size()) + " tokens in " +
                                              std::to_string(windows) + " windows of " +
                                              std::to_string(window));
}

Result<Profile> CalibrateFromDumps(std::span<const KvCache> dumps,
                                   const CalibrationOptions& options) {
  KVWIRE_RETURN_ERROR_IF(dumps.empty(), kInvalidArgument, "calibrate: no KV dumps");
  const KvCache& first = dumps[0];
  Calibrator::Shape shape;
  shape.layers = first.shape().layers;
  shape.kv_heads = first.shape().kv_heads;
  shape.heads = first.q_heads();
  shape.head_dim = first.shape().head_dim;
  const KvMetadata& md = first.metadata();
  if ((md.rope_style == "interleaved" || md.rope_style == "neox") && md.rope_theta > 0) {
    shape.rope_theta = md.rope_theta;
    shape.rope_style = md.rope_style;
    shape.rope_dim = shape.head_dim;  // dumps do not say; full-head RoPE assumed
  }
  KVWIRE_ASSIGN_OR_RETURN(auto cal, Calibrator::Create(shape, options));
  for (size_t i = 0; i < dumps.size(); ++i) {
    if (options.progress) options.progress(0.9 * double(i) / dumps.size(), "statistics");
    KVWIRE_RETURN_IF_ERROR(cal->AddWindow(dumps[i]).WithContext("dump " + std::to_string(i)));
  }
  return cal->Finish(md.model_fingerprint, std::to_string(dumps.size()) + " KV dumps");
}

}  // namespace kvwire
