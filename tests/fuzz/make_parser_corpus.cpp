// Writes the generated seeds of the parser fuzz targets into ROOT/<corpus>/:
//
//   make_parser_corpus ROOT     -> ROOT/profile, ROOT/kv_dump, ROOT/gguf, ROOT/llama2c_model,
//                                  ROOT/llama2c_tokenizer (tests/fuzz/corpus/ in the source tree)
//
// Every file is small (a few KiB) and deterministic. Names follow replay_parser_main.cpp:
// "seed-*" must parse, "bad-*" and "regression-*" must be refused, "case-*" only run the
// target's checks. The corpora also hold seeds made by the CLI from real inputs (a profile from
// `kvwire calibrate`, dumps from `kvwire synth`, the tokenizer of models/kjv-gqa-6l); this
// program does not write those.
//
// The models are the random tiny LLaMA weights of the model tests, written with their
// llama2.c and GGUF writers (tests/model/test_models.h); the profiles are the fraqtl tests' toy
// profile (tests/codec/fraqtl_toy.h) and a hand-made one with codebooks and rANS frequencies.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "codec/fraqtl_toy.h"
#include "kvwire/kv_file.h"
#include "kvwire/profile.h"
#include "model/test_models.h"

namespace {

using namespace kvwire;
namespace fs = std::filesystem;
using testing::GgmlT;
using testing::GgufWriter;
using testing::Put;
using testing::PutBytes;

struct Seed {
  std::string dir, name;
  std::vector<uint8_t> bytes;
};

// ---- profiles ---------------------------------------------------------------------------------

// 1 layer, 1 KV head, head_dim 4, no RoPE; codebooks, rANS frequencies, a measured level and
// fraqtl defaults: every optional field of the format.
Profile FullProfile() {
  Profile p;
  p.model_fingerprint = "sha256:0123";
  p.layers = 1;
  p.kv_heads = 1;
  p.heads = 2;
  p.head_dim = 4;
  p.basis_kind = "metric";
  p.key_metric = "identity";
  p.value_metric = "identity";
  p.calib_tokens = 64;
  p.calib_source = "seed";
  p.notes = "hand-made";
  p.fraqtl_defaults = "sign=8,delta=4";
  p.bases.resize(kProfileSlots);
  for (uint32_t s = 0; s < kProfileSlots; ++s) {
    if (s == static_cast<uint32_t>(ProfileSlot::kKeyPreRope)) continue;
    ProfileBasis& b = p.basis(0, static_cast<ProfileSlot>(s), 0);
    b.mean = {0.5f, -0.25f, 0, 1};
    b.forward.assign(16, 0.0f);
    for (int i = 0; i < 4; ++i) b.forward[i * 4 + i] = 1.0f;
    b.inverse = b.forward;
    b.variance = {4, 2, 1, 0.5};
    for (int bits = 1; bits <= kProfileMaxBits; ++bits) {
      const int n = 1 << bits;
      for (int i = 0; i < n; ++i) {
        b.codebook_levels.push_back(-3.0f + 6.0f * (static_cast<float>(i) + 0.5f) / n);
        b.rans_freq.push_back(static_cast<uint16_t>(4096 / n));
      }
    }
    b.distortion = {1, 0.36, 0.12, 0.035, 0.01, 0.0025, 0.0007, 0.0002, 0.00005};
  }
  ProfileLevel lv;
  lv.name = "1.5";
  lv.bits = 1.5;
  lv.budgets = {2, 1};
  lv.kl = 0.01;
  lv.dppl = 0.1;
  lv.top1 = 0.9;
  lv.measured_bits = 1.6;
  p.levels.push_back(lv);
  return p;
}

void AddProfile(std::vector<Seed>* out, const std::string& name, const Profile& p) {
  auto bytes = p.Serialize();
  if (!bytes.ok()) {
    std::fprintf(stderr, "profile %s: %s\n", name.c_str(), bytes.status().ToString().c_str());
    std::exit(1);
  }
  out->push_back({"profile", "seed-" + name + ".kvp", *bytes});
  // The target's body mode: a mode byte, then the body (the target adds the preamble).
  std::vector<uint8_t> body = {'b'};
  body.insert(body.end(), bytes->begin() + 16, bytes->end());
  out->push_back({"profile", "seed-body-" + name, body});
}

void ProfileSeeds(std::vector<Seed>* out) {
  AddProfile(out, "toy-rope", fraqtl_toy::ToyProfile(true));
  Profile norope = fraqtl_toy::ToyProfile(false);
  norope.fraqtl_defaults = "delta=16";
  AddProfile(out, "toy-norope", norope);
  const Profile full = FullProfile();
  AddProfile(out, "full", full);

  std::vector<uint8_t> bad = *full.Serialize();
  bad[bad.size() / 2] ^= 0x20;  // body no longer matches its CRC
  out->push_back({"profile", "bad-crc.kvp", bad});
  bad = *full.Serialize();
  bad[4] = 2;  // format major 2
  out->push_back({"profile", "bad-major.kvp", bad});
  bad = *full.Serialize();
  bad.resize(bad.size() - 7);
  out->push_back({"profile", "bad-truncated.kvp", bad});
}

// ---- KV dumps ---------------------------------------------------------------------------------

KvCache MakeCache(const KvShape& shape, DType dtype, uint32_t q_heads, uint32_t seed) {
  auto cache = KvCache::Create(shape, dtype, q_heads).value();
  uint32_t x = seed * 2654435761u + 1;
  auto fill = [&](std::span<uint8_t> t) {
    for (uint8_t& b : t) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      b = static_cast<uint8_t>(x);
    }
    // Keep the values finite in every dtype: clear the top exponent bit of each element.
    const size_t elem = DTypeSize(dtype);
    for (size_t i = elem - 1; i < t.size(); i += elem) t[i] &= 0xbf;
  };
  for (uint32_t l = 0; l < shape.layers; ++l) {
    fill(cache.tensor(l, KvKind::kKey));
    fill(cache.tensor(l, KvKind::kValue));
    if (q_heads > 0) fill(cache.queries(l));
  }
  return cache;
}

