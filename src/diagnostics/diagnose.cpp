// `kvwire diagnose` steps 2-4 (diagnose.h).
#include "diagnostics/diagnose.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "diagnostics/report_svg.h"
#include "kvwire/kv_file.h"

namespace kvwire::diag {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string G(double v) {
  char b[32];
  std::snprintf(b, sizeof(b), "%g", v);
  return b;
}

std::string F(const char* fmt, double v) {
  char b[64];
  std::snprintf(b, sizeof(b), fmt, v);
  return b;
}

// Measures one stream arm; a codec that cannot run is recorded, not fatal.
ArmRow MeasureStream(const GoldenEval& eval, const std::string& label, const std::string& spec,
                     const Profile* profile, int threads, double ref_ppl) {
  ArmRow row;
  row.label = label;
  row.spec = spec;
  auto coder = StreamCoder(spec, profile, threads);
  if (!coder.ok()) {
    row.error = coder.status().ToString();
    return row;
  }
  auto a = eval.Evaluate(*coder);
  if (!a.ok()) {
    row.error = a.status().ToString();
    return row;
  }
  row.bits = a->bits();
  row.kl = a->stats.mean_kl();
  row.dppl = a->stats.ppl() - ref_ppl;
  row.dppl_pct = ref_ppl > 0 ? 100.0 * row.dppl / ref_ppl : 0;
  row.top1 = a->stats.top1();
  return row;
}

struct StepVerdict {
  std::string text;
  bool pays = false;
  ArmRow with;
};

// Verdict on an optional fraqtl step (`option`, e.g. ":sign=1") at 2 bits/element against
// `without` (plain fraqtl@2, measured once): it pays when its KL is lower by more than
// kStepKlMargin and its bits are not more than 2 % higher. The margin is there because KL over a
// few thousand positions moves by ~1.2x between window sets: a smaller gain is not evidence.
StepVerdict OptionalStepVerdict(const GoldenEval& eval, const Profile& profile,
                                const std::string& what, const std::string& option,
                                const ArmRow& without, int threads, double ref_ppl) {
  StepVerdict v;
  const std::string spec = "fraqtl@2" + option;
  auto probe = CreateCodec(spec, &profile);
  if (!probe.ok()) {
    v.text = what + ": not implemented in this build (" + probe.status().ToString() +
             "); not measured, off.";
    return v;
  }
  v.with = MeasureStream(eval, spec, spec, &profile, threads, ref_ppl);
  if (!v.with.ok() || !without.ok()) {
    v.text =
        what + ": measurement failed (" + (v.with.ok() ? without.error : v.with.error) + "), off.";
    return v;
  }
  constexpr double kStepKlMargin = 1.2;
  v.pays = v.with.kl * kStepKlMargin < without.kl && v.with.bits <= without.bits * 1.02;
  v.text = what + ": at 2 b/e KL " + F("%.3e", v.with.kl) + " at " + F("%.3f", v.with.bits) +
           " b/e with it, " + F("%.3e", without.kl) + " at " + F("%.3f", without.bits) +
           " b/e without: " + (v.pays ? "pays, on" : "does not pay (needs 1.2x lower KL), off") + ".";
  return v;
}

}  // namespace

