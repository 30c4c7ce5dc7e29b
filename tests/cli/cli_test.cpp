// End-to-end tests of the `kvwire` binary: synth -> encode -> inspect -> decode, the bit
// accounting that inspect reports, and one-line errors on bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "kvwire/codec.h"
#include "kvwire/kv_file.h"

namespace kvwire {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

struct RunResult {
  int rc = -1;
  std::string out, err;
};

std::string Slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One directory per test process (gtest_discover_tests runs each test in its own process).
class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("kvwire_cli_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  static fs::path Path(const std::string& name) { return dir_ / name; }

  static RunResult Run(const std::string& args) {
    const fs::path out = dir_ / "stdout.txt", err = dir_ / "stderr.txt";
    const std::string cmd = std::string(KVWIRE_CLI) + " " + args + " >" + out.string() + " 2>" +
                            err.string() + " </dev/null";
    const int status = std::system(cmd.c_str());
    RunResult r;
    r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = Slurp(out);
    r.err = Slurp(err);
    return r;
  }

  // Runs a command that must succeed.
  static RunResult Ok(const std::string& args) {
    RunResult r = Run(args);
    EXPECT_EQ(r.rc, 0) << "kvwire " << args << "\nstdout: " << r.out << "\nstderr: " << r.err;
    return r;
  }

  // Runs a command that must fail with exactly one line "kvwire <cmd>: <reason>" on stderr.
  static void ExpectOneLineError(const std::string& args, const std::string& cmd,
                                 const std::string& reason_part) {
    RunResult r = Run(args);
    EXPECT_NE(r.rc, 0) << "kvwire " << args << " succeeded";
    EXPECT_NE(r.rc, 128 + SIGSEGV) << "kvwire " << args << " crashed";
    const std::string prefix = "kvwire " + cmd + ": ";
    EXPECT_EQ(r.err.rfind(prefix, 0), 0u) << "kvwire " << args << " stderr: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not one line: " << r.err;
    EXPECT_NE(r.err.find(reason_part), std::string::npos)
        << "kvwire " << args << ": '" << r.err << "' lacks '" << reason_part << "'";
  }

  // synth of `layers` x 2 kv heads x 64 head_dim x `tokens`; returns the path.
  static std::string Synth(const std::string& name, uint32_t layers, uint32_t tokens,
                           const std::string& extra = "") {
    const std::string path = Path(name).string();
    Ok("synth --out " + path + " --layers " + std::to_string(layers) +
       " --kv-heads 2 --head-dim 64 --tokens " + std::to_string(tokens) + " " + extra);
    return path;
  }

  static Json Inspect(const std::string& kvw, const std::string& extra = "") {
    RunResult r = Ok("inspect " + kvw + " --json " + extra);
    Json j = Json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  static fs::path dir_;
};

fs::path CliTest::dir_;

// Tokens kivi keeps at fp16 in a sequence of `tokens` (group G, window R), by the rule in
// src/codec/baseline_kivi.cpp: the first floor(max(0, S - R) / G) * G tokens are quantized.
uint32_t KiviWindowTokens(uint32_t tokens, uint32_t G, uint32_t R) {
  const uint32_t quantized = tokens > R ? (tokens - R) / G * G : 0;
  return tokens - quantized;
}

// sqrt(sum (b - a)^2 / sum a^2) over every K and V element.
double RelativeRmse(const KvCache& a, const KvCache& b) {
  double err = 0, sig = 0;
  std::vector<float> x(a.shape().tensor_elements()), y(x.size());
  for (uint32_t l = 0; l < a.shape().layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      EXPECT_TRUE(a.view().ReadF32(l, kind, 0, a.shape().tokens, x.data()).ok());
      EXPECT_TRUE(b.view().ReadF32(l, kind, 0, b.shape().tokens, y.data()).ok());
      for (size_t i = 0; i < x.size(); ++i) {
        err += double(y[i] - x[i]) * double(y[i] - x[i]);
        sig += double(x[i]) * x[i];
      }
    }
  }
  return std::sqrt(err / sig);
}

TEST_F(CliTest, SynthWritesADeterministicSyntheticDump) {
  const std::string a = Synth("a.safetensors", 3, 100, "--seed 5 --q-heads 4 --threads 1");
  const std::string b = Synth("b.safetensors", 3, 100, "--seed 5 --q-heads 4 --threads 3");
  const std::string c = Synth("c.safetensors", 3, 100, "--seed 6 --q-heads 4");
  EXPECT_EQ(Slurp(a), Slurp(b)) << "synth must not depend on --threads";
  EXPECT_NE(Slurp(a), Slurp(c)) << "synth must depend on --seed";
  auto cache = LoadKvDump(a);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  EXPECT_EQ(cache->shape(), (KvShape{3, 100, 2, 64}));
  EXPECT_EQ(cache->q_heads(), 4u);
  EXPECT_EQ(cache->dtype(), DType::kF16);
  EXPECT_EQ(cache->metadata().model_fingerprint, "synthetic-v1:seed=5");
  EXPECT_EQ(cache->metadata().rope_style, "interleaved");
}

TEST_F(CliTest, EveryBaselineRoundTripsWithExactAccounting) {
  const std::vector<std::string> specs = BaselineCodecSpecs();
  ASSERT_FALSE(specs.empty()) << "no baseline codecs registered";
  const std::string in = Synth("kv.safetensors", 2, 256);
  auto original = LoadKvDump(in);
  ASSERT_TRUE(original.ok());
  for (const std::string& spec : specs) {
    SCOPED_TRACE(spec);
    const std::string kvw = Path("x.kvw").string(), back = Path("back.safetensors").string();
    Ok("encode --in " + in + " --codec '" + spec + "' --out " + kvw);
    const Json j = Inspect(kvw);
    const uint64_t file_bytes = fs::file_size(kvw);
    const uint64_t elements = 2ull * 2 * 2 * 64 * 256;
    EXPECT_EQ(j["layers"], 2);
    EXPECT_EQ(j["kv_heads"], 2);
    EXPECT_EQ(j["head_dim"], 64);
    EXPECT_EQ(j["tokens"], 256);
    EXPECT_EQ(j["chunks"], 4);
    EXPECT_EQ(j["bytes"].get<uint64_t>(), file_bytes);
    EXPECT_EQ(j["bits_per_element"].get<double>(), double(file_bytes) * 8.0 / double(elements));
    EXPECT_EQ(j["header_bytes"].get<uint64_t>() + j["chunk_header_bytes"].get<uint64_t>() +
                  j["payload_bytes"].get<uint64_t>() + j["trailer_bytes"].get<uint64_t>(),
              file_bytes);
    EXPECT_EQ(j["metadata"]["model_fingerprint"], "synthetic-v1:seed=1");

    Ok("decode --in " + kvw + " --out " + back);
    auto decoded = LoadKvDump(back);
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(decoded->shape(), original->shape());
    EXPECT_EQ(decoded->metadata().positions_start, original->metadata().positions_start);
    const double rmse = RelativeRmse(*original, *decoded);
    std::cerr << "[ info ] " << spec << ": " << j["bits_per_element"].get<double>()
              << " bits/element, relative RMSE " << rmse << "\n";
    if (spec == "fp16") {
      EXPECT_EQ(rmse, 0.0);
    } else {
      EXPECT_TRUE(std::isfinite(rmse));
      EXPECT_LT(rmse, 1.0);
    }
  }
}

TEST_F(CliTest, Q4_0IsFourAndAHalfBitsPlusSmallOverhead) {
  const std::string in = Synth("kv.safetensors", 2, 4096);
  const std::string kvw = Path("q4.kvw").string();
  Ok("encode --in " + in + " --codec q4_0 --out " + kvw);
  const Json j = Inspect(kvw);
  const double bpe = j["bits_per_element"].get<double>();
  EXPECT_EQ(bpe, double(fs::file_size(kvw)) * 8.0 / (2.0 * 2 * 2 * 64 * 4096));
  EXPECT_GE(bpe, 4.5);
  EXPECT_LT(bpe - 4.5, 0.01) << "stream overhead of q4_0 at 4096 tokens";
  EXPECT_EQ(j["codec"], "q4_0");
}

TEST_F(CliTest, Kivi2IsThreeBitsPlusItsWindow) {
  // Rule documented in src/codec/baseline_kivi.cpp: quantized tokens cost b + 32/G bits per
  // element (fp16 scale + min per group of G), window tokens 16, plus 32 bits per chunk.
  const uint32_t tokens = 4096, G = 32, R = 32, width = 2 * 64;  // width = kv_heads x head_dim
  const std::string in = Synth("kv.safetensors", 2, tokens);
  const std::string kvw = Path("kivi2.kvw").string();
  Ok("encode --in " + in + " --codec kivi2 --out " + kvw);
  const Json j = Inspect(kvw);
  EXPECT_EQ(j["codec"], "kivi2:g=32,r=32");
  const uint32_t window = KiviWindowTokens(tokens, G, R);
  const double per_chunk_bits =
      double(tokens - window) * width * (2.0 + 32.0 / G) + double(window) * width * 16.0 + 32.0;
  const double elements_per_chunk = double(tokens) * width;
  const double rule = per_chunk_bits / elements_per_chunk;
  const double payload_bits = j["payload_bytes"].get<double>() * 8.0 / j["chunks"].get<double>();
  EXPECT_NEAR(payload_bits, per_chunk_bits, 8.0) << "payload per chunk vs the documented rule";
  const double bpe = j["bits_per_element"].get<double>();
  EXPECT_GE(bpe, rule);
  EXPECT_LT(bpe - rule, 0.01) << "kivi2 = " << rule << " by rule (3.0 + window " << rule - 3.0
                              << "), inspect says " << bpe;
}

TEST_F(CliTest, BitsFlagPicksTheFamilyWidth) {
  const std::string in = Synth("kv.safetensors", 1, 64);
  const std::string kvw = Path("b.kvw").string();
  Ok("encode --in " + in + " --codec int-token --bits 4 --out " + kvw);
  EXPECT_EQ(Inspect(kvw)["codec"], "int4-token");
  Ok("encode --in " + in + " --codec kivi --bits 4 --out " + kvw);
  EXPECT_EQ(Inspect(kvw)["codec"].get<std::string>().rfind("kivi4", 0), 0u);
  ExpectOneLineError("encode --in " + in + " --codec q4_0 --bits 3 --out " + kvw, "encode",
                     "--bits does not apply");
  ExpectOneLineError("encode --in " + in + " --codec int-token --bits 2.5 --out " + kvw, "encode",
                     "whole number");
}

TEST_F(CliTest, ChunksDtypeAndMetadataFlowThrough) {
  const std::string in = Synth("kv.safetensors", 2, 300, "--positions-start 7 --dtype bf16");
  const std::string kvw = Path("c.kvw").string(), back = Path("c.safetensors").string();
  Ok("encode --in " + in + " --codec q8_0 --chunk-tokens 128 --threads 2 --out " + kvw);
  const Json j = Inspect(kvw, "--chunks");
  EXPECT_EQ(j["chunks"], 2 * 2 * 3);  // ceil(300 / 128) chunks per (layer, K|V)
  EXPECT_EQ(j["chunk_list"].size(), 12u);
  EXPECT_EQ(j["dtype"], "bf16");
  EXPECT_EQ(j["metadata"]["positions_start"], 7);
  EXPECT_EQ(j["chunk_list"][1]["token_begin"], 128);
  const RunResult human = Ok("inspect " + kvw + " --chunks");
  EXPECT_NE(human.out.find("bits/element"), std::string::npos) << human.out;

  Ok("decode --in " + kvw + " --out " + back + " --dtype f32");
  auto decoded = LoadKvDump(back);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->dtype(), DType::kF32);
  EXPECT_EQ(decoded->metadata().positions_start, 7);
  EXPECT_EQ(decoded->metadata().rope_style, "interleaved");
}

