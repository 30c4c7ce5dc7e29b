// `kvwire capture` and `kvwire eval` end to end on a synthetic byte-level model: the dump holds
// the KV the library computes, eval's fp16 arm is near lossless, bad inputs fail in one line.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "kvwire/kv_file.h"
#include "kvwire/model.h"
#include "model/test_models.h"

namespace kvwire {
namespace {

class CliModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The CLI is built in every configuration (and before this binary, tests/CMakeLists.txt).
    ASSERT_TRUE(std::filesystem::exists(KVWIRE_CLI)) << KVWIRE_CLI << " not built";
    dir_ = testing::ScratchDir("cli");
    testing::TinyConfig c;
    c.dim = 64;
    c.heads = 2;
    c.kv_heads = 1;
    c.hidden = 96;
    c.vocab = 256;
    c.seq_len = 256;
    const auto model = testing::WriteLlama2c(testing::MakeTinyModel(c, 8));
    std::vector<std::string> pieces;
    for (int b = 0; b < 256; ++b) pieces.emplace_back(1, static_cast<char>(b));
    const auto tok = testing::WriteLlama2cTokenizer(pieces, std::vector<float>(256, 0));
    std::ofstream(dir_ + "/model.bin", std::ios::binary)
        .write(reinterpret_cast<const char*>(model.data()), model.size());
    std::ofstream(dir_ + "/tokenizer.bin", std::ios::binary)
        .write(reinterpret_cast<const char*>(tok.data()), tok.size());
    std::ofstream text(dir_ + "/text.txt");
    for (int i = 0; i < 40; ++i)
      text << "And it came to pass, in verse " << i << ", that all was well.\n";
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  int Cli(const std::string& args, std::string* output = nullptr) {
    const std::string out = dir_ + "/cli_out.txt";
    const int rc =
        std::system((std::string(KVWIRE_CLI) + " " + args + " > " + out + " 2>&1").c_str());
    std::ifstream f(out);
    std::stringstream ss;
    ss << f.rdbuf();
    if (output) *output = ss.str();
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }
  std::string dir_;
};

TEST_F(CliModelTest, CaptureWritesTheModelsKv) {
  std::string out;
  ASSERT_EQ(Cli("capture --model " + dir_ + "/model.bin --text " + dir_ +
                    "/text.txt --tokens 100 "
                    "--offset 7 --with-queries --out " +
                    dir_ + "/kv.safetensors",
                &out),
            0)
      << out;
  auto dump = LoadKvDump(dir_ + "/kv.safetensors");
  ASSERT_TRUE(dump.ok()) << dump.status().ToString();
  EXPECT_EQ(dump->shape(), (KvShape{2, 100, 1, 32}));
  EXPECT_EQ(dump->q_heads(), 2u);
  EXPECT_EQ(dump->metadata().positions_start, 0);
  EXPECT_EQ(dump->metadata().rope_style, "interleaved");
  EXPECT_EQ(dump->metadata().rope_theta, 10000.0);
  EXPECT_EQ(dump->metadata().model_fingerprint.rfind("sha256:", 0), 0u);

  auto m = Model::Load(dir_ + "/model.bin");
  ASSERT_TRUE(m.ok());
  std::ifstream f(dir_ + "/text.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  auto ids = (*m)->tokenizer().Encode(ss.str());
  ASSERT_TRUE(ids.ok());
  auto kv = (*m)->Prefill(std::span<const int32_t>(*ids).subspan(7, 100));
  ASSERT_TRUE(kv.ok());
  for (uint32_t l = 0; l < 2; ++l) {
    auto a = kv->tensor(l, KvKind::kKey), b = dump->tensor(l, KvKind::kKey);
    EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
  }
}

TEST_F(CliModelTest, EvalReportsCodecsAndWritesJson) {
  std::string out;
  ASSERT_EQ(Cli("eval --model " + dir_ + "/model.bin --text " + dir_ +
                    "/text.txt --prefix 64 "
                    "--cont 32 --seqs 3 --seed 4 --codecs fp16,int8 --threads 1 --json " +
                    dir_ + "/eval.json",
                &out),
            0)
      << out;
  EXPECT_NE(out.find("3 x (64 prefix + 32 continuation)"), std::string::npos) << out;
  EXPECT_NE(out.find("seed 4"), std::string::npos);
  std::ifstream f(dir_ + "/eval.json");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string json = ss.str();
  EXPECT_NE(json.find("\"codec\": \"fp16\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"mean_kl\""), std::string::npos);
  EXPECT_NE(json.find("\"window_starts\""), std::string::npos);
}

TEST_F(CliModelTest, BadInputsFailWithOneLine) {
  std::string out;
  std::ofstream(dir_ + "/short.txt") << "too short";
  EXPECT_NE(
      Cli("eval --model " + dir_ + "/model.bin --text " + dir_ + "/short.txt --codecs fp16", &out),
      0);
  EXPECT_NE(out.find("needs 513"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_NE(
      Cli("eval --model " + dir_ + "/model.bin --text " + dir_ + "/text.txt --codecs nosuch", &out),
      0);
  EXPECT_NE(out.find("nosuch"), std::string::npos) << out;
  EXPECT_NE(Cli("capture --model " + dir_ + "/text.txt --text " + dir_ + "/text.txt --out " + dir_ +
                    "/x.safetensors",
                &out),
            0);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
}

// diagnose end to end on the tiny model: its sweep windows come from the calibration text beyond
// the calibrated tokens (never the eval text), it writes a profile whose levels `kvwire eval`
// then uses, and a text too short for both parts is refused with the reason.
TEST_F(CliModelTest, DiagnoseSweepsOnUnusedCalibrationTextAndFeedsEval) {
  std::string out;
  const std::string m = "--model " + dir_ + "/model.bin --text " + dir_ + "/text.txt ";
  ASSERT_EQ(Cli("diagnose " + m +
                    "--calib-tokens 1024 --window 128 --seqs 2 --prefix 32 --cont 32 "
                    "--ladder 1,2 --sweep-bits 2,3 --baselines q4_0 --threads 1 --out " +
                    dir_ + "/p.kvp --report " + dir_ + "/report",
                &out),
            0)
      << out;
  std::ifstream f(dir_ + "/report/report.md");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string md = ss.str();
  EXPECT_NE(md.find("tokens 1024.. (not used by calibration)"), std::string::npos) << md;
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/report/sensitivity.svg"));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/report/rate_distortion.svg"));
  ASSERT_EQ(Cli("eval " + m + "--prefix 32 --cont 32 --seqs 2 --threads 1 --profile " + dir_ +
                    "/p.kvp --codecs fp16,fraqtl@2",
                &out),
            0)
      << out;
  EXPECT_NE(out.find("fraqtl@2"), std::string::npos) << out;

  EXPECT_NE(Cli("diagnose " + m + "--calib-tokens 2000 --seqs 2 --prefix 32 --cont 32 --out " +
                    dir_ + "/q.kvp",
                &out),
            0);
  EXPECT_NE(out.find("not enough for --calib-tokens 2000"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/q.kvp"));
}

}  // namespace
}  // namespace kvwire
