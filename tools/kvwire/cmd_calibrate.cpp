// kvwire calibrate: calibration text (or KV dumps) -> fraqtl profile (.kvp).
#ifdef KVWIRE_HAVE_MODEL
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "kvwire/diagnostics.h"
#include "kvwire/kv_file.h"
#include "kvwire/model.h"
#include "kvwire/profile.h"

namespace kvwire::cli {
namespace {

struct CalibrateArgs {
  std::string model, tokenizer, text, out, basis = "metric", offsets = "attention", book = "calib";
  std::vector<std::string> dumps;
  uint64_t tokens = 16384;
  uint32_t window = 0;
  int threads = 0;
  double ridge = 1e-3;
};

int RunCalibrate(const CalibrateArgs& a) {
  const char* cmd = "calibrate";
  CalibrationOptions opt;
  opt.basis = a.basis;
  opt.offset_weighting = a.offsets;
  opt.ridge = a.ridge;
  opt.calibrated_codebooks = a.book == "calib";
  opt.progress = ProgressBar("calibrate");
  Result<Profile> profile = Status(StatusCode::kInternal, "unset");
  if (!a.dumps.empty()) {
    std::vector<KvCache> caches;
    for (const std::string& f : a.dumps) {
      auto c = LoadKvDump(f);
      if (!c.ok()) return FailStatus(cmd, c.status().WithContext(f));
      caches.push_back(std::move(*c));
    }
    if (caches[0].q_heads() == 0) {
      std::cerr << "note: the dumps carry no queries: the K metric is the identity (PCA)\n";
    }
    std::cerr << "note: KV dumps carry no W_O weights: the V metric is the identity (PCA)\n";
    profile = CalibrateFromDumps(caches, opt);
  } else {
    if (a.model.empty() || a.text.empty())
      return Fail(cmd, "--model and --text are required (or --dumps)");
    ModelOptions mo;
    mo.tokenizer_path = a.tokenizer;
    mo.threads = a.threads;
    auto model = Model::Load(a.model, mo);
    if (!model.ok()) return FailStatus(cmd, model.status().WithContext(a.model));
    if (Status s = (*model)->TokenizerStatus(); !s.ok()) return FailStatus(cmd, s);
    auto bytes = ReadFileBytes(a.text);
    if (!bytes.ok()) return FailStatus(cmd, bytes.status().WithContext(a.text));
    auto tokens = (*model)->tokenizer().Encode(
        std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()));
    if (!tokens.ok()) return FailStatus(cmd, tokens.status().WithContext(a.text));
    if (a.tokens > 0 && tokens->size() > a.tokens) tokens->resize(a.tokens);
    const ModelConfig& c = (*model)->config();
    const uint32_t window =
        a.window ? a.window : std::min<uint32_t>(512, std::max(c.max_seq_len, 2u));
    std::cerr << "calibrating " << c.Summary() << "\n  on " << tokens->size() << " tokens of "
              << a.text << " (windows of " << window << "), basis " << a.basis << "\n";
    profile = CalibrateFromModel(**model, a.model, *tokens, window, opt);
  }
  if (!profile.ok()) return FailStatus(cmd, profile.status());
  if (Status s = profile->Save(a.out); !s.ok()) return FailStatus(cmd, s.WithContext(a.out));
  auto id = profile->Id();
  std::cout << "wrote " << a.out << ": " << profile->layers << " layers x " << profile->kv_heads
            << " kv heads x head_dim " << profile->head_dim << ", basis " << profile->basis_kind
            << ", pre-RoPE keys " << (profile->has_prerope() ? "yes" : "no (rope unknown)")
            << "\n  K metric: " << profile->key_metric << "\n  V metric: " << profile->value_metric
            << "\n  id " << (id.ok() ? *id : "?") << "\n";
  return 0;
}

const CommandRegistrar kRegistrar(
    "calibrate", "Calibrate a fraqtl profile (bases, codebooks) on calibration text",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<CalibrateArgs>();
      sub->footer(
          "Runs the model on windows of the calibration text (never the eval text), captures\n"
          "K, V and queries, and writes per (layer, K|V, kv_head) the mean, the downstream-metric\n"
          "eigenbasis (K: query metric, RoPE-averaged for pre-RoPE keys; V: W_O), variances and\n"
          "Lloyd-Max codebooks. --dumps calibrates from KV dumps instead (V metric: identity).");
      sub->add_option("--model", a->model, "Model (.bin llama2.c or .gguf)");
      sub->add_option("--tokenizer", a->tokenizer, "tokenizer.bin (llama2.c)");
      sub->add_option("--text", a->text, "Calibration text");
      sub->add_option("--dumps", a->dumps, "KV dumps (safetensors) instead of --model/--text");
      sub->add_option("--out", a->out, "Output profile (.kvp)")->required();
      sub->add_option("--tokens", a->tokens, "Calibration tokens (0 = whole text)")
          ->capture_default_str();
      sub->add_option("--window", a->window, "Tokens per prefill window (0 = min(512, context))");
      sub->add_option("--basis", a->basis, "metric | pca | random")
          ->check(CLI::IsMember({"metric", "pca", "random"}))
          ->capture_default_str();
      sub->add_option("--offsets", a->offsets, "pre-RoPE K metric offsets: attention | uniform")
          ->check(CLI::IsMember({"attention", "uniform"}))
          ->capture_default_str();
      sub->add_option("--codebooks", a->book, "calib (fitted Lloyd-Max) | gauss")
          ->check(CLI::IsMember({"calib", "gauss"}))
          ->capture_default_str();
      sub->add_option("--ridge", a->ridge, "Metric regularization (relative)")
          ->capture_default_str();
      sub->add_option("--threads", a->threads, "Model threads (0 = all cores)");
      return [a] { return RunCalibrate(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
#endif  // KVWIRE_HAVE_MODEL
