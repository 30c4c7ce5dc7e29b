// Test fixtures for the model runner: random tiny LLaMA weights, writers of the same weights
// as a llama2.c legacy file and as a GGUF file (written here from the GGUF spec, independently
// of the reader), and a naive scalar double-precision forward pass used as ground truth.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/fp16.h"

namespace kvwire::testing {

struct TinyConfig {
  uint32_t dim = 32, hidden = 48, layers = 2, heads = 4, kv_heads = 2, vocab = 40, seq_len = 64;
  bool tied = true;
  bool qkv_bias = false;
  bool neox = false;  // RoPE pairs (i, i + d/2) instead of (2i, 2i+1)
  float theta = 10000.0f;
  float eps = 1e-5f;
  uint32_t head_dim() const { return dim / heads; }
};

struct TinyLayer {
  std::vector<float> attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w1, w2, w3;
};

struct TinyModel {
  TinyConfig c;
  std::vector<float> emb, final_norm, out;  // out empty when tied
  std::vector<TinyLayer> layers;
};

inline std::vector<float> RandomVector(std::mt19937* rng, size_t n, float scale, float offset = 0) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = offset + d(*rng);
  return v;
}

inline TinyModel MakeTinyModel(const TinyConfig& c, uint32_t seed) {
  std::mt19937 rng(seed);
  TinyModel m;
  m.c = c;
  const size_t dim = c.dim, hd = c.head_dim(), qd = size_t{c.heads} * hd,
               kvd = size_t{c.kv_heads} * hd;
  const float s_in = 1.5f / std::sqrt(float(dim)), s_hid = 1.5f / std::sqrt(float(c.hidden));
  m.emb = RandomVector(&rng, size_t{c.vocab} * dim, 1.0f);
  m.layers.resize(c.layers);
  for (auto& l : m.layers) {
    l.attn_norm = RandomVector(&rng, dim, 0.3f, 1.0f);
    l.wq = RandomVector(&rng, qd * dim, s_in);
    l.wk = RandomVector(&rng, kvd * dim, s_in);
    l.wv = RandomVector(&rng, kvd * dim, s_in);
    l.wo = RandomVector(&rng, dim * qd, s_in);
    if (c.qkv_bias) {
      l.bq = RandomVector(&rng, qd, 0.5f);
      l.bk = RandomVector(&rng, kvd, 0.5f);
      l.bv = RandomVector(&rng, kvd, 0.5f);
    }
    l.ffn_norm = RandomVector(&rng, dim, 0.3f, 1.0f);
    l.w1 = RandomVector(&rng, size_t{c.hidden} * dim, s_in);
    l.w2 = RandomVector(&rng, dim * c.hidden, s_hid);
    l.w3 = RandomVector(&rng, size_t{c.hidden} * dim, s_in);
  }
  m.final_norm = RandomVector(&rng, dim, 0.3f, 1.0f);
  if (!c.tied) m.out = RandomVector(&rng, size_t{c.vocab} * dim, 1.0f);
  return m;
}

// ------------------------------------------------------------------------------ llama2.c file

inline void PutBytes(std::vector<uint8_t>* b, const void* p, size_t n) {
  const auto* u = static_cast<const uint8_t*>(p);
  b->insert(b->end(), u, u + n);
}
template <typename T>
void Put(std::vector<uint8_t>* b, T v) {
  PutBytes(b, &v, sizeof(v));
}
inline void PutFloats(std::vector<uint8_t>* b, const std::vector<float>& v) {
  PutBytes(b, v.data(), v.size() * 4);
}

