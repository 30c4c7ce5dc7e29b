// kvwire diagnose pieces: bit allocation keeps the budget, SVG plots are well-formed XML, and the
// sweep + level validation + report run end to end on a tiny random model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "diagnostics/diagnose.h"
#include "diagnostics/golden_eval.h"
#include "diagnostics/report_svg.h"
#include "diagnostics/sweep.h"
#include "kvwire/diagnostics.h"
#include "kvwire/kv_file.h"
#include "kvwire/model.h"
#include "model/test_models.h"

namespace kvwire {
namespace {

// Minimal XML well-formedness check: tags balance and nest, attributes are quoted, entities are
// the five predefined ones, no stray '<' or '&' in text.
bool WellFormedXml(const std::string& s, std::string* why) {
  std::vector<std::string> stack;
  size_t i = 0;
  bool root_seen = false;
  while (i < s.size()) {
    if (s[i] == '<') {
      if (s.compare(i, 5, "<?xml") == 0) {
        const size_t e = s.find("?>", i);
        if (e == std::string::npos) return *why = "unterminated declaration", false;
        i = e + 2;
        continue;
      }
      const size_t e = s.find('>', i);
      if (e == std::string::npos) return *why = "unterminated tag", false;
      std::string tag = s.substr(i + 1, e - i - 1);
      i = e + 1;
      // Quotes in the tag must pair up; no '<' inside.
      if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) return *why = "odd quotes: " + tag, false;
      if (tag.find('<') != std::string::npos) return *why = "'<' inside tag", false;
      if (!tag.empty() && tag[0] == '/') {
        const std::string name = tag.substr(1);
        if (stack.empty() || stack.back() != name) {
          return *why = "closing </" + name + "> does not match", false;
        }
        stack.pop_back();
        continue;
      }
      const bool self = !tag.empty() && tag.back() == '/';
      const std::string name = tag.substr(0, tag.find_first_of(" \t\n/"));
      if (name.empty()) return *why = "empty tag name", false;
      if (stack.empty()) {
        if (root_seen) return *why = "second root element", false;
        root_seen = true;
      }
      if (!self) stack.push_back(name);
      continue;
    }
    if (s[i] == '&') {
      bool ok = false;
      for (const char* ent : {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"}) {
        if (s.compare(i, std::strlen(ent), ent) == 0) ok = true;
      }
      if (!ok) return *why = "bad entity", false;
    }
    ++i;
  }
  if (!stack.empty()) return *why = "unclosed <" + stack.back() + ">", false;
  if (!root_seen) return *why = "no root element", false;
  return true;
}

TEST(Diagnose, AllocationKeepsTheAverageBudget) {
  // 12 tensors with sensitivities spread over 4 decades, KL ~ c * 4^-b.
  const std::vector<int> bits = {2, 3, 4};
  const size_t tensors = 12;
  std::vector<double> kl;
  for (size_t t = 0; t < tensors; ++t) {
    const double c = std::pow(10.0, -2.0 - 4.0 * double(t) / double(tensors - 1));
    for (int b : bits) kl.push_back(c * std::pow(4.0, -b));
  }
  for (double budget : {0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}) {
    auto a = diag::AllocateBudgets(kl, bits, tensors, budget);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    ASSERT_EQ(a->size(), tensors);
    const double mean = std::accumulate(a->begin(), a->end(), 0.0) / double(tensors);
    EXPECT_NEAR(mean, budget, 1e-9) << budget;
    for (double b : *a) {
      EXPECT_GE(b, 0.0);
      EXPECT_LE(b, 16.0);
    }
    // The most sensitive tensor gets at least as many bits as the least sensitive one.
    EXPECT_GE(a->front(), a->back()) << budget;
    // Greedy allocation never does worse (in the model) than uniform budgets.
    double alloc_kl = 0, uniform_kl = 0;
    for (size_t t = 0; t < tensors; ++t) {
      const auto row = std::span<const double>(kl).subspan(t * bits.size(), bits.size());
      alloc_kl += diag::ModelKl(row, bits, (*a)[t]);
      uniform_kl += diag::ModelKl(row, bits, budget);
    }
    EXPECT_LE(alloc_kl, uniform_kl * (1 + 1e-12)) << budget;
  }
  // Equal sensitivities: equal shares (up to one unit).
  std::vector<double> flat(tensors * bits.size());
  for (size_t t = 0; t < tensors; ++t)
    for (size_t i = 0; i < bits.size(); ++i) flat[t * bits.size() + i] = std::pow(4.0, -bits[i]);
  auto a = diag::AllocateBudgets(flat, bits, tensors, 2.0);
  ASSERT_TRUE(a.ok());
  for (double b : *a) EXPECT_NEAR(b, 2.0, 2.0 * 0.75 / 32 + 1e-9);
  // Bad input is an error, not a crash.
  EXPECT_FALSE(diag::AllocateBudgets(kl, bits, tensors + 1, 2.0).ok());
  EXPECT_FALSE(diag::AllocateBudgets(kl, bits, tensors, 0.0).ok());
  std::vector<double> nan = kl;
  nan[3] = std::nan("");
  EXPECT_FALSE(diag::AllocateBudgets(nan, bits, tensors, 2.0).ok());
}

TEST(Diagnose, ModelKlDecreasesWithBits) {
  const std::vector<int> bits = {2, 3, 4};
  // Non-monotone measurement (noise): the model still decreases.
  const std::vector<double> kl = {1e-3, 2e-3, 1e-4};
  double prev = 1e300;
  for (double b = 0; b <= 10; b += 0.125) {
    const double v = diag::ModelKl(kl, bits, b);
    EXPECT_TRUE(std::isfinite(v));
    EXPECT_LT(v, prev) << b;
    prev = v;
  }
  EXPECT_NEAR(diag::ModelKl(kl, bits, 2.0), 1e-3, 1e-12);
}

TEST(Diagnose, SvgPlotsAreWellFormed) {
  diag::HeatMap hm;
  hm.title = "Sensitivity <K & V>";
  hm.row_labels = {"layer 0 K", "layer 0 V", "layer 1 K", "layer 1 V"};
  hm.col_labels = {"2 bits", "3 bits", "4 bits"};
  hm.value_label = "log10 KL";
  hm.values = {1e-3, 2e-4, 3e-5, 1e-2, 1e-3, 1e-4, 0.0, std::nan(""), 1e-6, 5e-5, 6e-6, 7e-7};
  const std::string h = diag::HeatMapSvg(hm);
  std::string why;
  EXPECT_TRUE(WellFormedXml(h, &why)) << why;
  EXPECT_NE(h.find("<svg"), std::string::npos);
  EXPECT_NE(h.find("Sensitivity &lt;K &amp; V&gt;"), std::string::npos);
  EXPECT_EQ(h.find("nan"), std::string::npos);

  diag::XyPlot p;
  p.title = "RD \"curve\"";
  p.x_label = "bits/element";
  p.y_label = "KL";
  p.series.push_back({"fraqtl", {{0.5, 1e-4}, {1, 2e-5}, {2, 2e-6}, {3, 5e-7}}, true});
  p.series.push_back({"q4_0", {{4.5, 5e-5}}, false});
  p.series.push_back({"broken", {{1, 0.0}, {2, -1.0}, {std::nan(""), 1e-3}}, true});
  const std::string x = diag::XyPlotSvg(p);
  EXPECT_TRUE(WellFormedXml(x, &why)) << why;
  EXPECT_NE(x.find("polyline"), std::string::npos);
  EXPECT_NE(x.find("RD &quot;curve&quot;"), std::string::npos);
  EXPECT_EQ(x.find("nan"), std::string::npos);
  EXPECT_EQ(x.find("inf"), std::string::npos);
  // Empty plots are still valid documents.
  EXPECT_TRUE(WellFormedXml(diag::XyPlotSvg({}), &why)) << why;
  EXPECT_TRUE(WellFormedXml(diag::HeatMapSvg({}), &why)) << why;
}

TEST(Diagnose, SweepAndLevelsRunOnATinyModel) {
  testing::TinyConfig tc;
  tc.seq_len = 128;
  const testing::TinyModel tm = testing::MakeTinyModel(tc, 7);
  const std::string dir = testing::ScratchDir("diagnose");
  const std::string path = dir + "/tiny.bin";
  const std::vector<uint8_t> bytes = testing::WriteLlama2c(tm);
  ASSERT_TRUE(WriteFileBytes(path, bytes).ok());
  ModelOptions mo;
  mo.threads = 1;
  auto model = Model::Load(path, mo);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const Model& m = **model;

  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(tc.vocab) - 1);
  std::vector<int32_t> calib(256), eval(400);
  for (auto& t : calib) t = tok(rng);
  for (auto& t : eval) t = tok(rng);

