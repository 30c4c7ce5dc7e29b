// Baseline codec names, options, ids and help lines in the registry; shape requirements; the
// ggml block layouts byte for byte.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "codec/baseline_test_util.h"
#include "common/fp16.h"
#include "kvwire/codec.h"

namespace kvwire {
namespace {

using testing_util::GaussianInput;
using testing_util::MakeDesc;
using testing_util::MustCreate;

TEST(BaselineSpecsTest, EveryListedSpecCreatesAndIsCanonical) {
  const std::vector<std::string> specs = BaselineCodecSpecs();
  EXPECT_EQ(std::set<std::string>(specs.begin(), specs.end()).size(), specs.size());
  EXPECT_EQ(specs.size(), 26u);
  for (const std::string& spec : specs) {
    auto codec = MustCreate(spec);
    ASSERT_NE(codec, nullptr);
    auto again = MustCreate(codec->Spec());  // the canonical spec recreates the same codec
    ASSERT_NE(again, nullptr);
    EXPECT_EQ(again->Spec(), codec->Spec());
    EXPECT_EQ(again->Id(), codec->Id());
  }
  EXPECT_EQ(MustCreate("kivi2")->Spec(), "kivi2:g=32,r=32");
  EXPECT_EQ(MustCreate("kivi4:r=16,g=64")->Spec(), "kivi4:g=64,r=16");
  EXPECT_EQ(MustCreate("turbo3")->Spec(), "turbo3:seed=1");
  EXPECT_EQ(MustCreate("turbo2:seed=99")->Spec(), "turbo2:seed=99");
  EXPECT_EQ(MustCreate("int4-token")->Spec(), "int4-token");
  EXPECT_EQ(MustCreate("rank-32")->Spec(), "rank-32");
}

TEST(BaselineSpecsTest, StableIds) {
  const std::pair<const char*, uint16_t> ids[] = {
      {"fp16", 1},       {"int8", 2},       {"q8_0", 3},         {"q4_0", 4},         {"kivi2", 5},
      {"kivi4:g=16", 5}, {"int2-token", 6}, {"int8-token", 6},   {"int3-channel", 7}, {"rank-8", 8},
      {"rank-32", 8},    {"turbo2", 9},     {"turbo4:seed=3", 9}};
  for (const auto& [spec, id] : ids) EXPECT_EQ(MustCreate(spec)->Id(), id) << spec;
}

TEST(BaselineSpecsTest, BadSpecsAreRefusedWithAReason) {
  const std::pair<const char*, StatusCode> bad[] = {
      {"int9-token", StatusCode::kInvalidArgument},
      {"int1-channel", StatusCode::kInvalidArgument},
      {"int4-tokens", StatusCode::kNotFound},
      {"int-token", StatusCode::kNotFound},
      {"kivi1", StatusCode::kInvalidArgument},
      {"kivi9", StatusCode::kInvalidArgument},
      {"kivi", StatusCode::kNotFound},
      {"kivi2:g=0", StatusCode::kInvalidArgument},
      {"kivi2:g=4096", StatusCode::kInvalidArgument},
      {"kivi2:g=abc", StatusCode::kInvalidArgument},
      {"kivi2:r=-1", StatusCode::kInvalidArgument},
      {"kivi2:x=1", StatusCode::kInvalidArgument},
      {"kivi2:g=32,g=16", StatusCode::kInvalidArgument},
      {"fp16:a=b", StatusCode::kInvalidArgument},
      {"int8:g=3", StatusCode::kInvalidArgument},
      {"q8_0:foo=1", StatusCode::kInvalidArgument},
      {"q4_1", StatusCode::kNotFound},
      {"turbo0", StatusCode::kInvalidArgument},
      {"turbo9", StatusCode::kInvalidArgument},
      {"turbo3:seed=-1", StatusCode::kInvalidArgument},
      {"turbo3:seed=1.5", StatusCode::kInvalidArgument},
      {"turbo3:bits=3", StatusCode::kInvalidArgument},
      {"rank-0", StatusCode::kInvalidArgument},
      {"rank-1024", StatusCode::kInvalidArgument},
      {"rank-x", StatusCode::kNotFound},
      {"rank", StatusCode::kNotFound},
      {"int4-token:seed=1", StatusCode::kInvalidArgument},
      {"FP16", StatusCode::kNotFound},
      {"int+4-token", StatusCode::kNotFound}};
  for (const auto& [spec, code] : bad) {
    auto codec = CreateCodec(spec);
    ASSERT_FALSE(codec.ok()) << spec;
    EXPECT_EQ(codec.status().code(), code) << spec << ": " << codec.status().ToString();
    EXPECT_GT(codec.status().message().size(), 10u) << spec;
  }
  // An unknown option names the ones that exist.
  const std::string msg = CreateCodec("kivi2:x=1").status().message();
  EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("g, r"), std::string::npos) << msg;
}

TEST(BaselineSpecsTest, FamiliesHaveHelpWithBitsPerElement) {
  std::set<std::string> patterns;
  for (const CodecFamily& f : ListCodecFamilies()) {
    patterns.insert(f.pattern);
    EXPECT_NE(f.help.find("bits/element"), std::string::npos) << f.pattern << ": " << f.help;
  }
  for (const char* p : {"fp16", "int8", "q8_0", "q4_0", "kivi<b>[:g=G,r=R]", "int<b>-token",
                        "int<b>-channel", "rank-<r>", "turbo<b>[:seed=S]"}) {
    EXPECT_TRUE(patterns.count(p)) << p;
  }
}

TEST(BaselineSpecsTest, ShapeRequirements) {
  std::vector<uint8_t> p;
  for (const char* spec : {"q8_0", "q4_0"}) {
    const ChunkDesc d = MakeDesc(4, 1, 48, KvKind::kKey);
    const Status st = MustCreate(spec)->Encode(d, GaussianInput(d, 1).data(), &p);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << spec;
    EXPECT_NE(st.message().find("32"), std::string::npos) << st.message();
  }
  const ChunkDesc d64 = MakeDesc(8, 1, 64, KvKind::kKey);
  EXPECT_EQ(MustCreate("rank-64")->Encode(d64, GaussianInput(d64, 1).data(), &p).code(),
            StatusCode::kInvalidArgument);
  ChunkDesc bad = d64;
  bad.head_dim = 0;
  EXPECT_EQ(MustCreate("fp16")->Encode(bad, nullptr, &p).code(), StatusCode::kInvalidArgument);
  bad = d64;
  bad.kv_heads = kMaxKvHeads + 1;
  float y = 0;
  EXPECT_EQ(MustCreate("turbo3")->Decode(bad, {}, &y).code(), StatusCode::kInvalidArgument);
}

// q8_0 / q4_0 blocks are ggml's, byte for byte: one block of 32 with x[0] = -2, the rest 1.
TEST(BaselineSpecsTest, GgmlBlockLayouts) {
  const ChunkDesc d = MakeDesc(1, 1, 32, KvKind::kKey);
  std::vector<float> x(32, 1.0f);
  x[0] = -2.0f;
  std::vector<uint8_t> p;
  ASSERT_TRUE(MustCreate("q4_0")->Encode(d, x.data(), &p).ok());
  // d = max / -8 = 0.25 (fp16 0x3400); q = trunc(x / d + 8.5): 1 -> 12, -2 -> 0.
  ASSERT_EQ(p.size(), 18u);
  EXPECT_EQ(p[0], 0x00);
  EXPECT_EQ(p[1], 0x34);
  EXPECT_EQ(p[2], 0xc0);  // element 0 (low nibble) = 0, element 16 (high nibble) = 12
  for (int j = 1; j < 16; ++j) EXPECT_EQ(p[2 + j], 0xcc) << j;
  std::vector<float> y(32);
  ASSERT_TRUE(MustCreate("q4_0")->Decode(d, p, y.data()).ok());
  EXPECT_EQ(y, x);  // exactly representable

  p.clear();
  ASSERT_TRUE(MustCreate("q8_0")->Encode(d, x.data(), &p).ok());
  // d = 2/127, q = round(x / d): 1 -> round(63.5) = 64 (half away from zero), -2 -> -127.
  ASSERT_EQ(p.size(), 34u);
  const uint16_t dh = FloatToHalf(2.0f / 127.0f);
  EXPECT_EQ(p[0], dh & 0xff);
  EXPECT_EQ(p[1], dh >> 8);
  EXPECT_EQ(p[2], 0x81);
  for (int j = 1; j < 32; ++j) EXPECT_EQ(p[2 + j], 64) << j;
}

TEST(BaselineSpecsTest, Int8AndFp16Layouts) {
  const ChunkDesc d = MakeDesc(1, 1, 4, KvKind::kKey);
  const std::vector<float> x = {1.0f, -0.5f, 0.25f, 127.0f};
  std::vector<uint8_t> p;
  ASSERT_TRUE(MustCreate("int8")->Encode(d, x.data(), &p).ok());
  // scale = 127/127 = 1 (fp16 0x3c00), then q = round-half-even(x): 1, -0 -> 0, 0, 127.
  EXPECT_EQ(p, (std::vector<uint8_t>{0x00, 0x3c, 0x01, 0x00, 0x00, 0x7f}));
  p.clear();
  ASSERT_TRUE(MustCreate("fp16")->Encode(d, x.data(), &p).ok());
  EXPECT_EQ(p, (std::vector<uint8_t>{0x00, 0x3c, 0x00, 0xb8, 0x00, 0x34, 0xf0, 0x57}));
}

}  // namespace
}  // namespace kvwire