TEST_F(CliTest, ProfileCodecNeedsAndRecordsItsProfile) {
  const std::string in = Synth("kvq.safetensors", 2, 512, "--q-heads 4");
  const std::string kvp = Path("p.kvp").string(), kvw = Path("f.kvw").string();
  const std::string back = Path("f.safetensors").string();
  Ok("calibrate --dumps " + in + " --out " + kvp);
  ExpectOneLineError("encode --in " + in + " --codec fraqtl@2 --out " + kvw, "encode", "profile");
  Ok("encode --in " + in + " --codec fraqtl@2 --profile " + kvp + " --out " + kvw);
  const Json j = Inspect(kvw);  // inspect needs no profile
  EXPECT_EQ(j["profile_id"].get<std::string>().rfind("sha256:", 0), 0u);
  EXPECT_EQ(j["bits_per_element"].get<double>(),
            double(fs::file_size(kvw)) * 8.0 / (2.0 * 2 * 2 * 64 * 512));
  ExpectOneLineError("decode --in " + kvw + " --out " + back, "decode", "profile");
  Ok("decode --in " + kvw + " --profile " + kvp + " --out " + back);
  auto original = LoadKvDump(in), decoded = LoadKvDump(back);
  ASSERT_TRUE(original.ok() && decoded.ok());
  EXPECT_LT(RelativeRmse(*original, *decoded), 1.0);
}

