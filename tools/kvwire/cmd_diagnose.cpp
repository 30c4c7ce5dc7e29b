// kvwire diagnose: the per-model layer diagnostic. Calibrates a fraqtl
// profile on the calibration text, sweeps each (layer, K|V) at a few bit-widths with the golden
// protocol on sweep windows (by default the part of the calibration text that calibration did not
// use; never the eval text that `kvwire eval` later reports on), allocates bits per (layer, K|V) for a ladder of budgets,
// validates each level jointly, measures the baselines on the same windows, and writes the
// profile (budgets + measured rate-distortion table) and a report (markdown + SVG plots).
#ifdef KVWIRE_HAVE_MODEL

#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "diagnostics/diagnose.h"
#include "diagnostics/golden_eval.h"
#include "kvwire/diagnostics.h"
#include "kvwire/kv_file.h"
#include "kvwire/model.h"
#include "kvwire/profile.h"

namespace kvwire::cli {
namespace {

struct DiagnoseArgs {
  std::string model, tokenizer, text, sweep_text, out, report, ladder = "0.5,0.75,1,1.5,2,3,4,6";
  std::string bits = "2,3,4", baselines;
  uint64_t calib_tokens = 16384;
  uint32_t window = 0, prefix = 256, cont = 256, seqs = 16;
  uint64_t seed = 1;
  int threads = 0;
  bool no_uniform = false, bos = false;
};

template <typename T>
Result<std::vector<T>> ParseList(const std::string& s, const char* what) {
  std::vector<T> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    std::istringstream is(item);
    T v{};
    if (!(is >> v) || !is.eof()) {
      return Status(StatusCode::kInvalidArgument,
                    std::string(what) + ": '" + item + "' is not a number");
    }
    out.push_back(v);
  }
  KVWIRE_RETURN_ERROR_IF(out.empty(), kInvalidArgument, std::string(what) + " is empty");
  return out;
}

Result<std::vector<int32_t>> Tokens(const Model& m, const std::string& path, bool bos) {
  KVWIRE_ASSIGN_OR_RETURN(auto bytes, ReadFileBytes(path, 1ull << 31));
  auto ids = m.tokenizer().Encode(
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), bos);
  if (!ids.ok()) return ids.status().WithContext(path);
  return std::move(ids).value();
}