/// llama2.c legacy file (interleaved RoPE, no biases: those configs only).
inline std::vector<uint8_t> WriteLlama2c(const TinyModel& m) {
  const TinyConfig& c = m.c;
  std::vector<uint8_t> b;
  for (int32_t v :
       {int32_t(c.dim), int32_t(c.hidden), int32_t(c.layers), int32_t(c.heads), int32_t(c.kv_heads),
        c.tied ? int32_t(c.vocab) : -int32_t(c.vocab), int32_t(c.seq_len)}) {
    Put(&b, v);
  }
  PutFloats(&b, m.emb);
  for (auto& l : m.layers) PutFloats(&b, l.attn_norm);
  for (auto& l : m.layers) PutFloats(&b, l.wq);
  for (auto& l : m.layers) PutFloats(&b, l.wk);
  for (auto& l : m.layers) PutFloats(&b, l.wv);
  for (auto& l : m.layers) PutFloats(&b, l.wo);
  for (auto& l : m.layers) PutFloats(&b, l.ffn_norm);
  for (auto& l : m.layers) PutFloats(&b, l.w1);
  for (auto& l : m.layers) PutFloats(&b, l.w2);
  for (auto& l : m.layers) PutFloats(&b, l.w3);
  PutFloats(&b, m.final_norm);
  // The legacy freq_cis tables (ignored by readers that recompute RoPE): fill with junk to
  // prove they are ignored.
  PutFloats(&b, std::vector<float>(size_t{c.seq_len} * c.head_dim(), 7.0f));
  if (!c.tied) PutFloats(&b, m.out);
  return b;
}

/// A llama2.c tokenizer.bin.
inline std::vector<uint8_t> WriteLlama2cTokenizer(const std::vector<std::string>& pieces,
                                                  const std::vector<float>& scores) {
  std::vector<uint8_t> b;
  uint32_t max_len = 0;
  for (auto& p : pieces) max_len = std::max<uint32_t>(max_len, p.size());
  Put(&b, max_len);
  for (size_t i = 0; i < pieces.size(); ++i) {
    Put(&b, scores[i]);
    Put(&b, int32_t(pieces[i].size()));
    PutBytes(&b, pieces[i].data(), pieces[i].size());
  }
  return b;
}

// ---------------------------------------------------------------------------------- GGUF file

enum class GgmlT : uint32_t { kF32 = 0, kF16 = 1, kQ8_0 = 8 };

/// What storing `v` as `t` does to it (the values a correct reader must see).
inline std::vector<float> RoundTrip(const std::vector<float>& v, GgmlT t) {
  std::vector<float> out(v);
  if (t == GgmlT::kF16) {
    for (auto& x : out) x = HalfToFloat(FloatToHalf(x));
  } else if (t == GgmlT::kQ8_0) {
    for (size_t b = 0; b < v.size() / 32; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[b * 32 + i]));
      const float d = amax / 127.0f;
      const float dh = HalfToFloat(FloatToHalf(d));
      for (int i = 0; i < 32; ++i) {
        const float q = d ? std::round(v[b * 32 + i] / d) : 0.0f;
        out[b * 32 + i] = dh * q;
      }
    }
  }
  return out;
}

inline std::vector<uint8_t> EncodeTensor(const std::vector<float>& v, GgmlT t) {
  std::vector<uint8_t> b;
  if (t == GgmlT::kF32) {
    PutFloats(&b, v);
  } else if (t == GgmlT::kF16) {
    for (float x : v) Put(&b, FloatToHalf(x));
  } else {
    for (size_t blk = 0; blk < v.size() / 32; ++blk) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[blk * 32 + i]));
      const float d = amax / 127.0f;
      Put(&b, FloatToHalf(d));
      for (int i = 0; i < 32; ++i) {
        Put(&b, int8_t(d ? std::round(v[blk * 32 + i] / d) : 0.0f));
      }
    }
  }
  return b;
}

/// Minimal GGUF v3 writer (spec: ggml/docs/gguf.md): metadata, tensor infos, aligned data.
class GgufWriter {
 public:
  enum : uint32_t { U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STR = 8, ARR = 9 };