TEST_F(CliTest, BadInputsFailWithOneLineReasons) {
  const std::string in = Synth("kv.safetensors", 1, 64);
  const std::string kvw = Path("good.kvw").string();
  Ok("encode --in " + in + " --codec q4_0 --out " + kvw);
  const std::string missing = Path("missing.file").string();
  const std::string out = Path("o").string();

  ExpectOneLineError("encode --in " + missing + " --codec q4_0 --out " + out, "encode",
                     "missing.file");
  ExpectOneLineError("encode --in " + in + " --codec nosuchcodec --out " + out, "encode",
                     "unknown codec 'nosuchcodec'");
  ExpectOneLineError("encode --in " + in + " --codec q4_0 --profile " + missing + " --out " + out,
                     "encode", "missing.file");
  ExpectOneLineError("encode --in " + in + " --codec fraqtl@2 --out " + out, "encode", "profile");
  ExpectOneLineError("encode --in " + kvw + " --codec q4_0 --out " + out, "encode", "safetensors");
  ExpectOneLineError("decode --in " + missing + " --out " + out, "decode", "missing.file");
  ExpectOneLineError("decode --in " + in + " --out " + out, "decode", "");
  ExpectOneLineError("decode --in " + kvw + " --out " + out + " --dtype f8", "decode", "dtype");
  ExpectOneLineError("inspect " + missing, "inspect", "missing.file");

  // Damaged streams: truncated, a flipped payload byte, trailing garbage.
  const std::string good = Slurp(kvw);
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(Path(name), std::ios::binary) << bytes;
    return Path(name).string();
  };
  const std::string truncated = write("truncated.kvw", good.substr(0, good.size() - 10));
  std::string flipped_bytes = good;
  flipped_bytes[good.size() / 2] ^= 0x10;
  const std::string flipped = write("flipped.kvw", flipped_bytes);
  const std::string trailing = write("trailing.kvw", good + "junk");
  for (const std::string& bad : {truncated, flipped, trailing}) {
    ExpectOneLineError("inspect " + bad, "inspect", "");
    ExpectOneLineError("inspect " + bad + " --json", "inspect", "");
    ExpectOneLineError("decode --in " + bad + " --out " + out, "decode", "");
  }
  EXPECT_FALSE(fs::exists(out)) << "a failed decode must not leave an output file";
}