int RunDiagnose(const DiagnoseArgs& a) {
  const char* cmd = "diagnose";
  const double start = NowSeconds();
  diag::DiagnoseOptions dopt;
  {
    auto ladder = ParseList<double>(a.ladder, "--ladder");
    if (!ladder.ok()) return FailStatus(cmd, ladder.status());
    dopt.ladder = *ladder;
    auto bits = ParseList<int>(a.bits, "--sweep-bits");
    if (!bits.ok()) return FailStatus(cmd, bits.status());
    dopt.sweep_bits = *bits;
    if (!a.baselines.empty()) {
      dopt.baselines.clear();
      std::stringstream ss(a.baselines);
      std::string item;
      while (std::getline(ss, item, ',')) {
        if (!item.empty()) dopt.baselines.push_back(item);
      }
    }
    for (const std::string& b : dopt.baselines) {  // fail before an hour of work, not after
      if (auto c = CreateCodec(b); !c.ok()) {
        return FailStatus(cmd, c.status().WithContext("baseline '" + b + "'"));
      }
    }
  }
  dopt.compare_uniform = !a.no_uniform;

  ModelOptions mo;
  mo.tokenizer_path = a.tokenizer;
  mo.threads = a.threads;
  auto loaded = Model::Load(a.model, mo);
  if (!loaded.ok()) return FailStatus(cmd, loaded.status().WithContext(a.model));
  const Model& m = **loaded;
  if (Status s = m.TokenizerStatus(); !s.ok()) return FailStatus(cmd, s);
  dopt.threads = std::max(1, m.threads());
  const ModelConfig& c = m.config();

  // ---- 1. calibrate (calibration text only) ----
  auto calib = Tokens(m, a.text, m.tokenizer().adds_bos());
  if (!calib.ok()) return FailStatus(cmd, calib.status());
  // The sweep and the level validation select per-layer bits from measured KL, so their windows
  // must not be the eval text's (selection on the test set). By default they come from the tail
  // of the calibration text that calibration itself does not see.
  std::vector<int32_t> sweep_ids;
  std::string sweep_source;
  if (a.sweep_text.empty()) {
    const uint64_t need = uint64_t{a.seqs} * (a.prefix + a.cont);
    if (a.calib_tokens == 0 || calib->size() < a.calib_tokens + need) {
      return FailStatus(
          cmd, Status(StatusCode::kInvalidArgument,
                      Format("%s has %zu tokens: not enough for --calib-tokens %llu plus %u "
                             "disjoint sweep windows of %u tokens (%llu); lower --calib-tokens "
                             "or --seqs, or give --sweep-text (never the eval text)",
                             a.text.c_str(), calib->size(),
                             static_cast<unsigned long long>(a.calib_tokens), a.seqs,
                             a.prefix + a.cont, static_cast<unsigned long long>(need))));
    }
    sweep_ids.assign(calib->begin() + static_cast<std::ptrdiff_t>(a.calib_tokens), calib->end());
    sweep_source = Format("%s, tokens %llu.. (not used by calibration)", a.text.c_str(),
                          static_cast<unsigned long long>(a.calib_tokens));
  } else {
    auto ids = Tokens(m, a.sweep_text, false);
    if (!ids.ok()) return FailStatus(cmd, ids.status());
    sweep_ids = std::move(ids).value();
    sweep_source = a.sweep_text;
  }
  if (a.calib_tokens > 0 && calib->size() > a.calib_tokens) calib->resize(a.calib_tokens);
  const uint32_t window =
      a.window ? a.window : std::min<uint32_t>(512, std::max(c.max_seq_len, 2u));
  std::cerr << "kvwire diagnose: " << c.Summary() << "\n  calibrating on " << calib->size()
            << " tokens of " << a.text << " (windows of " << window << ")\n";
  CalibrationOptions copt;
  copt.ladder = dopt.ladder;
  copt.progress = ProgressBar("calibrate");
  double t = NowSeconds();
  auto profile = CalibrateFromModel(m, a.model, *calib, window, copt);
  if (!profile.ok()) return FailStatus(cmd, profile.status());
  const double calibrate_s = NowSeconds() - t;

  // ---- the golden protocol's windows and reference runs, once ----
  diag::GoldenOptions g;
  g.prefix = a.prefix;
  g.cont = a.cont;
  g.seqs = a.seqs;
  g.seed = a.seed;
  g.bos = a.bos;
  t = NowSeconds();
  auto eval = diag::GoldenEval::Create(m, sweep_ids, g, ProgressBar("reference"));
  if (!eval.ok()) return FailStatus(cmd, eval.status().WithContext(sweep_source));
  const double reference_s = NowSeconds() - t;
  if ((*eval)->overlapping()) {
    std::cerr << "note: " << sweep_source << " is too short for " << a.seqs
              << " disjoint windows; windows overlap\n";
  }
  std::cerr << "  sweep: " << c.layers << " layers x K|V x " << dopt.sweep_bits.size()
            << " widths, then " << dopt.ladder.size() << " levels"
            << (dopt.compare_uniform ? " (allocated and uniform)" : "") << ", "
            << dopt.baselines.size() << " baselines; " << a.seqs << " windows of " << a.prefix
            << " + " << a.cont << " tokens each\n";

  // ---- 2-3. sweep, allocate, validate, baselines ----
  dopt.progress = ProgressBar("diagnose");
  auto result = diag::Diagnose(**eval, &*profile, dopt);
  if (!result.ok()) return FailStatus(cmd, result.status());
  if (Status s = profile->Save(a.out); !s.ok()) return FailStatus(cmd, s.WithContext(a.out));
  auto id = profile->Id();

  // ---- 4. report ----
  std::cout << "wrote " << a.out << " (id " << (id.ok() ? *id : "?") << ")\n";
  std::cout << Format("%-28s %10s %12s %11s %8s\n", "level / arm", "bits/elem", "KL", "dPPL",
                      "top-1 %");
  for (const auto& lv : result->levels) {
    for (const diag::ArmRow* r : {&lv.allocated, &lv.uniform}) {
      if (r->label.empty()) continue;
      if (!r->ok()) {
        std::cout << Format("%-28s n/a: %s\n", r->label.c_str(), r->error.c_str());
        continue;
      }
      std::cout << Format("%-28s %10.3f %12.3e %+11.5f %8.2f%s\n", r->label.c_str(), r->bits,
                          r->kl, r->dppl, 100 * r->top1,
                          (r == &lv.allocated) == lv.chose_allocated ? "  <- kept" : "");
    }
  }
  for (const auto& r : result->baselines) {
    if (!r.ok()) {
      std::cout << Format("%-28s n/a: %s\n", r.label.c_str(), r.error.c_str());
      continue;
    }
    std::cout << Format("%-28s %10.3f %12.3e %+11.5f %8.2f\n", r.label.c_str(), r.bits, r.kl,
                        r.dppl, 100 * r.top1);
  }
  std::cout << result->sign_verdict << "\n" << result->delta_verdict << "\n";
  if (!a.report.empty()) {
    diag::ReportContext ctx;
    ctx.command = CommandLine();
    ctx.date = UtcNow();
    ctx.model = a.model;
    ctx.model_summary = c.Summary();
    ctx.fingerprint = m.fingerprint();
    ctx.calib_text = a.text;
    ctx.sweep_text = sweep_source;
    ctx.profile_path = a.out;
    ctx.profile_id = id.ok() ? *id : "?";
    ctx.calib_source = profile->calib_source;
    ctx.machine = Format("%u CPUs, %d threads (%s)", OnlineCpus(), m.threads(),
                         CpuModel().c_str());
    ctx.calibrate_s = calibrate_s;
    ctx.reference_s = reference_s;
    ctx.total_s = NowSeconds() - start;
    if (Status s = diag::WriteDiagnoseReport(a.report, *result, *profile, **eval, ctx); !s.ok()) {
      return FailStatus(cmd, s.WithContext(a.report));
    }
    std::cout << "wrote " << a.report << "/report.md, sensitivity.svg, rate_distortion.svg\n";
  }
  return 0;
}