  void KvU32(const std::string& k, uint32_t v) {
    Key(k, U32);
    Put(&kv_, v);
    ++n_kv_;
  }
  void KvF32(const std::string& k, float v) {
    Key(k, F32);
    Put(&kv_, v);
    ++n_kv_;
  }
  void KvBool(const std::string& k, bool v) {
    Key(k, BOOL);
    Put(&kv_, uint8_t(v));
    ++n_kv_;
  }
  void KvStr(const std::string& k, const std::string& v) {
    Key(k, STR);
    Str(&kv_, v);
    ++n_kv_;
  }
  void KvStrArr(const std::string& k, const std::vector<std::string>& v) {
    Key(k, ARR);
    Put(&kv_, uint32_t(STR));
    Put(&kv_, uint64_t(v.size()));
    for (auto& s : v) Str(&kv_, s);
    ++n_kv_;
  }
  void KvF32Arr(const std::string& k, const std::vector<float>& v) {
    Key(k, ARR);
    Put(&kv_, uint32_t(F32));
    Put(&kv_, uint64_t(v.size()));
    for (float x : v) Put(&kv_, x);
    ++n_kv_;
  }
  void KvI32Arr(const std::string& k, const std::vector<int32_t>& v) {
    Key(k, ARR);
    Put(&kv_, uint32_t(I32));
    Put(&kv_, uint64_t(v.size()));
    for (int32_t x : v) Put(&kv_, x);
    ++n_kv_;
  }
  /// dims in GGUF order (ne[0] = contiguous row length first).
  void Tensor(const std::string& name, std::vector<uint64_t> dims, const std::vector<float>& v,
              GgmlT t) {
    tensors_.push_back({name, std::move(dims), t, EncodeTensor(v, t)});
  }

  std::vector<uint8_t> Finish(uint32_t alignment = 32) const {
    std::vector<uint8_t> b;
    PutBytes(&b, "GGUF", 4);
    Put(&b, uint32_t(3));
    Put(&b, uint64_t(tensors_.size()));
    Put(&b, uint64_t(n_kv_));
    b.insert(b.end(), kv_.begin(), kv_.end());
    uint64_t off = 0;
    for (auto& t : tensors_) {
      Str(&b, t.name);
      Put(&b, uint32_t(t.dims.size()));
      for (uint64_t d : t.dims) Put(&b, d);
      Put(&b, uint32_t(t.type));
      Put(&b, off);
      off += (t.data.size() + alignment - 1) / alignment * alignment;
    }
    while (b.size() % alignment) b.push_back(0);
    for (auto& t : tensors_) {
      b.insert(b.end(), t.data.begin(), t.data.end());
      while (b.size() % alignment) b.push_back(0);
    }
    return b;
  }

 private:
  struct T {
    std::string name;
    std::vector<uint64_t> dims;
    GgmlT type;
    std::vector<uint8_t> data;
  };
  static void Str(std::vector<uint8_t>* b, const std::string& s) {
    Put(b, uint64_t(s.size()));
    PutBytes(b, s.data(), s.size());
  }
  void Key(const std::string& k, uint32_t type) {
    Str(&kv_, k);
    Put(&kv_, type);
  }
  std::vector<uint8_t> kv_;
  uint64_t n_kv_ = 0;
  std::vector<T> tensors_;
};

/// Writes `m` as a GGUF of architecture "llama" (interleaved RoPE) or "qwen2" (neox RoPE,
/// biases) with matrices stored as `t` (norms and biases always F32, as converters do).
inline std::vector<uint8_t> WriteGguf(const TinyModel& m, GgmlT t, const std::string& arch,
                                      GgufWriter* extra = nullptr) {
  const TinyConfig& c = m.c;
  GgufWriter w = extra ? *extra : GgufWriter();
  w.KvStr("general.architecture", arch);
  w.KvStr("general.name", "tiny-test");
  w.KvU32(arch + ".context_length", c.seq_len);
  w.KvU32(arch + ".embedding_length", c.dim);
  w.KvU32(arch + ".feed_forward_length", c.hidden);
  w.KvU32(arch + ".block_count", c.layers);
  w.KvU32(arch + ".attention.head_count", c.heads);
  w.KvU32(arch + ".attention.head_count_kv", c.kv_heads);
  w.KvF32(arch + ".attention.layer_norm_rms_epsilon", c.eps);
  w.KvF32(arch + ".rope.freq_base", c.theta);
  const uint64_t dim = c.dim, hid = c.hidden, V = c.vocab, qd = uint64_t{c.heads} * c.head_dim(),
                 kvd = uint64_t{c.kv_heads} * c.head_dim();
  w.Tensor("token_embd.weight", {dim, V}, m.emb, t);
  for (uint32_t l = 0; l < c.layers; ++l) {
    const TinyLayer& L = m.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    w.Tensor(p + "attn_norm.weight", {dim}, L.attn_norm, GgmlT::kF32);
    w.Tensor(p + "attn_q.weight", {dim, qd}, L.wq, t);
    w.Tensor(p + "attn_k.weight", {dim, kvd}, L.wk, t);
    w.Tensor(p + "attn_v.weight", {dim, kvd}, L.wv, t);
    w.Tensor(p + "attn_output.weight", {qd, dim}, L.wo, t);
    if (!L.bq.empty()) {
      w.Tensor(p + "attn_q.bias", {qd}, L.bq, GgmlT::kF32);
      w.Tensor(p + "attn_k.bias", {kvd}, L.bk, GgmlT::kF32);
      w.Tensor(p + "attn_v.bias", {kvd}, L.bv, GgmlT::kF32);
    }
    w.Tensor(p + "ffn_norm.weight", {dim}, L.ffn_norm, GgmlT::kF32);
    w.Tensor(p + "ffn_gate.weight", {dim, hid}, L.w1, t);
    w.Tensor(p + "ffn_up.weight", {dim, hid}, L.w3, t);
    w.Tensor(p + "ffn_down.weight", {hid, dim}, L.w2, t);
  }
  w.Tensor("output_norm.weight", {dim}, m.final_norm, GgmlT::kF32);
  if (!c.tied) w.Tensor("output.weight", {dim, V}, m.out, t);
  return w.Finish();
}

