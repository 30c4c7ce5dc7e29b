// llama2.c legacy checkpoints: validation of malformed files, and the real stories260K model
// (perplexity on its in-distribution text, coherent greedy text) when the test data is found
// (KVWIRE_TEST_DATA, see test_models.h).
#include <gtest/gtest.h>

#include <cstdio>

#include <fstream>
#include <sstream>

#include "kvwire/model.h"
#include "model/test_models.h"

namespace kvwire {
namespace {

using testing::MakeTinyModel;
using testing::TinyConfig;
using testing::WriteLlama2c;

Status LoadStatus(const std::vector<uint8_t>& bytes) {
  return Model::LoadFromBytes(bytes, "bad.bin").status();
}

TEST(Llama2cModelTest, MalformedFilesAreRefused) {
  TinyConfig c;
  const auto good = WriteLlama2c(MakeTinyModel(c, 1));
  ASSERT_TRUE(LoadStatus(good).ok());
  for (size_t cut :
       {size_t{0}, size_t{3}, size_t{27}, size_t{28}, good.size() / 2, good.size() - 1}) {
    const Status s = LoadStatus(std::vector<uint8_t>(good.begin(), good.begin() + cut));
    EXPECT_EQ(s.code(), StatusCode::kTruncated) << cut << ": " << s.ToString();
  }
  auto longer = good;
  longer.push_back(0);
  EXPECT_EQ(LoadStatus(longer).code(), StatusCode::kCorrupt);

  auto with_header = [&](int field, int32_t value) {
    auto b = good;
    std::memcpy(b.data() + 4 * field, &value, 4);
    return LoadStatus(b);
  };
  EXPECT_EQ(with_header(0, 0).code(), StatusCode::kCorrupt);  // dim
  EXPECT_EQ(with_header(0, -5).code(), StatusCode::kCorrupt);
  EXPECT_EQ(with_header(2, 1 << 30).code(), StatusCode::kCorrupt);  // layers
  EXPECT_EQ(with_header(3, 5).code(), StatusCode::kCorrupt);        // dim % heads
  EXPECT_EQ(with_header(4, 3).code(), StatusCode::kCorrupt);        // heads % kv_heads
  EXPECT_EQ(with_header(5, 0).code(), StatusCode::kCorrupt);        // vocab
  EXPECT_EQ(with_header(5, INT32_MIN).code(), StatusCode::kCorrupt);
  EXPECT_FALSE(with_header(6, 0x7fffffff).ok());  // seq_len
  EXPECT_FALSE(with_header(1, 0x7fffffff).ok());  // hidden_dim

  auto nan = good;
  const float q = std::nanf("");
  std::memcpy(nan.data() + 28 + 8, &q, 4);  // inside the embedding
  EXPECT_EQ(LoadStatus(nan).code(), StatusCode::kCorrupt);

  EXPECT_EQ(Model::Load("/nonexistent/model.bin").status().code(), StatusCode::kIoError);
  EXPECT_EQ(Model::Load("/tmp").status().code(), StatusCode::kIoError);
}

TEST(Llama2cModelTest, TokenizerBesideTheModelIsPickedUp) {
  const std::string dir = testing::ScratchDir("beside");
  TinyConfig c;
  c.vocab = 256;
  const auto bytes = WriteLlama2c(MakeTinyModel(c, 3));
  std::vector<std::string> pieces;
  for (int b = 0; b < 256; ++b) pieces.emplace_back(1, static_cast<char>(b));
  std::ofstream(dir + "/model.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  const auto tok = testing::WriteLlama2cTokenizer(pieces, std::vector<float>(256, 0));
  {
    auto m = Model::Load(dir + "/model.bin");
    ASSERT_TRUE(m.ok());
    EXPECT_EQ((*m)->TokenizerStatus().code(), StatusCode::kNotFound);
  }
  std::ofstream(dir + "/tokenizer.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(tok.data()), tok.size());
  auto m = Model::Load(dir + "/model.bin");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE((*m)->TokenizerStatus().ok());
  EXPECT_EQ((*m)->tokenizer().kind(), TokenizerKind::kBytes);
  EXPECT_EQ((*m)->config().name, "model.bin");
  std::filesystem::remove_all(dir);
}

class Stories260KTest : public ::testing::Test {
 protected:
  void SetUp() override {
    shared_ = testing::TestDataDir();
    if (shared_.empty()) GTEST_SKIP() << testing::kTestDataMissing;
    ModelOptions o;
    o.tokenizer_path = shared_ + "/models/stories260K/tok512.bin";
    auto m = Model::Load(shared_ + "/models/stories260K/stories260K.bin", o);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    model_ = std::move(m).value();
  }
  std::string shared_;
  std::unique_ptr<Model> model_;
};

TEST_F(Stories260KTest, LoadsWithKnownShapeAndFingerprint) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.dim, 64u);
  EXPECT_EQ(c.hidden_dim, 172u);
  EXPECT_EQ(c.layers, 5u);
  EXPECT_EQ(c.heads, 8u);
  EXPECT_EQ(c.kv_heads, 4u);
  EXPECT_EQ(c.head_dim, 8u);
  EXPECT_EQ(c.vocab_size, 512u);
  EXPECT_EQ(c.max_seq_len, 512u);
  EXPECT_TRUE(c.tied_output);
  EXPECT_EQ(model_->fingerprint(),
            "sha256:b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
}

TEST_F(Stories260KTest, PerplexityOnTinyStoriesSample) {
  // Each line of the sample is one story; like the training data, each gets its own BOS.
  std::ifstream f(shared_ + "/text/TinyStories-valid-sample.txt", std::ios::binary);
  std::string line;
  LogitStats stats;
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    auto ids = model_->tokenizer().Encode(line);
    ASSERT_TRUE(ids.ok());
    if (ids->size() > 512) ids->resize(512);
    std::span<const int32_t> t(*ids);
    auto seq = model_->NewSequence(512);
    ASSERT_TRUE(seq.ok());
    std::vector<float> logits;
    ASSERT_TRUE(model_->Forward(&*seq, t.first(t.size() - 1), {}, &logits).ok());
    ASSERT_TRUE(AccumulateLogitStats(logits, logits, t.subspan(1), 512, &stats).ok());
  }
  EXPECT_GT(stats.positions, 8000u);
  std::printf("[ stories260K ] per-story PPL %.4f over %llu tokens\n", stats.ppl(),
              static_cast<unsigned long long>(stats.positions));
  // The model's own documentation says "about 4.5"; this runner measures 5.17 per story, and
  // tools/llama2c_reference.py (independent numpy, float64) agrees with its logits to ~1e-6
  // (reference_agreement_test), so the gap is the measurement layout, not the runner. The
  // band pins today's value so a runner change that moves it shows up.
  EXPECT_NEAR(stats.ppl(), 5.17, 0.05);
}

TEST_F(Stories260KTest, GreedyTextIsCoherent) {
  auto prompt = model_->tokenizer().Encode("Once upon a time");
  ASSERT_TRUE(prompt.ok());
  auto gen = model_->Generate(*prompt, 80);
  ASSERT_TRUE(gen.ok());
  const std::string text = model_->tokenizer().Decode(*gen);
  // Known output: ", there was a little girl named Lily. She loved to play outside in the park..."
  EXPECT_EQ(text.rfind(", there was a little girl named Lily.", 0), 0u) << text;
  for (const char* word : {" she ", " the ", " to "}) {
    std::string lower = text;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    EXPECT_NE(lower.find(word), std::string::npos) << word << " in: " << text;
  }
}

}  // namespace
}  // namespace kvwire