void KvDumpSeeds(std::vector<Seed>* out) {
  struct Case {
    const char* name;
    KvShape shape;
    DType dtype;
    uint32_t q_heads;
    const char* rope_style;
    int64_t positions_start;
  };
  const Case cases[] = {
      {"f32-1l", {1, 3, 1, 4}, DType::kF32, 0, "none", 0},
      {"f16-2l-q", {2, 2, 2, 2}, DType::kF16, 4, "interleaved", 7},
      {"bf16-3l", {3, 1, 1, 8}, DType::kBF16, 0, "neox", -3},
  };
  uint32_t seed = 1;
  for (const Case& c : cases) {
    KvCache cache = MakeCache(c.shape, c.dtype, c.q_heads, seed++);
    cache.metadata().rope_style = c.rope_style;
    cache.metadata().positions_start = c.positions_start;
    cache.metadata().rope_theta = 500000.5;
    cache.metadata().model_fingerprint = "sha256:fuzz-seed";
    out->push_back({"kv_dump", std::string("seed-") + c.name + ".safetensors",
                    SerializeKvDump(cache).value()});
  }

  // Written by hand as other tools write them: keys in another order, an unknown metadata key,
  // whitespace, a header not padded to 8 bytes.
  const std::string header =
      R"({ "v.0": {"shape": [1, 1, 2], "dtype": "F32", "data_offsets": [8, 16]},)"
      R"( "__metadata__": {"tool": "hand", "rope_style": "neox", "positions_start": "2"},)"
      R"( "k.0": {"data_offsets": [0, 8], "dtype": "F32", "shape": [1, 1, 2]} })";
  std::vector<uint8_t> b;
  Put(&b, uint64_t{header.size()});
  PutBytes(&b, header.data(), header.size());
  for (float f : {1.0f, -2.0f, 0.5f, 3.25f}) Put(&b, f);
  out->push_back({"kv_dump", "seed-handwritten.safetensors", b});
  std::vector<uint8_t> overlap = b;
  const std::string bad_header = R"("data_offsets": [4, 12])";
  // v.0 starting inside k.0: same length, so the header length stays right.
  const std::string good = R"("data_offsets": [8, 16])";
  std::string text(header);
  text.replace(text.find(good), good.size(), bad_header);
  std::memcpy(overlap.data() + 8, text.data(), text.size());
  out->push_back({"kv_dump", "bad-overlap.safetensors", overlap});
}

// ---- GGUF -------------------------------------------------------------------------------------