/// The weights a reader of WriteGguf(m, t, ...) must see.
inline TinyModel RoundTripModel(const TinyModel& m, GgmlT t) {
  TinyModel r = m;
  r.emb = RoundTrip(m.emb, t);
  if (!r.out.empty()) r.out = RoundTrip(m.out, t);
  for (auto& l : r.layers) {
    for (auto* v : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3}) *v = RoundTrip(*v, t);
  }
  return r;
}

/// Reorders the Q/K rows of every head from interleaved pairs to neox halves, so a model run
/// with neox RoPE computes the same attention as `m` run with interleaved RoPE.
inline TinyModel InterleavedToNeox(const TinyModel& m) {
  TinyModel r = m;
  r.c.neox = true;
  const uint32_t hd = m.c.head_dim(), dim = m.c.dim;
  auto permute = [&](std::vector<float>* w, uint32_t heads) {
    std::vector<float> src = *w;
    for (uint32_t h = 0; h < heads; ++h) {
      for (uint32_t i = 0; i < hd / 2; ++i) {
        for (uint32_t half = 0; half < 2; ++half) {
          const size_t from = size_t{h} * hd + 2 * i + half;
          const size_t to = size_t{h} * hd + i + half * (hd / 2);
          std::memcpy(w->data() + to * dim, src.data() + from * dim, dim * 4);
        }
      }
    }
  };
  for (auto& l : r.layers) {
    permute(&l.wq, m.c.heads);
    permute(&l.wk, m.c.kv_heads);
  }
  return r;
}

// ------------------------------------------------------------------------- naive reference