  CalibrationOptions copt;
  copt.ladder = {1.0, 2.0};
  auto profile = CalibrateFromModel(m, path, calib, 64, copt);
  ASSERT_TRUE(profile.ok()) << profile.status().ToString();

  diag::GoldenOptions g;
  g.prefix = 48;
  g.cont = 16;
  g.seqs = 2;
  auto ge = diag::GoldenEval::Create(m, eval, g);
  ASSERT_TRUE(ge.ok()) << ge.status().ToString();
  EXPECT_EQ((*ge)->reference().positions, 32u);

  // An arm that leaves the cache alone measures zero KL and full agreement.
  auto same = (*ge)->Evaluate([](KvCache*, uint64_t*, uint64_t*) { return Status::Ok(); });
  ASSERT_TRUE(same.ok());
  EXPECT_NEAR(same->stats.mean_kl(), 0.0, 1e-9);
  EXPECT_DOUBLE_EQ(same->stats.top1(), 1.0);

  diag::SweepOptions so;
  so.bits = {2, 4};
  int calls = 0;
  so.progress = [&](double f, const std::string&) {
    ++calls;
    EXPECT_GT(f, 0.0);
    EXPECT_LE(f, 1.0);
  };
  auto sweep = diag::RunSweep(**ge, *profile, so);
  ASSERT_TRUE(sweep.ok()) << sweep.status().ToString();
  ASSERT_EQ(sweep->cells.size(), size_t{tc.layers} * 2 * 2);
  EXPECT_EQ(calls, int(sweep->cells.size()));
  for (const diag::SweepCell& c : sweep->cells) {
    EXPECT_TRUE(std::isfinite(c.kl));
    EXPECT_GE(c.kl, 0.0);
    EXPECT_GT(c.bits, 0.0);
    EXPECT_GE(c.top1, 0.0);
    EXPECT_LE(c.top1, 1.0);
  }

  diag::DiagnoseOptions dopt;
  dopt.sweep_bits = {2, 4};
  dopt.ladder = {1.0, 2.0};
  dopt.baselines = {"int4-token", "turbo3", "q4_0"};  // q4_0 cannot code head_dim 8: recorded
  auto result = diag::Diagnose(**ge, &*profile, dopt);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_EQ(result->levels.size(), 2u);
  for (const diag::LevelOutcome& lv : result->levels) {
    const ProfileLevel* pl = profile->FindLevel(lv.name);
    ASSERT_NE(pl, nullptr) << lv.name;
    const double mean =
        std::accumulate(pl->budgets.begin(), pl->budgets.end(), 0.0) / double(pl->budgets.size());
    EXPECT_NEAR(mean, lv.budget, 1e-9);
    EXPECT_GE(pl->kl, 0.0);
    EXPECT_GT(pl->measured_bits, 0.0);
    EXPECT_TRUE(lv.allocated.ok()) << lv.allocated.error;
    EXPECT_GT(lv.allocated.bits, 0.0);
  }
  ASSERT_EQ(result->baselines.size(), 3u);
  EXPECT_TRUE(result->baselines[0].ok()) << result->baselines[0].error;
  // Steps 6 and 7 are measured against plain fraqtl@2, and what paid is recorded in the profile.
  EXPECT_NE(result->sign_verdict.find("b/e without"), std::string::npos) << result->sign_verdict;
  EXPECT_NE(result->delta_verdict.find("b/e without"), std::string::npos) << result->delta_verdict;
  const bool sign_pays = result->sign_verdict.find("pays, on") != std::string::npos;
  const bool delta_pays = result->delta_verdict.find("pays, on") != std::string::npos;
  if (!sign_pays && !delta_pays) {
    EXPECT_EQ(profile->fraqtl_defaults, "");
  }
  if (!sign_pays) {
    EXPECT_EQ(profile->fraqtl_defaults.find("sign=1"), std::string::npos);
  }
  if (!delta_pays) {
    EXPECT_EQ(profile->fraqtl_defaults.find("delta=16"), std::string::npos);
  }
  EXPECT_NE(
      result->delta_verdict.find("Profile fraqtl defaults: " + (profile->fraqtl_defaults.empty()
                                                                    ? std::string("none")
                                                                    : profile->fraqtl_defaults)),
      std::string::npos)
      << result->delta_verdict;
  EXPECT_TRUE(CreateCodec("fraqtl@2", &*profile).ok());
  // The profile with its measured levels round-trips.
  auto ser = profile->Serialize();
  ASSERT_TRUE(ser.ok());
  auto back = Profile::Parse(*ser);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->FindLevel("2")->budgets, profile->FindLevel("2")->budgets);
  EXPECT_EQ(back->FindLevel("2")->measured_bits, profile->FindLevel("2")->measured_bits);
  EXPECT_EQ(back->fraqtl_defaults, profile->fraqtl_defaults);

  diag::ReportContext ctx;
  ctx.model = "tiny";
  const std::string report = dir + "/report";
  ASSERT_TRUE(diag::WriteDiagnoseReport(report, *result, *profile, **ge, ctx).ok());
  for (const char* f : {"report.md", "sensitivity.svg", "rate_distortion.svg"}) {
    std::ifstream in(report + "/" + f);
    ASSERT_TRUE(in.good()) << f;
    std::stringstream ss;
    ss << in.rdbuf();
    EXPECT_GT(ss.str().size(), 100u) << f;
    if (std::string(f).ends_with(".svg")) {
      std::string why;
      EXPECT_TRUE(WellFormedXml(ss.str(), &why)) << f << ": " << why;
    }
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvwire
