// KV dump (safetensors) reader/writer: round trips, hostile files, and a check that an
// independent Python parser reads what we write.
#include "kvwire/kv_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>

#include "common/fp16.h"

namespace kvwire {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed when the test ends.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("kvwire_kv_file_") + std::to_string(::getpid()) + "_" +
                       info->test_suite_name() + "_" + info->name();
    for (char& c : name) c = (c == '/') ? '_' : c;
    path_ = fs::temp_directory_path() / name;
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

// Fills every tensor with finite values of the cache's dtype.
void FillRandom(KvCache* cache, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  auto fill = [&](std::span<uint8_t> bytes) {
    const size_t n = bytes.size() / DTypeSize(cache->dtype());
    for (size_t i = 0; i < n; ++i) {
      const float x = normal(rng);
      if (cache->dtype() == DType::kF32) {
        std::memcpy(bytes.data() + 4 * i, &x, 4);
      } else {
        const uint16_t h = cache->dtype() == DType::kF16 ? FloatToHalf(x) : FloatToBf16(x);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
    }
  };
  for (uint32_t l = 0; l < cache->shape().layers; ++l) {
    fill(cache->tensor(l, KvKind::kKey));
    fill(cache->tensor(l, KvKind::kValue));
    if (cache->q_heads()) fill(cache->queries(l));
  }
}

KvCache MakeCache(DType dtype, uint32_t q_heads = 0, KvShape shape = {3, 5, 2, 8}) {
  auto cache = KvCache::Create(shape, dtype, q_heads);
  EXPECT_TRUE(cache.ok()) << cache.status().ToString();
  FillRandom(&cache.value(), 7);
  return std::move(cache).value();
}

void ExpectSameCache(const KvCache& a, const KvCache& b) {
  ASSERT_EQ(a.shape(), b.shape());
  ASSERT_EQ(a.dtype(), b.dtype());
  ASSERT_EQ(a.q_heads(), b.q_heads());
  for (uint32_t l = 0; l < a.shape().layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      auto x = a.tensor(l, kind), y = b.tensor(l, kind);
      ASSERT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << "layer " << l;
    }
    auto x = a.queries(l), y = b.queries(l);
    ASSERT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << "queries of layer " << l;
  }
  EXPECT_EQ(a.metadata().positions_start, b.metadata().positions_start);
  EXPECT_EQ(a.metadata().rope_theta, b.metadata().rope_theta);
  EXPECT_EQ(a.metadata().rope_style, b.metadata().rope_style);
  EXPECT_EQ(a.metadata().model_fingerprint, b.metadata().model_fingerprint);
}

class KvFileDTypeTest : public ::testing::TestWithParam<DType> {};

TEST_P(KvFileDTypeTest, RoundTripInMemoryAndOnDisk) {
  for (uint32_t q_heads : {0u, 4u}) {
    KvCache cache = MakeCache(GetParam(), q_heads);
    cache.metadata().positions_start = -12345678901;
    cache.metadata().rope_theta = 500000.123456789;
    cache.metadata().rope_style = "neox";
    cache.metadata().model_fingerprint = "sha256:\"quoted\" \\ unicode \xc3\xa9";

    auto bytes = SerializeKvDump(cache);
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    uint64_t header_len = 0;
    std::memcpy(&header_len, bytes->data(), 8);
    EXPECT_EQ((8 + header_len) % 8, 0u) << "data section must start 8-byte aligned";
    auto parsed = ParseKvDump(*bytes);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    ExpectSameCache(cache, *parsed);

    const TempDir dir;
    const std::string path = (dir / "kv.safetensors").string();
    ASSERT_TRUE(SaveKvDump(path, cache).ok());
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    auto on_disk = ReadFileBytes(path);
    ASSERT_TRUE(on_disk.ok());
    EXPECT_EQ(*on_disk, *bytes) << "SaveKvDump and SerializeKvDump must write the same bytes";
    auto loaded = LoadKvDump(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    ExpectSameCache(cache, *loaded);
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, KvFileDTypeTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(KvFileTest, DefaultMetadataWhenAbsent) {
  // A minimal file as another tool would write it: no __metadata__ at all.
  std::string json = R"({"k.0":{"dtype":"F32","shape":[1,1,1],"data_offsets":[0,4]},)"
                     R"("v.0":{"dtype":"F32","shape":[1,1,1],"data_offsets":[4,8]}})";
  std::vector<uint8_t> bytes(8);
  const uint64_t n = json.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes.insert(bytes.end(), json.begin(), json.end());
  const float values[2] = {1.5f, -2.0f};
  const auto* p = reinterpret_cast<const uint8_t*>(values);
  bytes.insert(bytes.end(), p, p + 8);
  auto cache = ParseKvDump(bytes);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  EXPECT_EQ(cache->shape(), (KvShape{1, 1, 1, 1}));
  EXPECT_EQ(cache->metadata().positions_start, 0);
  EXPECT_EQ(cache->metadata().rope_style, "none");
  float v = 0;
  std::memcpy(&v, cache->tensor(0, KvKind::kValue).data(), 4);
  EXPECT_EQ(v, -2.0f);
}

// ----- hostile files ------------------------------------------------------------------------

std::vector<uint8_t> FileWithHeader(const std::string& json, size_t data_bytes) {
  std::vector<uint8_t> bytes(8 + json.size() + data_bytes, 0);
  const uint64_t n = json.size();
  std::memcpy(bytes.data(), &n, 8);
  std::memcpy(bytes.data() + 8, json.data(), json.size());
  return bytes;
}

std::string Tensor(const std::string& name, const std::string& dtype, const std::string& shape,
                   uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// k.0 and v.0 of shape [2, 1, 2] F32: 16 bytes each.
const std::string kK0 = Tensor("k.0", "F32", "[2,1,2]", 0, 16);
const std::string kV0 = Tensor("v.0", "F32", "[2,1,2]", 16, 32);

struct BadCase {
  const char* what;
  std::vector<uint8_t> bytes;
  StatusCode code;
  const char* reason;  // substring of the message
};

std::vector<BadCase> BadCases() {
  std::vector<BadCase> cases;
  auto add = [&](const char* what, std::vector<uint8_t> bytes, StatusCode code,
                 const char* reason) {
    cases.push_back({what, std::move(bytes), code, reason});
  };
  auto obj = [](std::initializer_list<std::string> parts) {
    std::string s = "{";
    for (const auto& p : parts) s += (s.size() > 1 ? "," : "") + p;
    return s + "}";
  };
  add("too short", {1, 2, 3}, StatusCode::kTruncated, "shorter than the 8-byte");
  {
    std::vector<uint8_t> b(16, 0);
    const uint64_t n = 200ull << 20;
    std::memcpy(b.data(), &n, 8);
    add("huge header length", b, StatusCode::kCorrupt, "100 MB");
  }
  {
    auto b = FileWithHeader(obj({kK0, kV0}), 32);
    const uint64_t n = b.size();
    std::memcpy(b.data(), &n, 8);
    add("header length past the end", b, StatusCode::kTruncated, "exceeds the");
  }
  add("not json", FileWithHeader("{\"k.0\": nope", 0), StatusCode::kCorrupt, "not valid JSON");
  add("json array", FileWithHeader("[1,2]", 0), StatusCode::kCorrupt, "not a JSON object");
  add("deep nesting", FileWithHeader(std::string(10000, '[') + std::string(10000, ']'), 0),
      StatusCode::kCorrupt, "nests deeper");
  add("duplicate tensor",
      FileWithHeader(obj({kK0, kV0, Tensor("k.0", "F32", "[2,1,2]", 0, 16)}), 32),
      StatusCode::kCorrupt, "names 'k.0' twice");
  add("foreign tensor", FileWithHeader(obj({kK0, kV0, Tensor("w", "F32", "[1,1,1]", 32, 36)}), 36),
      StatusCode::kCorrupt, "unexpected tensor 'w'");
  add("leading zero layer", FileWithHeader(obj({Tensor("k.00", "F32", "[2,1,2]", 0, 16), kV0}), 32),
      StatusCode::kCorrupt, "unexpected tensor 'k.00'");
  add("extra field",
      FileWithHeader("{\"k.0\":{\"dtype\":\"F32\",\"shape\":[2,1,2],\"data_offsets\":[0,16],"
                     "\"x\":1}," +
                         kV0 + "}",
                     32),
      StatusCode::kCorrupt, "unexpected field 'x'");
  add("unsupported dtype", FileWithHeader(obj({Tensor("k.0", "F64", "[2,1,2]", 0, 16), kV0}), 32),
      StatusCode::kUnsupported, "dtype 'F64'");
  add("missing dtype",
      FileWithHeader("{\"k.0\":{\"shape\":[2,1,2],\"data_offsets\":[0,16]}," + kV0 + "}", 32),
      StatusCode::kCorrupt, "'dtype'");
  add("rank 2", FileWithHeader(obj({Tensor("k.0", "F32", "[2,2]", 0, 16), kV0}), 32),
      StatusCode::kCorrupt, "2 dimensions");
  add("negative dim", FileWithHeader(obj({Tensor("k.0", "F32", "[-2,1,2]", 0, 16), kV0}), 32),
      StatusCode::kCorrupt, "non-negative integer");
  add("zero tokens",
      FileWithHeader(
          obj({Tensor("k.0", "F32", "[0,1,2]", 0, 0), Tensor("v.0", "F32", "[0,1,2]", 0, 0)}), 0),
      StatusCode::kCorrupt, "tokens = 0");
  add("end before begin", FileWithHeader(obj({Tensor("k.0", "F32", "[2,1,2]", 16, 0), kV0}), 32),
      StatusCode::kCorrupt, "end before begin");
  add("offset past data", FileWithHeader(obj({kK0, Tensor("v.0", "F32", "[2,1,2]", 16, 32)}), 24),
      StatusCode::kTruncated, "beyond the 24-byte data section");
  add("overlap", FileWithHeader(obj({kK0, Tensor("v.0", "F32", "[2,1,2]", 8, 24)}), 24),
      StatusCode::kCorrupt, "overlaps");
  add("hole", FileWithHeader(obj({kK0, Tensor("v.0", "F32", "[2,1,2]", 20, 36)}), 36),
      StatusCode::kCorrupt, "belong to no tensor");
  add("trailing bytes", FileWithHeader(obj({kK0, kV0}), 40), StatusCode::kCorrupt, "trailing");
  add("bytes vs shape",
      FileWithHeader(
          obj({Tensor("k.0", "F32", "[2,1,2]", 0, 12), Tensor("v.0", "F32", "[2,1,2]", 12, 28)}),
          28),
      StatusCode::kCorrupt, "need 16");
  add("shape mismatch", FileWithHeader(obj({kK0, Tensor("v.0", "F32", "[4,1,1]", 16, 32)}), 32),
      StatusCode::kCorrupt, "expected [2, 1, 2]");
  add("dtype mismatch", FileWithHeader(obj({kK0, Tensor("v.0", "F16", "[2,1,4]", 16, 32)}), 32),
      StatusCode::kCorrupt, "one dtype per dump");
  add("no tensors", FileWithHeader("{}", 0), StatusCode::kNotFound, "no k.<layer>");
  add("missing v", FileWithHeader(obj({kK0}), 16), StatusCode::kNotFound, "v.0 is missing");
  add("layer gap",
      FileWithHeader(obj({kK0, kV0, Tensor("k.2", "F32", "[2,1,2]", 32, 48),
                          Tensor("v.2", "F32", "[2,1,2]", 48, 64)}),
                     64),
      StatusCode::kNotFound, "k.1 is missing");
  add("v without k", FileWithHeader(obj({kK0, kV0, Tensor("v.1", "F32", "[2,1,2]", 32, 48)}), 48),
      StatusCode::kCorrupt, "v.1 has no matching k.1");
  add("queries for some layers",
      FileWithHeader(obj({kK0, kV0, Tensor("q.3", "F32", "[2,4,2]", 32, 96)}), 96),
      StatusCode::kCorrupt, "q.3 has no matching k.3");
  add("metadata not strings",
      FileWithHeader(obj({"\"__metadata__\":{\"rope_theta\":1}", kK0, kV0}), 32),
      StatusCode::kCorrupt, "not a string");
  add("bad positions_start",
      FileWithHeader(obj({"\"__metadata__\":{\"positions_start\":\"12x\"}", kK0, kV0}), 32),
      StatusCode::kCorrupt, "positions_start = '12x'");
  add("bad rope_style",
      FileWithHeader(obj({"\"__metadata__\":{\"rope_style\":\"yarn\"}", kK0, kV0}), 32),
      StatusCode::kCorrupt, "rope_style = 'yarn'");
  return cases;
}

TEST(KvFileTest, MalformedFilesGiveClearErrors) {
  for (const BadCase& c : BadCases()) {
    auto r = ParseKvDump(c.bytes);
    ASSERT_FALSE(r.ok()) << c.what << ": accepted";
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.reason), std::string::npos)
        << c.what << ": message '" << r.status().message() << "' lacks '" << c.reason << "'";
  }
}

TEST(KvFileTest, EveryTruncationAndBitFlipIsHandled) {
  KvCache cache = MakeCache(DType::kF16, 2, {2, 3, 1, 4});
  auto bytes = SerializeKvDump(cache);
  ASSERT_TRUE(bytes.ok());
  for (size_t n = 0; n < bytes->size(); ++n) {
    auto r = ParseKvDump(std::span<const uint8_t>(bytes->data(), n));
    EXPECT_FALSE(r.ok()) << "prefix of " << n << " bytes accepted";
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes->data(), 8);
  for (size_t i = 0; i < 8 + header_len; ++i) {  // flips in the data section are just values
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> b = *bytes;
      b[i] ^= static_cast<uint8_t>(1u << bit);
      auto r = ParseKvDump(b);  // must not crash; a flip may still give a valid file
      if (!r.ok()) {
        EXPECT_FALSE(r.status().message().empty());
      }
    }
  }
}

TEST(KvFileTest, MissingFileIsNotFoundWithThePath) {
  auto r = LoadKvDump("/nonexistent/kvwire/kv.safetensors");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/kvwire/kv.safetensors"), std::string::npos);
  auto b = ReadFileBytes("/nonexistent/kvwire/x.kvw");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kNotFound);
}

TEST(KvFileTest, ReadFileBytesEnforcesItsBound) {
  const TempDir dir;
  const std::string path = (dir / "f.bin").string();
  std::vector<uint8_t> data(100, 7);
  ASSERT_TRUE(WriteFileBytes(path, data).ok());
  auto ok = ReadFileBytes(path, 100);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, data);
  auto too_big = ReadFileBytes(path, 99);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), StatusCode::kResourceExhausted);
}

// ----- an independent reader ----------------------------------------------------------------

// Parses a safetensors file the way any Python tool would and prints one line per tensor:
// "<name> <dtype> <d0> <d1> <d2> <values as repr floats...>" and one "meta <key> <value>" line
// per metadata entry. Uses numpy when present, the standard library otherwise.
constexpr const char* kPythonReader = R"PY(
import json, struct, sys
path, out = sys.argv[1], sys.argv[2]
try:
    import numpy as np
except ImportError:
    np = None
with open(path, 'rb') as f:
    blob = f.read()
(n,) = struct.unpack('<Q', blob[:8])
header = json.loads(blob[8:8 + n].decode('utf-8'))
data = blob[8 + n:]
lines = []
for key, val in sorted(header.get('__metadata__', {}).items()):
    lines.append('meta %s %s' % (key, val))
for name in sorted(k for k in header if k != '__metadata__'):
    t = header[name]
    b, e = t['data_offsets']
    raw = data[b:e]
    count = 1
    for d in t['shape']:
        count *= d
    if np is not None:
        if t['dtype'] == 'BF16':
            vals = (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            vals = np.frombuffer(raw, {'F32': '<f4', 'F16': '<f2'}[t['dtype']])
        vals = [float(v) for v in vals]
    elif t['dtype'] == 'BF16':
        vals = [struct.unpack('<f', struct.pack('<I', h << 16))[0]
                for h in struct.unpack('<%dH' % count, raw)]
    else:
        vals = list(struct.unpack('<%d%s' % (count, {'F32': 'f', 'F16': 'e'}[t['dtype']]), raw))
    assert len(vals) == count, name
    lines.append(' '.join([name, t['dtype']] + [str(d) for d in t['shape']] + [repr(v) for v in vals]))
with open(out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
print('numpy' if np is not None else 'stdlib')
)PY";

// A python3 interpreter, preferring one that has numpy; empty if there is none.
std::string FindPython(bool* has_numpy) {
  for (const char* py : {"python3", "/usr/bin/python3"}) {
    const std::string quiet = " >/dev/null 2>&1";
    if (std::system((std::string(py) + " -c 'import numpy'" + quiet).c_str()) == 0) {
      *has_numpy = true;
      return py;
    }
  }
  *has_numpy = false;
  return std::system("python3 -c 'pass' >/dev/null 2>&1") == 0 ? "python3" : "";
}

TEST(KvFileTest, PythonReadsWhatWeWrite) {
  bool has_numpy = false;
  const std::string python = FindPython(&has_numpy);
  if (python.empty()) GTEST_SKIP() << "SKIPPED: python3 not found; cannot cross-check safetensors";
  if (!has_numpy) std::cerr << "[ note ] numpy missing: the Python reader uses struct instead\n";

  const TempDir dir;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    KvCache cache = MakeCache(dtype, 3, {2, 3, 2, 4});
    cache.metadata().positions_start = 17;
    cache.metadata().rope_theta = 10000;
    cache.metadata().rope_style = "interleaved";
    cache.metadata().model_fingerprint = "test-model";
    const fs::path file = dir / ("kv_" + std::string(DTypeName(dtype)) + ".safetensors");
    const fs::path script = dir / "reader.py", out = dir / "python_view.txt";
    ASSERT_TRUE(SaveKvDump(file.string(), cache).ok());
    std::ofstream(script) << kPythonReader;
    const std::string cmd = python + " " + script.string() + " " + file.string() + " " +
                            out.string() + " > " + (dir / "which.txt").string();
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "python reader failed: " << cmd;

    std::ifstream in(out);
    std::string line;
    std::map<std::string, std::string> meta;
    int tensors = 0;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string name, dt;
      ls >> name;
      if (name == "meta") {
        std::string key, value;
        ls >> key;
        std::getline(ls, value);
        meta[key] = value.empty() ? "" : value.substr(1);
        continue;
      }
      ++tensors;
      uint64_t d0, d1, d2;
      ls >> dt >> d0 >> d1 >> d2;
      EXPECT_EQ(dt, dtype == DType::kF32 ? "F32" : dtype == DType::kF16 ? "F16" : "BF16");
      const uint32_t layer = static_cast<uint32_t>(std::stoul(name.substr(2)));
      std::span<const uint8_t> raw = name[0] == 'q'   ? cache.queries(layer)
                                     : name[0] == 'k' ? cache.tensor(layer, KvKind::kKey)
                                                      : cache.tensor(layer, KvKind::kValue);
      EXPECT_EQ(d0, 3u);
      EXPECT_EQ(d1, name[0] == 'q' ? 3u : 2u);
      EXPECT_EQ(d2, 4u);
      const size_t n = raw.size() / DTypeSize(dtype);
      ASSERT_EQ(n, d0 * d1 * d2);
      for (size_t i = 0; i < n; ++i) {
        std::string tok;
        ASSERT_TRUE(ls >> tok) << name << " has only " << i << " values";
        float expect;
        if (dtype == DType::kF32) {
          std::memcpy(&expect, raw.data() + 4 * i, 4);
        } else {
          uint16_t h;
          std::memcpy(&h, raw.data() + 2 * i, 2);
          expect = dtype == DType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
        }
        EXPECT_EQ(std::strtod(tok.c_str(), nullptr), double{expect}) << name << "[" << i << "]";
      }
    }
    EXPECT_EQ(tensors, 6);
    EXPECT_EQ(meta["positions_start"], "17");
    EXPECT_EQ(meta["rope_theta"], "10000");
    EXPECT_EQ(meta["rope_style"], "interleaved");
    EXPECT_EQ(meta["model_fingerprint"], "test-model");
  }
  std::ifstream which(dir / "which.txt");
  std::string how;
  which >> how;
  std::cerr << "[ note ] python reader used " << how << "\n";
}