/// Logits [tokens, vocab] of `tokens` at positions 0.., token by token, in double precision,
/// written straight from the LLaMA equations (no batching, no cache layout tricks).
inline std::vector<double> NaiveForward(const TinyModel& m, const std::vector<int32_t>& tokens) {
  const TinyConfig& c = m.c;
  const size_t dim = c.dim, hd = c.head_dim(), H = c.heads, KH = c.kv_heads, V = c.vocab;
  std::vector<std::vector<std::vector<double>>> K(c.layers), Vc(c.layers);
  std::vector<double> logits;
  auto matvec = [](const std::vector<float>& w, const std::vector<double>& x, size_t out) {
    std::vector<double> y(out, 0.0);
    for (size_t o = 0; o < out; ++o) {
      for (size_t i = 0; i < x.size(); ++i) y[o] += double(w[o * x.size() + i]) * x[i];
    }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, const std::vector<float>& w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / x.size() + c.eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] * s;
    return y;
  };
  auto rope = [&](std::vector<double>* v, size_t heads, size_t pos) {
    for (size_t h = 0; h < heads; ++h) {
      for (size_t i = 0; i < hd / 2; ++i) {
        const double freq = 1.0 / std::pow(double(c.theta), double(2 * i) / double(hd));
        const double a = double(pos) * freq;
        const size_t i0 = h * hd + (c.neox ? i : 2 * i);
        const size_t i1 = h * hd + (c.neox ? i + hd / 2 : 2 * i + 1);
        const double x0 = (*v)[i0], x1 = (*v)[i1];
        (*v)[i0] = x0 * std::cos(a) - x1 * std::sin(a);
        (*v)[i1] = x0 * std::sin(a) + x1 * std::cos(a);
      }
    }
  };
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    std::vector<double> x(dim);
    for (size_t d = 0; d < dim; ++d) x[d] = m.emb[size_t(tokens[pos]) * dim + d];
    for (uint32_t l = 0; l < c.layers; ++l) {
      const TinyLayer& L = m.layers[l];
      auto xb = rmsnorm(x, L.attn_norm);
      auto q = matvec(L.wq, xb, H * hd), k = matvec(L.wk, xb, KH * hd),
           v = matvec(L.wv, xb, KH * hd);
      if (!L.bq.empty()) {
        for (size_t i = 0; i < q.size(); ++i) q[i] += L.bq[i];
        for (size_t i = 0; i < k.size(); ++i) k[i] += L.bk[i], v[i] += L.bv[i];
      }
      rope(&q, H, pos);
      rope(&k, KH, pos);
      K[l].push_back(k);
      Vc[l].push_back(v);
      std::vector<double> att(H * hd, 0.0);
      for (size_t h = 0; h < H; ++h) {
        const size_t kh = h / (H / KH);
        std::vector<double> s(pos + 1);
        double mx = -1e300;
        for (size_t t = 0; t <= pos; ++t) {
          double d = 0;
          for (size_t i = 0; i < hd; ++i) d += q[h * hd + i] * K[l][t][kh * hd + i];
          s[t] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (size_t t = 0; t <= pos; ++t) {
          for (size_t i = 0; i < hd; ++i) att[h * hd + i] += s[t] / sum * Vc[l][t][kh * hd + i];
        }
      }
      auto o = matvec(L.wo, att, dim);
      for (size_t d = 0; d < dim; ++d) x[d] += o[d];
      xb = rmsnorm(x, L.ffn_norm);
      auto g = matvec(L.w1, xb, c.hidden), u = matvec(L.w3, xb, c.hidden);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      auto f = matvec(L.w2, g, dim);
      for (size_t d = 0; d < dim; ++d) x[d] += f[d];
    }
    auto xf = rmsnorm(x, m.final_norm);
    auto lg = matvec(c.tied ? m.emb : m.out, xf, V);
    logits.insert(logits.end(), lg.begin(), lg.end());
  }
  return logits;
}

/// max |a - b| / max |b|.
template <typename A, typename B>
double RelativeError(const std::vector<A>& a, const std::vector<B>& b) {
  double md = 0, mx = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    md = std::max(md, std::fabs(double(a[i]) - double(b[i])));
    mx = std::max(mx, std::fabs(double(b[i])));
  }
  return a.size() == b.size() && mx > 0 ? md / mx : 1e300;
}

/// A scratch directory for files a test writes.
inline std::string ScratchDir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("kvwire_model_test_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::create_directories(dir);
  return dir.string();
}

/// Test data that is not part of the repository: the stories260K model
/// (models/stories260K/{stories260K.bin,tok512.bin}) and its text
/// (text/TinyStories-valid-sample.txt). Found in the folder named by the environment variable
/// KVWIRE_TEST_DATA; without it, in the folder `shared` next to the repository root, when that
/// exists. "" when the model is not there (tests then skip with kTestDataMissing).
inline std::string TestDataDir() {
  std::filesystem::path dir;
  if (const char* env = std::getenv("KVWIRE_TEST_DATA"); env != nullptr && *env != '\0') {
    dir = env;
  } else {
    dir = std::filesystem::path(KVWIRE_SOURCE_DIR).parent_path() / "shared";
  }
  return std::filesystem::exists(dir / "models" / "stories260K" / "stories260K.bin")
             ? dir.string()
             : std::string();
}

/// The skip message of tests that need TestDataDir().
inline constexpr const char* kTestDataMissing =
    "stories260K test data not found: set KVWIRE_TEST_DATA to the folder that holds "
    "models/stories260K/ and text/TinyStories-valid-sample.txt";

}  // namespace kvwire::testing