const CommandRegistrar kRegistrar(
    "diagnose",
    "Per-model layer diagnostic: calibrate, sweep, allocate bits per layer, validate, report",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<DiagnoseArgs>();
      sub->footer(
          "1. calibrates a fraqtl profile on the first --calib-tokens tokens of --text;\n"
          "2. sweep: codes one (layer, K|V) at a time with fraqtl at --sweep-bits, every other\n"
          "   tensor uncompressed, and measures KL/dPPL/top-1 with the golden protocol on\n"
          "   --seqs windows of the REST of --text (or of --sweep-text); the eval text that\n"
          "   `kvwire eval` reports on is never used here (prefix run once per window);\n"
          "3. allocates bits per (layer, K|V) for every --ladder budget (greedy marginal KL per\n"
          "   bit, mean = budget), validates each allocation jointly (and uniform budgets), and\n"
          "   writes the levels with their measured KL/dPPL/top-1 into --out;\n"
          "4. measures the baselines on the same windows and writes --report DIR: report.md,\n"
          "   sensitivity.svg (layer x bits heat map), rate_distortion.svg.\n"
          "Example: kvwire diagnose --model models/kjv-gqa-6l/model.bin --text\n"
          "  models/data/kjv_calib.txt --out p.kvp --report diag/ --seqs 16\n"
          "then: kvwire eval --model ... --text models/data/kjv_eval.txt --profile p.kvp\n"
          "  --codecs fp16,fraqtl@1,fraqtl@2");
      sub->add_option("--model", a->model, "Model (.bin llama2.c or .gguf)")->required();
      sub->add_option("--tokenizer", a->tokenizer, "tokenizer.bin (llama2.c)");
      sub->add_option("--text", a->text, "Calibration text")->required();
      sub->add_option("--sweep-text", a->sweep_text,
                      "Text of the sweep/validation windows (default: --text beyond "
                      "--calib-tokens); never the eval text");
      sub->add_option("--out", a->out, "Output profile (.kvp)")->required();
      sub->add_option("--report", a->report, "Report directory (report.md + SVG plots)");
      sub->add_option("--ladder", a->ladder, "Level budgets, bits/element")->capture_default_str();
      sub->add_option("--sweep-bits", a->bits, "Bit-widths of the sweep")->capture_default_str();
      sub->add_option("--baselines", a->baselines,
                      "Baseline codecs (default q4_0,kivi2,kivi4,int3-token,int4-token,rank-8,"
                      "rank-16,rank-32,turbo2,turbo3,turbo4)");
      sub->add_option("--calib-tokens", a->calib_tokens, "Calibration tokens (0 = whole text)")
          ->capture_default_str();
      sub->add_option("--window", a->window, "Calibration window (0 = min(512, context))");
      sub->add_option("--prefix", a->prefix, "Prefix tokens P (coded)")
          ->capture_default_str()
          ->check(CLI::Range(1u, 1u << 20));
      sub->add_option("--cont", a->cont, "Continuation tokens C (evaluated)")
          ->capture_default_str()
          ->check(CLI::Range(1u, 1u << 20));
      sub->add_option("--seqs", a->seqs, "Windows of the golden protocol")
          ->capture_default_str()
          ->check(CLI::Range(1u, 1u << 20));
      sub->add_option("--seed", a->seed, "Window sampling seed")->capture_default_str();
      sub->add_option("--threads", a->threads, "Threads (0 = all cores)")
          ->capture_default_str()
          ->check(CLI::Range(0, 1024));
      sub->add_flag("--no-uniform", a->no_uniform,
                    "Do not also validate uniform budgets at every level");
      sub->add_flag("--bos", a->bos, "Start every eval window with the BOS token");
      return [a] { return RunDiagnose(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
#endif  // KVWIRE_HAVE_MODEL