testing::TinyConfig SmallConfig(uint32_t dim, uint32_t hidden, uint32_t layers, uint32_t heads,
                                uint32_t kv_heads, uint32_t vocab, bool tied) {
  testing::TinyConfig c;
  c.dim = dim;
  c.hidden = hidden;
  c.layers = layers;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.vocab = vocab;
  c.seq_len = 4;
  c.tied = tied;
  return c;
}

// A SentencePiece-style vocabulary of 12 ("llama" tokenizer model).
void LlamaVocab(GgufWriter* w) {
  const std::vector<std::string> tokens = {
      "<unk>", "<s>", "</s>", "<0x0A>", "\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a", "ab",
      "\xe2\x96\x81" "ab", "c", "<0xFF>"};
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (size_t i = 0; i < tokens.size(); ++i) {
    scores.push_back(-static_cast<float>(i));
    types.push_back(i == 0 ? 2 : i < 3 ? 3 : tokens[i][0] == '<' ? 6 : 1);
  }
  w->KvStr("tokenizer.ggml.model", "llama");
  w->KvStrArr("tokenizer.ggml.tokens", tokens);
  w->KvF32Arr("tokenizer.ggml.scores", scores);
  w->KvI32Arr("tokenizer.ggml.token_type", types);
  w->KvU32("tokenizer.ggml.bos_token_id", 1);
  w->KvU32("tokenizer.ggml.eos_token_id", 2);
  w->KvU32("tokenizer.ggml.unknown_token_id", 0);
  w->KvBool("tokenizer.ggml.add_bos_token", true);
}

// A GPT-2-style byte-level vocabulary of 12 with merges ("gpt2" tokenizer model).
void Gpt2Vocab(GgufWriter* w, const std::string& pre) {
  const std::vector<std::string> tokens = {"a", "b", "\xc4\xa0", "ab", "\xc4\xa0" "a", "1", "'",
                                           "s", "\xc4\x8a", "<|endoftext|>", "c", "\xc4\xa0" "ab"};
  w->KvStr("tokenizer.ggml.model", "gpt2");
  w->KvStr("tokenizer.ggml.pre", pre);
  w->KvStrArr("tokenizer.ggml.tokens", tokens);
  w->KvStrArr("tokenizer.ggml.merges", {"a b", "\xc4\xa0 a", "\xc4\xa0 ab"});
  w->KvU32("tokenizer.ggml.eos_token_id", 9);
}

std::vector<uint8_t> RawString(const std::string& s) {
  std::vector<uint8_t> b;
  Put(&b, uint64_t{s.size()});
  PutBytes(&b, s.data(), s.size());
  return b;
}