Result<DiagnoseResult> Diagnose(const GoldenEval& eval, Profile* profile,
                                const DiagnoseOptions& o) {
  KVWIRE_RETURN_ERROR_IF(profile == nullptr, kInvalidArgument, "diagnose: no profile");
  KVWIRE_RETURN_ERROR_IF(o.ladder.empty(), kInvalidArgument, "diagnose: empty ladder");
  for (double b : o.ladder) {
    KVWIRE_RETURN_ERROR_IF(!(b > 0 && b <= 16), kInvalidArgument,
                           "diagnose: ladder budget " + G(b) + " outside (0, 16]");
  }
  // Every arm below measures plain fraqtl; the optional steps are decided (again) at the end.
  profile->fraqtl_defaults.clear();
  DiagnoseResult r;
  r.ref_ppl = eval.reference().ppl();
  r.positions = eval.reference().positions;
  const size_t tensors = size_t{profile->layers} * 2;
  const size_t sweep_arms = tensors * o.sweep_bits.size();
  const size_t level_arms = o.ladder.size() * (o.compare_uniform ? 2 : 1);
  const size_t total = sweep_arms + level_arms + o.baselines.size() + 2;
  size_t done = 0;
  auto tick = [&](const std::string& stage) {
    ++done;
    if (o.progress) o.progress(std::min(1.0, double(done) / double(total)), stage);
  };

  // ---- 2. sweep ----
  double t = Now();
  SweepOptions so;
  so.bits = o.sweep_bits;
  so.progress = [&](double f, const std::string& stage) {
    if (o.progress) o.progress(f * double(sweep_arms) / double(total), stage);
  };
  KVWIRE_ASSIGN_OR_RETURN(r.sweep, RunSweep(eval, *profile, so));
  done = sweep_arms;
  r.sweep_s = Now() - t;

  // ---- 3. allocate and validate every level ----
  t = Now();
  const std::vector<double> table = r.sweep.KlTable();
  for (double budget : o.ladder) {
    LevelOutcome lv;
    lv.name = G(budget);
    lv.budget = budget;
    KVWIRE_ASSIGN_OR_RETURN(lv.allocation,
                            AllocateBudgets(table, r.sweep.bits, tensors, budget, o.allocation));
    for (size_t i = 0; i < tensors; ++i) {
      lv.predicted_kl += ModelKl(std::span<const double>(table).subspan(i * r.sweep.bits.size(),
                                                                         r.sweep.bits.size()),
                                 r.sweep.bits, lv.allocation[i], o.allocation.min_log_decay);
    }
    ProfileLevel* pl = nullptr;
    for (ProfileLevel& x : profile->levels) {
      if (x.name == lv.name) pl = &x;
    }
    if (pl == nullptr) {
      KVWIRE_RETURN_ERROR_IF(profile->levels.size() >= 64, kInvalidArgument,
                             "diagnose: the profile already holds 64 levels");
      profile->levels.push_back({});
      pl = &profile->levels.back();
      pl->name = lv.name;
    }
    pl->bits = budget;
    pl->budgets = lv.allocation;
    const std::string spec = "fraqtl@" + lv.name + ":level=" + lv.name;
    lv.allocated = MeasureStream(eval, "fraqtl@" + lv.name + " (allocated)", spec, profile,
                                 o.threads, r.ref_ppl);
    lv.allocated.target = budget;
    tick("validate " + spec);
    if (o.compare_uniform) {
      lv.uniform = MeasureStream(eval, "fraqtl@" + lv.name + " (uniform)", "fraqtl@" + lv.name,
                                 profile, o.threads, r.ref_ppl);
      lv.uniform.target = budget;
      tick("validate fraqtl@" + lv.name + " uniform");
    }
    KVWIRE_RETURN_ERROR_IF(!lv.allocated.ok(), kInternal,
                           "diagnose: level " + lv.name + ": " + lv.allocated.error);
    lv.chose_allocated = !(o.compare_uniform && lv.uniform.ok() && lv.uniform.kl < lv.allocated.kl);
    const ArmRow& chosen = lv.chose_allocated ? lv.allocated : lv.uniform;
    if (!lv.chose_allocated) pl->budgets.assign(tensors, budget);
    pl->kl = chosen.kl;
    pl->dppl = chosen.dppl;
    pl->top1 = chosen.top1;
    pl->measured_bits = chosen.bits;
    r.levels.push_back(std::move(lv));
  }
  r.validate_s = Now() - t;

  // ---- baselines, same windows ----
  t = Now();
  for (const std::string& spec : o.baselines) {
    ArmRow row = MeasureStream(eval, spec, spec, nullptr, o.threads, r.ref_ppl);
    if (auto c = CreateCodec(spec); c.ok()) row.spec = (*c)->Spec();
    r.baselines.push_back(std::move(row));
    tick("baseline " + spec);
  }
  r.baselines_s = Now() - t;

  // ---- optional steps: decided from measurement where they exist ----
  // The verdicts stick: the profile's fraqtl_defaults turn on what paid, so `fraqtl@B` with
  // this profile uses it (a spec's own sign=/delta= still wins).
  const ArmRow plain = MeasureStream(eval, "fraqtl@2", "fraqtl@2", profile, o.threads, r.ref_ppl);
  const StepVerdict sign = OptionalStepVerdict(eval, *profile, "sign correction (step 6)",
                                               ":sign=1", plain, o.threads, r.ref_ppl);
  tick("sign correction");
  const StepVerdict delta = OptionalStepVerdict(eval, *profile, "delta encoding (step 7)",
                                                ":delta=16", plain, o.threads, r.ref_ppl);
  tick("delta encoding");
  r.sign_verdict = sign.text;
  r.delta_verdict = delta.text;
  bool use_sign = sign.pays, use_delta = delta.pays;
  if (use_sign && use_delta) {
    // Each paid alone; together only if the pair beats the better single step, within 2 % bits.
    const ArmRow both = MeasureStream(eval, "fraqtl@2:sign=1,delta=16", "fraqtl@2:sign=1,delta=16",
                                      profile, o.threads, r.ref_ppl);
    const bool sign_better = sign.with.kl < delta.with.kl;
    const ArmRow& best = sign_better ? sign.with : delta.with;
    const bool pair = both.ok() && both.kl < best.kl && both.bits <= plain.bits * 1.02;
    if (!pair) (sign_better ? use_delta : use_sign) = false;
    r.delta_verdict +=
        std::string(" Both together: ") +
        (both.ok() ? "KL " + F("%.3e", both.kl) + " at " + F("%.3f", both.bits) + " b/e"
                   : "failed (" + both.error + ")") +
        (pair ? ", kept both." : ", kept the better one alone.");
  }
  if (use_sign || use_delta) {
    profile->fraqtl_defaults =
        std::string("sign=") + (use_sign ? "1" : "0") + ",delta=" + (use_delta ? "16" : "0");
  }
  r.delta_verdict += " Profile fraqtl defaults: " +
                     (profile->fraqtl_defaults.empty() ? std::string("none (plain fraqtl)")
                                                       : profile->fraqtl_defaults) +
                     ".";

  // ---- the profile's notes: the measured rate-distortion table in words ----
  std::string notes = profile->notes;
  if (!notes.empty()) notes += "\n";
  notes += "diagnose: golden protocol " + std::to_string(eval.options().seqs) + " x (" +
           std::to_string(eval.options().prefix) + " + " + std::to_string(eval.options().cont) +
           ") tokens, seed " + std::to_string(eval.options().seed) + "; per level: measured " +
           "bits/element all-in, KL, dPPL, top-1, budgets used.\n";
  for (const LevelOutcome& lv : r.levels) {
    const ArmRow& c = lv.chose_allocated ? lv.allocated : lv.uniform;
    notes += "  level " + lv.name + ": bits " + F("%.4f", c.bits) + ", KL " + F("%.4e", c.kl) +
             ", dPPL " + F("%+.5f", c.dppl) + ", top-1 " + F("%.4f", c.top1) + ", " +
             (lv.chose_allocated ? "allocated" : "uniform (measured better than allocated)") +
             "\n";
  }
  notes += "  " + r.sign_verdict + "\n  " + r.delta_verdict;
  profile->notes = std::move(notes);
  KVWIRE_RETURN_IF_ERROR(profile->Validate().WithContext("diagnose"));
  return r;
}

