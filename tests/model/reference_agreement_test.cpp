// Agreement with tools/llama2c_reference.py (an independent numpy implementation of llama2.c's
// run.c, float64): same tokens, logits within 1e-4 relative, same perplexity. Runs on a random
// synthetic model always, on stories260K when its test data is found (KVWIRE_TEST_DATA, see
// test_models.h), and on the project's model models/kjv-gqa-6l. Skipped (loudly) when
// /usr/bin/python3 lacks numpy.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "kvwire/model.h"
#include "model/test_models.h"

namespace kvwire {
namespace {

constexpr char kPython[] = "/usr/bin/python3";

bool HavePythonNumpy() {
  static const bool ok =
      std::system((std::string(kPython) + " -c 'import numpy' >/dev/null 2>&1").c_str()) == 0;
  return ok;
}

std::string Script() { return std::string(KVWIRE_SOURCE_DIR) + "/tools/llama2c_reference.py"; }

template <typename T>
std::vector<T> ReadRaw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(f)), {});
  std::vector<T> v(b.size() / sizeof(T));
  std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
  return v;
}

std::string ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int Run(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// Runs the reference's `logits` on text_file and checks tokens and logits against the runner.
void ExpectSameLogits(const std::string& model, const std::string& tokenizer,
                      const std::string& text_file, int max_tokens, const std::string& dir) {
  const std::string out = dir + "/ref_logits.f32", tok = dir + "/ref_tokens.i32";
  const std::string cmd = std::string(kPython) + " " + Script() + " logits " + model +
                          " --tokenizer " + tokenizer + " --text-file " + text_file +
                          " --max-tokens " + std::to_string(max_tokens) + " --out " + out +
                          " --tokens-out " + tok + " > " + dir + "/ref_stdout.txt 2>&1";
  ASSERT_EQ(Run(cmd), 0) << cmd << "\n" << ReadText(dir + "/ref_stdout.txt");
  const auto ref = ReadRaw<float>(out);
  const auto ref_tokens = ReadRaw<int32_t>(tok);

  ModelOptions o;
  o.tokenizer_path = tokenizer;
  auto m = Model::Load(model, o);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  auto ids = (*m)->tokenizer().Encode(ReadText(text_file));
  ASSERT_TRUE(ids.ok());
  if (ids->size() > static_cast<size_t>(max_tokens)) ids->resize(max_tokens);
  EXPECT_EQ(*ids, ref_tokens) << "tokenizers disagree";
  auto seq = (*m)->NewSequence(static_cast<uint32_t>(ref_tokens.size()));
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits;
  ASSERT_TRUE((*m)->Forward(&*seq, ref_tokens, {}, &logits).ok());
  ASSERT_EQ(logits.size(), ref.size());
  const double rel = testing::RelativeError(logits, ref);
  EXPECT_LT(rel, 1e-4);
  std::printf("[ reference ] %s: %zu tokens, max |C++ - numpy| / max |numpy| = %.3g\n",
              model.c_str(), ref_tokens.size(), rel);
}

// Perplexity with the reference's window layout: windows of W+1 tokens overlapping by one.
double WindowPpl(const Model& m, const std::vector<int32_t>& t, uint32_t W, uint32_t max_windows) {
  LogitStats stats;
  uint32_t windows = 0;
  for (size_t k = 0; k + 1 < t.size() && (max_windows == 0 || windows < max_windows); k += W) {
    const size_t len = std::min<size_t>(W + 1, t.size() - k);
    std::span<const int32_t> w(t.data() + k, len);
    auto seq = m.NewSequence(W);
    std::vector<float> logits;
    EXPECT_TRUE(m.Forward(&*seq, w.first(len - 1), {}, &logits).ok());
    EXPECT_TRUE(
        AccumulateLogitStats(logits, logits, w.subspan(1), m.config().vocab_size, &stats).ok());
    ++windows;
  }
  return stats.ppl();
}

double ReferencePpl(const std::string& model, const std::string& tokenizer,
                    const std::string& text_file, uint32_t max_windows, const std::string& dir) {
  const std::string out = dir + "/ref_ppl.json";
  const std::string cmd = std::string(kPython) + " " + Script() + " ppl " + model +
                          " --tokenizer " + tokenizer + " --text-file " + text_file +
                          " --max-windows " + std::to_string(max_windows) + " > " + out + " 2>&1";
  EXPECT_EQ(Run(cmd), 0) << cmd << "\n" << ReadText(out);
  const std::string json = ReadText(out);
  const size_t at = json.find("\"ppl\":");
  if (at == std::string::npos) return -1;
  return std::strtod(json.c_str() + at + 6, nullptr);
}

class ReferenceAgreementTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HavePythonNumpy()) {
      GTEST_SKIP() << "SKIPPED: /usr/bin/python3 with numpy is needed for "
                      "tools/llama2c_reference.py (apt-get install python3-numpy)";
    }
    dir_ = testing::ScratchDir("reference");
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(ReferenceAgreementTest, SyntheticByteLevelModel) {
  testing::TinyConfig c;
  c.dim = 64;
  c.heads = 4;
  c.kv_heads = 1;
  c.hidden = 80;
  c.vocab = 256;
  c.seq_len = 128;
  c.tied = false;
  const auto model = testing::WriteLlama2c(testing::MakeTinyModel(c, 77));
  std::vector<std::string> pieces;
  for (int b = 0; b < 256; ++b) pieces.emplace_back(1, static_cast<char>(b));
  const auto tok = testing::WriteLlama2cTokenizer(pieces, std::vector<float>(256, 0));
  std::ofstream(dir_ + "/m.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(model.data()), model.size());
  std::ofstream(dir_ + "/t.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(tok.data()), tok.size());
  std::ofstream(dir_ + "/text.txt") << "In the beginning God created the heaven and the earth.\n"
                                       "And the earth was without form, and void.";
  ExpectSameLogits(dir_ + "/m.bin", dir_ + "/t.bin", dir_ + "/text.txt", 128, dir_);
}

TEST_F(ReferenceAgreementTest, Stories260K) {
  const std::string shared = testing::TestDataDir();
  if (shared.empty()) GTEST_SKIP() << testing::kTestDataMissing;
  const std::string model = shared + "/models/stories260K/stories260K.bin";
  const std::string tok = shared + "/models/stories260K/tok512.bin";
  const std::string text = shared + "/text/TinyStories-valid-sample.txt";
  ExpectSameLogits(model, tok, text, 512, dir_);
  ModelOptions o;
  o.tokenizer_path = tok;
  auto m = Model::Load(model, o);
  ASSERT_TRUE(m.ok());
  auto ids = (*m)->tokenizer().Encode(ReadText(text));
  ASSERT_TRUE(ids.ok());
  const double ours = WindowPpl(**m, *ids, 512, 8);
  const double ref = ReferencePpl(model, tok, text, 8, dir_);
  std::printf("[ reference ] stories260K PPL over 8 windows: C++ %.6f, numpy %.6f\n", ours, ref);
  EXPECT_NEAR(ours / ref, 1.0, 1e-5);
}

TEST_F(ReferenceAgreementTest, ProjectModel) {
  const std::string base = std::string(KVWIRE_SOURCE_DIR) + "/models/kjv-gqa-6l";
  const std::string eval = std::string(KVWIRE_SOURCE_DIR) + "/models/data/kjv_eval.txt";
  if (!std::filesystem::exists(base + "/model.bin") ||
      !std::filesystem::exists(base + "/tokenizer.bin") || !std::filesystem::exists(eval)) {
    GTEST_SKIP() << "SKIPPED: models/kjv-gqa-6l/{model.bin,tokenizer.bin} or "
                    "models/data/kjv_eval.txt missing (not trained yet?)";
  }
  ExpectSameLogits(base + "/model.bin", base + "/tokenizer.bin", eval, 512, dir_);
  auto m = Model::Load(base + "/model.bin");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ((*m)->config().head_dim, 64u);
  EXPECT_LT((*m)->config().kv_heads, (*m)->config().heads);  // grouped-query attention
  auto ids = (*m)->tokenizer().Encode(ReadText(eval));
  ASSERT_TRUE(ids.ok());
  const double ours = WindowPpl(**m, *ids, 512, 4);
  const double ref = ReferencePpl(base + "/model.bin", base + "/tokenizer.bin", eval, 4, dir_);
  std::printf("[ reference ] kjv-gqa-6l PPL over 4 windows: C++ %.6f, numpy %.6f\n", ours, ref);
  EXPECT_NEAR(ours / ref, 1.0, 1e-5);
}

// The second project model has another shape (head_dim 128, one KV head, 1 query head): the
// runner must load it with no code change and agree with the independent reference.
TEST_F(ReferenceAgreementTest, HeadDim128SingleKvHeadModel) {
  const std::string base = std::string(KVWIRE_SOURCE_DIR) + "/models/kjv-mqa-hd128";
  const std::string eval = std::string(KVWIRE_SOURCE_DIR) + "/models/data/kjv_eval.txt";
  if (!std::filesystem::exists(base + "/model.bin") || !std::filesystem::exists(eval)) {
    GTEST_SKIP() << "SKIPPED: models/kjv-mqa-hd128/model.bin or models/data/kjv_eval.txt missing";
  }
  ExpectSameLogits(base + "/model.bin", base + "/tokenizer.bin", eval, 512, dir_);
  auto m = Model::Load(base + "/model.bin");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ((*m)->config().head_dim, 128u);
  EXPECT_EQ((*m)->config().kv_heads, 1u);
  auto ids = (*m)->tokenizer().Encode(ReadText(eval));
  ASSERT_TRUE(ids.ok());
  const double ours = WindowPpl(**m, *ids, 512, 4);
  const double ref = ReferencePpl(base + "/model.bin", base + "/tokenizer.bin", eval, 4, dir_);
  std::printf("[ reference ] kjv-mqa-hd128 PPL over 4 windows: C++ %.6f, numpy %.6f\n", ours, ref);
  EXPECT_NEAR(ours / ref, 1.0, 1e-5);
}

}  // namespace
}  // namespace kvwire