// A container with every metadata type (scalars, arrays of each, a nested array), a custom
// alignment and tensors of several ggml types, but no model in it.
std::vector<uint8_t> ContainerGguf(uint32_t version) {
  std::vector<uint8_t> kv;
  uint64_t n_kv = 0;
  auto key = [&](const std::string& k, uint32_t type) {
    const auto s = RawString(k);
    kv.insert(kv.end(), s.begin(), s.end());
    Put(&kv, type);
    ++n_kv;
  };
  key("u8", 0), Put(&kv, uint8_t{200});
  key("i8", 1), Put(&kv, int8_t{-5});
  key("u16", 2), Put(&kv, uint16_t{60000});
  key("i16", 3), Put(&kv, int16_t{-300});
  key("u32", 4), Put(&kv, uint32_t{4000000000u});
  key("i32", 5), Put(&kv, int32_t{-70000});
  key("f32", 6), Put(&kv, 1.5f);
  key("bool", 7), Put(&kv, uint8_t{1});
  key("str", 8);
  const auto s = RawString("hello");
  kv.insert(kv.end(), s.begin(), s.end());
  key("u64", 10), Put(&kv, uint64_t{1} << 40);
  key("i64", 11), Put(&kv, int64_t{-1} << 40);
  key("f64", 12), Put(&kv, 2.25);
  key("general.alignment", 4), Put(&kv, uint32_t{64});
  key("arr.u16", 9), Put(&kv, uint32_t{2}), Put(&kv, uint64_t{3});
  for (uint16_t v : {1, 2, 3}) Put(&kv, v);
  key("arr.f64", 9), Put(&kv, uint32_t{12}), Put(&kv, uint64_t{2});
  for (double v : {0.5, -0.5}) Put(&kv, v);
  key("arr.str", 9), Put(&kv, uint32_t{8}), Put(&kv, uint64_t{2});
  for (const char* v : {"x", "yz"}) {
    const auto r = RawString(v);
    kv.insert(kv.end(), r.begin(), r.end());
  }
  key("arr.nested", 9), Put(&kv, uint32_t{9}), Put(&kv, uint64_t{2});
  for (int i = 0; i < 2; ++i) {
    Put(&kv, uint32_t{9});  // element type of the nested array: array
    Put(&kv, uint32_t{0});  // its elements: u8
    Put(&kv, uint64_t{2});
    Put(&kv, uint8_t(i)), Put(&kv, uint8_t(i + 1));
  }

  struct T {
    const char* name;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t bytes;
  };
  const T tensors[] = {{"t.f32", {4, 2}, 0, 32},   {"t.f16", {8}, 1, 16},
                       {"t.bf16", {2, 2, 2}, 30, 16}, {"t.q8_0", {32}, 8, 34},
                       {"t.q4_0", {32, 1}, 2, 18},    {"t.i8", {3}, 24, 3}};
  std::vector<uint8_t> b;
  PutBytes(&b, "GGUF", 4);
  Put(&b, version);
  Put(&b, uint64_t{std::size(tensors)});
  Put(&b, n_kv);
  b.insert(b.end(), kv.begin(), kv.end());
  uint64_t off = 0;
  for (const T& t : tensors) {
    const auto n = RawString(t.name);
    b.insert(b.end(), n.begin(), n.end());
    Put(&b, uint32_t(t.dims.size()));
    for (uint64_t d : t.dims) Put(&b, d);
    Put(&b, t.type);
    Put(&b, off);
    off += (t.bytes + 63) / 64 * 64;
  }
  while (b.size() % 64) b.push_back(0);
  for (const T& t : tensors) {
    for (uint64_t i = 0; i < t.bytes; ++i) b.push_back(static_cast<uint8_t>(i * 7 + 1) & 0x3f);
    while (b.size() % 64) b.push_back(0);
  }
  return b;
}

void GgufSeeds(std::vector<Seed>* out) {
  {
    const auto m = testing::MakeTinyModel(SmallConfig(8, 16, 1, 2, 1, 12, true), 3);
    GgufWriter extra;
    LlamaVocab(&extra);
    out->push_back({"gguf", "seed-llama-f32-spm.gguf", testing::WriteGguf(m, GgmlT::kF32, "llama",
                                                                           &extra)});
  }
  {
    auto c = SmallConfig(8, 8, 2, 2, 2, 13, false);
    c.qkv_bias = true;
    c.neox = true;
    const auto m = testing::MakeTinyModel(c, 4);
    GgufWriter extra;
    Gpt2Vocab(&extra, "qwen2");
    out->push_back({"gguf", "seed-qwen2-f16-bpe.gguf",
                    testing::WriteGguf(m, GgmlT::kF16, "qwen2", &extra)});
  }
  {
    const auto m = testing::MakeTinyModel(SmallConfig(32, 32, 1, 2, 1, 4, true), 5);
    GgufWriter extra;
    extra.KvStr("llama.rope.scaling.type", "linear");
    extra.KvF32("llama.rope.scaling.factor", 2.0f);
    extra.KvU32("llama.rope.dimension_count", 8);
    out->push_back({"gguf", "seed-llama-q8_0.gguf",
                    testing::WriteGguf(m, GgmlT::kQ8_0, "llama", &extra)});
  }
  {
    const auto m = testing::MakeTinyModel(SmallConfig(8, 8, 1, 1, 1, 13, true), 6);
    GgufWriter extra;
    Gpt2Vocab(&extra, "llama-bpe");
    out->push_back({"gguf", "seed-llama-f32-llama3-bpe.gguf",
                    testing::WriteGguf(m, GgmlT::kF32, "llama", &extra)});
  }
  out->push_back({"gguf", "seed-container-v3.gguf", ContainerGguf(3)});
  out->push_back({"gguf", "seed-container-v2.gguf", ContainerGguf(2)});

  // Hostile: a header announcing 2^20 tensors and nothing behind it.
  std::vector<uint8_t> b;
  PutBytes(&b, "GGUF", 4);
  Put(&b, uint32_t{3});
  Put(&b, uint64_t{1} << 20);
  Put(&b, uint64_t{0});
  out->push_back({"gguf", "regression-tensor-count.gguf", b});

  // Hostile: two tensors over the same bytes.
  b.clear();
  PutBytes(&b, "GGUF", 4);
  Put(&b, uint32_t{3});
  Put(&b, uint64_t{2});
  Put(&b, uint64_t{0});
  for (const char* name : {"a", "b"}) {
    const auto n = RawString(name);
    b.insert(b.end(), n.begin(), n.end());
    Put(&b, uint32_t{1});
    Put(&b, uint64_t{8});
    Put(&b, uint32_t{0});  // F32
    Put(&b, uint64_t{0});  // both at offset 0
  }
  while (b.size() % 32) b.push_back(0);
  for (int i = 0; i < 8; ++i) Put(&b, static_cast<float>(i));
  out->push_back({"gguf", "regression-overlapping-tensors.gguf", b});
}