TEST_F(CliTest, HelpExplainsEveryCommand) {
  for (const char* cmd : {"synth", "encode", "decode", "inspect", "bench codec"}) {
    const RunResult r = Ok(std::string(cmd) + " --help");
    EXPECT_GT(r.out.size(), 200u) << cmd << " --help is too thin:\n" << r.out;
  }
  EXPECT_NE(Ok("synth --help").out.find("SYNTHETIC"), std::string::npos);
}

TEST_F(CliTest, BenchCodecWritesResults) {
  const std::string dir = Path("bench").string();
  const RunResult r =
      Ok("bench codec --layers 1 --kv-heads 1 --head-dim 32 --tokens 64 "
         "--codecs fp16,q4_0 --repeat 2 --out-dir " +
         dir);
  EXPECT_NE(r.err.find("[bench]"), std::string::npos) << "progress goes to stderr";
  const Json j = Json::parse(Slurp(Path("bench") / "codec_cpu.json"), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["codecs"].size(), 2u);
  EXPECT_EQ(j["codecs"][0]["codec"], "fp16");
  EXPECT_EQ(j["codecs"][0]["rel_rmse"], 0.0);
  EXPECT_GT(j["memcpy_gbps"].get<double>(), 0.0);
  EXPECT_GT(j["codecs"][1]["encode_gbps"].get<double>(), 0.0);
  EXPECT_NE(j["command"].get<std::string>().find("bench codec"), std::string::npos);
  const std::string md = Slurp(Path("bench") / "codec_cpu.md");
  EXPECT_NE(md.find("| q4_0 |"), std::string::npos);
  EXPECT_NE(md.find("encode vs q4_0"), std::string::npos);
  // Each codec's rounds, and its ratio to q4_0: the median (here the mean of two) of the
  // per-round ratios of q4_0's time to its own.
  EXPECT_EQ(j["baseline"], "q4_0");
  const Json& fp16 = j["codecs"][0];
  const Json& q4 = j["codecs"][1];
  for (const Json* c : {&fp16, &q4}) {
    ASSERT_EQ((*c)["encode_s_rounds"].size(), 2u);
    ASSERT_EQ((*c)["decode_s_rounds"].size(), 2u);
  }
  EXPECT_DOUBLE_EQ(q4["encode_vs_baseline"].get<double>(), 1.0);
  auto ratio = [&](const char* key, int i) {
    return q4[key][i].get<double>() / fp16[key][i].get<double>();
  };
  EXPECT_NEAR(fp16["encode_vs_baseline"].get<double>(),
              0.5 * (ratio("encode_s_rounds", 0) + ratio("encode_s_rounds", 1)), 1e-12);
  EXPECT_NEAR(fp16["decode_vs_baseline"].get<double>(),
              0.5 * (ratio("decode_s_rounds", 0) + ratio("decode_s_rounds", 1)), 1e-12);
  // No ratios when the baseline is not benched.
  Ok("bench codec --layers 1 --kv-heads 1 --head-dim 32 --tokens 64 --codecs fp16 --repeat 1 "
     "--out-dir " +
     dir);
  const Json alone = Json::parse(Slurp(Path("bench") / "codec_cpu.json"), nullptr, false);
  ASSERT_FALSE(alone.is_discarded());
  EXPECT_FALSE(alone.contains("baseline"));
  EXPECT_FALSE(alone["codecs"][0].contains("encode_vs_baseline"));

  ExpectOneLineError("bench codec --codecs nosuch --tokens 8 --layers 1 --out-dir " + dir,
                     "bench codec", "unknown codec");
}

TEST_F(CliTest, BenchTransportWritesItsTableAndJson) {
  // tcp only and no ucx_perftest: quick, and independent of what the machine has installed.
  const std::string dir = Path("bench_transport").string();
  const RunResult r = Ok("bench transport --sizes 64K,1M --backends tcp --mib 8 --repeat 1 "
                         "--latency-samples 10 --perftest none --out-dir " + dir);
  EXPECT_NE(r.err.find("[bench] tcp"), std::string::npos) << "progress goes to stderr";
  const Json j = Json::parse(Slurp(Path("bench_transport") / "transport.json"), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["configs"].size(), 1u);
  EXPECT_EQ(j["configs"][0]["backend"], "tcp");
  const Json& points = j["configs"][0]["points"];
  ASSERT_EQ(points.size(), 2u);
  EXPECT_EQ(points[1]["size"], 1u << 20);
  for (const Json& p : points) {
    EXPECT_GT(p["raw_gbps"].get<double>(), 0.0);
    EXPECT_GT(p["raw_p99_us"].get<double>(), 0.0);
    EXPECT_GT(p["session_gbps"].get<double>(), 0.0);
    EXPECT_TRUE(p["perftest_gbps"].is_null());
  }
  EXPECT_NE(Slurp(Path("bench_transport") / "transport.md").find("| 1 MiB |"), std::string::npos);
  ExpectOneLineError("bench transport --sizes 64K,banana --perftest none", "bench transport",
                     "is not a size");
  ExpectOneLineError("bench transport --backends carrier-pigeon --perftest none",
                     "bench transport", "is not ucx or tcp");
}

}  // namespace
}  // namespace kvwire