Status WriteDiagnoseReport(const std::string& dir, const DiagnoseResult& r, const Profile& p,
                           const GoldenEval& eval, const ReportContext& ctx) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  KVWIRE_RETURN_ERROR_IF(ec, kIoError, "cannot create " + dir + ": " + ec.message());
  const SweepResult& s = r.sweep;
  const size_t nb = s.bits.size();

  // ---- heat map: rows (layer, K|V), columns swept bits, colour log10 KL ----
  HeatMap hm;
  hm.title = "Sensitivity: KL when only one tensor is coded (fraqtl)";
  hm.value_label = "log10 mean KL (nats)";
  for (int b : s.bits) hm.col_labels.push_back(std::to_string(b) + " bits");
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      hm.row_labels.push_back("layer " + std::to_string(l) + (k ? " V" : " K"));
      for (size_t bi = 0; bi < nb; ++bi) hm.values.push_back(s.at(l, k, bi).kl);
    }
  }
  // ---- rate-distortion plot ----
  XyPlot rd;
  rd.title = "Rate-distortion: mean KL vs bits/element (all-in)";
  rd.x_label = "bits/element (all-in, measured from stream bytes)";
  rd.y_label = "mean KL(reference || coded), nats (log scale)";
  PlotSeries alloc{"fraqtl (profile levels)", {}, true};
  PlotSeries uni{"fraqtl uniform", {}, true};
  for (const LevelOutcome& lv : r.levels) {
    const ArmRow& c = lv.chose_allocated ? lv.allocated : lv.uniform;
    if (c.ok()) alloc.points.push_back({c.bits, c.kl});
    if (lv.uniform.ok()) uni.points.push_back({lv.uniform.bits, lv.uniform.kl});
  }
  rd.series.push_back(alloc);
  if (!uni.points.empty()) rd.series.push_back(uni);
  // Baselines grouped by family (kivi, int-token, rank, turbo, ...) so a family is one line.
  std::map<std::string, PlotSeries> families;
  std::vector<std::string> order;
  for (const ArmRow& b : r.baselines) {
    if (!b.ok()) continue;
    std::string fam = b.label;
    if (fam.starts_with("rank-")) fam = "rank-r";
    else if (fam.starts_with("turbo")) fam = "turbo";
    else if (fam.starts_with("kivi")) fam = "kivi";
    else if (fam.starts_with("int") && fam.ends_with("-token")) fam = "int-token";
    else if (fam.starts_with("int") && fam.ends_with("-channel")) fam = "int-channel";
    if (!families.count(fam)) {
      order.push_back(fam);
      families[fam] = PlotSeries{fam, {}, true};
    }
    families[fam].points.push_back({b.bits, b.kl});
  }
  for (const std::string& f : order) {
    PlotSeries ps = families[f];
    ps.line = ps.points.size() > 1;
    rd.series.push_back(std::move(ps));
  }

  const std::string heat_svg = HeatMapSvg(hm), rd_svg = XyPlotSvg(rd);
  auto write = [&](const std::string& name, const std::string& body) {
    return WriteFileBytes(dir + "/" + name,
                          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()),
                                                   body.size()));
  };
  KVWIRE_RETURN_IF_ERROR(write("sensitivity.svg", heat_svg));
  KVWIRE_RETURN_IF_ERROR(write("rate_distortion.svg", rd_svg));

  // ---- report.md ----
  const GoldenOptions& g = eval.options();
  std::string md;
  md += "# kvwire diagnose: " + ctx.model + "\n\n";
  md += "- model: `" + ctx.model + "` [" + ctx.model_summary + "], fingerprint `" +
        ctx.fingerprint + "`\n";
  md += "- calibration text: `" + ctx.calib_text + "` (" + ctx.calib_source + ")\n";
  md += "- sweep/validation windows: `" + ctx.sweep_text + "` (not the eval text); golden protocol, " +
        std::to_string(g.seqs) + " windows x (" + std::to_string(g.prefix) + " prefix + " +
        std::to_string(g.cont) + " continuation) tokens, seed " + std::to_string(g.seed) + ", " +
        (eval.overlapping() ? "overlapping" : "non-overlapping") + " windows, " +
        std::to_string(r.positions) + " next-token distributions per arm\n";
  md += "- reference: uncompressed float32 KV, PPL " + F("%.4f", r.ref_ppl) + "\n";
  md += "- profile: `" + ctx.profile_path + "` id `" + ctx.profile_id + "`, basis " +
        p.basis_kind + ", pre-RoPE keys " + (p.has_prerope() ? "yes" : "no") + "\n";
  md += "- command: `" + ctx.command + "`\n";
  md += "- date " + ctx.date + "; " + ctx.machine + "; time: calibrate " +
        F("%.0f", ctx.calibrate_s) + " s, reference runs " + F("%.0f", ctx.reference_s) +
        " s, sweep " + F("%.0f", r.sweep_s) + " s, level validation " +
        F("%.0f", r.validate_s) + " s, baselines " + F("%.0f", r.baselines_s) + " s, total " +
        F("%.0f", ctx.total_s) + " s\n\n";
  md += "KL = mean KL(reference || coded) in nats over the continuation's next-token "
        "distributions (primary measure: lossy KV can lower PPL); dPPL = PPL(coded) - "
        "PPL(reference); top-1 = argmax agreement with the reference. Bits/element of stream "
        "arms are all-in (stream bytes x 8 / elements).\n\n";

  md += "## 1. Sensitivity sweep\n\nOnly one (layer, K|V) tensor is coded with fraqtl at a "
        "uniform budget; every other tensor stays float32. Bits = that tensor's chunk payload + "
        "chunk header per element.\n\n![sensitivity](sensitivity.svg)\n\n| tensor |";
  for (int b : s.bits) md += " KL @" + std::to_string(b) + " |";
  for (int b : s.bits) md += " dPPL @" + std::to_string(b) + " |";
  for (int b : s.bits) md += " bits @" + std::to_string(b) + " |";
  md += "\n|---|";
  for (size_t i = 0; i < 3 * nb; ++i) md += "---:|";
  md += "\n";
  for (uint32_t l = 0; l < s.layers; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      md += "| L" + std::to_string(l) + (k ? " V" : " K") + " |";
      for (size_t bi = 0; bi < nb; ++bi) md += " " + F("%.3e", s.at(l, k, bi).kl) + " |";
      for (size_t bi = 0; bi < nb; ++bi) md += " " + F("%+.5f", s.at(l, k, bi).dppl) + " |";
      for (size_t bi = 0; bi < nb; ++bi) md += " " + F("%.3f", s.at(l, k, bi).bits) + " |";
      md += "\n";
    }
  }

  md += "\n## 2. Bits per (layer, K|V) at each level\n\nGreedy marginal allocation from the "
        "sweep (log-KL interpolated between swept widths, extrapolated with the end slopes; "
        "joint KL modelled as the sum of single-tensor KLs); the mean over tensors equals the "
        "budget. Each allocation was validated jointly (all tensors coded) against uniform "
        "budgets; a level keeps whichever measured the lower KL.\n\n| level |";
  for (uint32_t l = 0; l < s.layers; ++l) {
    md += " L" + std::to_string(l) + " K | L" + std::to_string(l) + " V |";
  }
  md += " mean | kept |\n|---|";
  for (size_t i = 0; i < size_t{s.layers} * 2 + 2; ++i) md += "---:|";
  md += "\n";
  for (const LevelOutcome& lv : r.levels) {
    md += "| " + lv.name + " |";
    double mean = 0;
    for (double b : lv.allocation) {
      md += " " + F("%.2f", b) + " |";
      mean += b;
    }
    mean /= double(std::max<size_t>(lv.allocation.size(), 1));
    md += " " + F("%.3f", mean) + " | " + (lv.chose_allocated ? "allocated" : "uniform") +
          " |\n";
  }

  md += "\n## 3. Rate-distortion, measured in this run (same windows for every arm)\n\n"
        "![rate-distortion](rate_distortion.svg)\n\n"
        "| arm | bits/elem | KL | predicted KL (sum of sweep) | dPPL | dPPL % | top-1 % |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n";
  auto row = [&](const ArmRow& a, const std::string& predicted) {
    if (!a.ok()) {
      md += "| " + a.label + " | n/a: " + a.error + " | | | | | |\n";
      return;
    }
    md += "| " + a.label + " | " + F("%.3f", a.bits) + " | " + F("%.3e", a.kl) + " | " +
          predicted + " | " + F("%+.5f", a.dppl) + " | " + F("%+.3f", a.dppl_pct) + " | " +
          F("%.2f", 100.0 * a.top1) + " |\n";
  };
  for (const LevelOutcome& lv : r.levels) {
    row(lv.allocated, F("%.3e", lv.predicted_kl));
    if (!lv.uniform.label.empty()) row(lv.uniform, "");
  }
  std::vector<ArmRow> bl = r.baselines;
  std::stable_sort(bl.begin(), bl.end(),
                   [](const ArmRow& a, const ArmRow& b) { return a.bits < b.bits; });
  for (const ArmRow& b : bl) row(b, "");

  // Where fraqtl stands against every baseline at the same or higher bits.
  md += "\n## 4. Verdicts\n\n";
  for (const LevelOutcome& lv : r.levels) {
    const ArmRow& c = lv.chose_allocated ? lv.allocated : lv.uniform;
    if (!c.ok()) continue;
    std::string beaten, not_beaten;
    for (const ArmRow& b : bl) {
      if (!b.ok() || b.bits < c.bits) continue;
      std::string& list = c.kl < b.kl ? beaten : not_beaten;
      list += (list.empty() ? "" : ", ") + b.label;
    }
    md += "- level " + lv.name + " (" + F("%.3f", c.bits) + " b/e, KL " + F("%.3e", c.kl) +
          ", " + (lv.chose_allocated ? "allocated" : "uniform") + "): lower KL than " +
          (beaten.empty() ? "none" : beaten) + " (baselines at >= its bits)" +
          (not_beaten.empty() ? "" : "; NOT lower than " + not_beaten) + "\n";
  }
  md += "- " + r.sign_verdict + "\n- " + r.delta_verdict + "\n";
  md += "\nCaveats: the allocation assumes single-tensor damages add; the 'predicted KL' column "
        "shows how well that held. One seed, " +
        std::to_string(g.seqs) + " windows: KL differences below ~1.2x are within noise.\n";
  return write("report.md", md);
}

}  // namespace kvwire::diag