// ---- llama2.c models and tokenizers -----------------------------------------------------------

void Llama2cSeeds(std::vector<Seed>* out) {
  out->push_back({"llama2c_model", "seed-tied.bin",
                  testing::WriteLlama2c(
                      testing::MakeTinyModel(SmallConfig(8, 16, 1, 2, 1, 12, true), 7))});
  out->push_back({"llama2c_model", "seed-untied-gqa.bin",
                  testing::WriteLlama2c(
                      testing::MakeTinyModel(SmallConfig(8, 12, 2, 4, 2, 10, false), 8))});

  auto with_vocab = [](uint32_t vocab, const std::vector<uint8_t>& file) {
    std::vector<uint8_t> b = {static_cast<uint8_t>(vocab), static_cast<uint8_t>(vocab >> 8),
                              static_cast<uint8_t>(vocab >> 16)};
    b.insert(b.end(), file.begin(), file.end());
    return b;
  };
  std::vector<std::string> bytes;
  for (int i = 0; i < 256; ++i) bytes.emplace_back(1, static_cast<char>(i));
  out->push_back({"llama2c_tokenizer", "seed-bytes",
                  with_vocab(256, testing::WriteLlama2cTokenizer(bytes, std::vector<float>(256)))});

  // llama2.c's conventions: <unk>, <s>, </s>, byte fallbacks, then merged pieces.
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < 8; ++i) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", 0x60 + i);
    pieces.push_back(buf);
  }
  for (const char* p : {" ", "a", "b", "c", " a", "ab", " ab", "abc", "\xc3\xa9", "th", " the"}) {
    pieces.push_back(p);
  }
  std::vector<float> scores;
  for (size_t i = 0; i < pieces.size(); ++i) scores.push_back(i < 11 ? 0.0f : -float(i));
  const auto spm = testing::WriteLlama2cTokenizer(pieces, scores);
  out->push_back({"llama2c_tokenizer", "seed-spm",
                  with_vocab(static_cast<uint32_t>(pieces.size()), spm)});
  // Fewer entries announced than the file holds: the rest is ignored.
  out->push_back({"llama2c_tokenizer", "seed-spm-prefix", with_vocab(5, spm)});
  out->push_back({"llama2c_tokenizer", "bad-spm-short",
                  with_vocab(static_cast<uint32_t>(pieces.size()) + 1, spm)});
  // Hostile: a model header announcing 2^24 - 1 entries for a 12-byte file.
  std::vector<uint8_t> tiny;
  Put(&tiny, uint32_t{1});
  Put(&tiny, 0.0f);
  Put(&tiny, uint32_t{1});
  tiny.push_back('a');
  out->push_back({"llama2c_tokenizer", "regression-huge-vocab", with_vocab((1u << 24) - 1, tiny)});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ROOT  (writes ROOT/<corpus>/<seed>)\n", argv[0]);
    return 2;
  }
  std::vector<Seed> seeds;
  ProfileSeeds(&seeds);
  KvDumpSeeds(&seeds);
  GgufSeeds(&seeds);
  Llama2cSeeds(&seeds);
  for (const Seed& s : seeds) {
    const fs::path dir = fs::path(argv[1]) / s.dir;
    fs::create_directories(dir);
    std::ofstream out(dir / s.name, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(s.bytes.data()),
              static_cast<std::streamsize>(s.bytes.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", (dir / s.name).c_str());
      return 1;
    }
    std::printf("%-18s %-40s %6zu bytes\n", s.dir.c_str(), s.name.c_str(), s.bytes.size());
  }
  return 0;
}