// A mapped dump reads as the loaded one: the same bytes per tensor, the same metadata; a dump
// whose tensors lie misaligned (an unpadded header, as the file above) is read all the same;
// a bad one gives the path and the reason.
TEST(KvFileTest, MappedDumpEqualsLoadedDump) {
  const TempDir dir;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    KvCache cache = MakeCache(dt, 2);
    cache.metadata().rope_theta = 10000;
    cache.metadata().model_fingerprint = "fp";
    const std::string path = (dir / "kv.safetensors").string();
    ASSERT_TRUE(SaveKvDump(path, cache).ok());
    auto mapped = MappedKvDump::Open(path);
    ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
    MappedKvDump m = std::move(*mapped);  // the view survives a move
    ASSERT_EQ(m.shape(), cache.shape());
    ASSERT_EQ(m.dtype(), dt);
    EXPECT_EQ(m.metadata().rope_theta, 10000);
    EXPECT_EQ(m.metadata().model_fingerprint, "fp");
    std::vector<uint8_t> got(cache.shape().tokens * m.view().row_bytes());
    for (uint32_t l = 0; l < cache.shape().layers; ++l) {
      for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
        ASSERT_TRUE(m.view().ReadRaw(l, kind, 0, cache.shape().tokens, got.data()).ok());
        auto want = cache.tensor(l, kind);
        EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin(), got.end())) << l;
      }
    }
  }
  // Misaligned: an 8-byte length and a 121-byte header put the F32 data at offset 129.
  std::string json = R"({"k.0":{"dtype":"F32","shape":[1,1,1],"data_offsets":[0,4]},)"
                     R"("v.0":{"dtype":"F32","shape":[1,1,1],"data_offsets":[4,8]}})";
  ASSERT_NE((8 + json.size()) % 4, 0u);
  std::vector<uint8_t> bytes = FileWithHeader(json, 8);
  const float values[2] = {1.5f, -2.0f};
  std::memcpy(bytes.data() + 8 + json.size(), values, 8);
  const std::string odd = (dir / "odd.safetensors").string();
  ASSERT_TRUE(WriteFileBytes(odd, bytes).ok());
  auto m = MappedKvDump::Open(odd);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  float v = 0;
  ASSERT_TRUE(m->view().ReadF32(0, KvKind::kValue, 0, 1, &v).ok());
  EXPECT_EQ(v, -2.0f);
  // Bad: truncated data, and a missing file.
  bytes.resize(bytes.size() - 1);
  ASSERT_TRUE(WriteFileBytes(odd, bytes).ok());
  auto bad = MappedKvDump::Open(odd);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(odd), std::string::npos) << bad.status().ToString();
  EXPECT_EQ(MappedKvDump::Open(odd + ".none").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvwire
