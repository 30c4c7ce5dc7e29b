// Host-side KV tensors in every layout the kernels read and write (contiguous or paged, f32 /
// f16 / bf16), inputs with the awkward cases of each codec, and the CPU codec as the oracle.
// Used by the reference tests (no GPU) and the GPU tests alike.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "kernels/int8.cuh"
#include "kernels/kivi.cuh"
#include "kernels/q4_0.cuh"
#include "kernels/q8_0.cuh"
#include "kvwire/codec.h"

namespace kvwire::cuda_test {

inline constexpr uint8_t kSentinel = 0xa5;  // fills memory a decoder must not touch

/// One (layer, K|V) tensor in host memory. Paged tensors get spare blocks and a shuffled table,
/// so a kernel that ignores the table, or writes outside it, shows.
struct HostKv {
  DType dtype = DType::kF16;
  uint32_t tokens = 0, kv_heads = 0, head_dim = 0, block_size = 0, num_blocks = 0;
  std::vector<uint8_t> data;
  std::vector<int32_t> table;

  static HostKv Make(DType dtype, uint32_t tokens, uint32_t kv_heads, uint32_t head_dim,
                     uint32_t block_size, uint64_t seed) {
    HostKv x;
    x.dtype = dtype;
    x.tokens = tokens;
    x.kv_heads = kv_heads;
    x.head_dim = head_dim;
    x.block_size = block_size;
    uint64_t rows = tokens;
    if (block_size > 0) {
      const uint32_t used = (tokens + block_size - 1) / block_size;
      x.num_blocks = used + 3;
      std::vector<int32_t> ids(x.num_blocks);
      std::iota(ids.begin(), ids.end(), 0);
      std::shuffle(ids.begin(), ids.end(), std::mt19937_64(seed));
      x.table.assign(ids.begin(), ids.begin() + used);
      rows = uint64_t{x.num_blocks} * block_size;
    }
    x.data.assign(rows * kv_heads * head_dim * DTypeSize(dtype), kSentinel);
    return x;
  }

  uint32_t row_elems() const { return kv_heads * head_dim; }
  kern::KvTensor view() {
    kern::KvTensor v;
    v.data = data.data();
    v.block_table = block_size ? table.data() : nullptr;
    v.tokens = tokens;
    v.kv_heads = kv_heads;
    v.head_dim = head_dim;
    v.block_size = block_size;
    v.num_blocks = num_blocks;
    v.type = static_cast<kern::ElemType>(dtype);
    return v;
  }
  uint64_t Offset(uint32_t t, uint32_t i) const {
    const uint64_t row =
        block_size ? uint64_t(table[t / block_size]) * block_size + t % block_size : t;
    return row * row_elems() + i;
  }
  /// Stores v rounded to the dtype (as KvView::WriteF32).
  void Set(uint32_t t, uint32_t i, float v) {
    uint8_t* p = data.data() + Offset(t, i) * DTypeSize(dtype);
    if (dtype == DType::kF32) {
      std::memcpy(p, &v, 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? FloatToHalf(v) : FloatToBf16(v);
      std::memcpy(p, &h, 2);
    }
  }
  float Get(uint32_t t, uint32_t i) const {
    const uint8_t* p = data.data() + Offset(t, i) * DTypeSize(dtype);
    if (dtype == DType::kF32) {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    uint16_t h;
    std::memcpy(&h, p, 2);
    return dtype == DType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
  }
  /// Stored bits of element (t, i), for exact comparisons (+0 vs -0, NaN payloads).
  uint32_t Bits(uint32_t t, uint32_t i) const {
    uint32_t b = 0;
    std::memcpy(&b, data.data() + Offset(t, i) * DTypeSize(dtype), DTypeSize(dtype));
    return b;
  }
  /// Float32 copy of tokens [begin, begin + n), [n, kv_heads, head_dim] (what the CPU codec reads).
  std::vector<float> ReadF32(uint32_t begin, uint32_t n) const {
    std::vector<float> out(uint64_t{n} * row_elems());
    for (uint32_t t = 0; t < n; ++t)
      for (uint32_t i = 0; i < row_elems(); ++i)
        out[uint64_t{t} * row_elems() + i] = Get(begin + t, i);
    return out;
  }
  /// Bytes of every block the table does not name (must stay kSentinel after a decode).
  bool SpareBlocksUntouched() const {
    if (block_size == 0) return true;
    const uint64_t block_bytes = uint64_t{block_size} * row_elems() * DTypeSize(dtype);
    for (uint32_t b = 0; b < num_blocks; ++b) {
      if (std::find(table.begin(), table.end(), int32_t(b)) != table.end()) continue;
      for (uint64_t j = 0; j < block_bytes; ++j)
        if (data[b * block_bytes + j] != kSentinel) return false;
    }
    return true;
  }
};

/// Values that exercise each codec's corner cases, row by row: Gaussian rows, all-zero rows,
/// constant rows, signed zeros, equal-magnitude ties (q4_0's "first" rule), tiny (subnormal
/// fp16 scales) and huge values (fp16 saturation; beyond 65504 only for f32 storage).
inline void FillAwkward(HostKv* x, uint32_t begin, uint32_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  // Beyond the fp16 range where the storage holds it (f32, bf16); just below it for f16.
  const float huge = x->dtype == DType::kF16 ? 6.5e4f : 3.0e5f;
  for (uint32_t t = begin; t < begin + n; ++t) {
    for (uint32_t h = 0; h < x->kv_heads; ++h) {
      const uint32_t mode = (t * 7 + h * 3) % 11;
      for (uint32_t d = 0; d < x->head_dim; ++d) {
        float v = n01(rng);
        switch (mode) {
          case 0:
            v = 0.0f;
            break;
          case 1:
            v = 1.25f;
            break;  // constant row
          case 2:
            v = (d % 2) ? -0.0f : 0.0f;
            break;  // signed zeros
          case 3:
            v = d % 8 == 3 ? -3.0f : (d % 8 == 6 ? 3.0f : 0.5f * v);
            break;  // |max| ties
          case 4:
            v *= 1e-6f;
            break;  // subnormal-scale range
          case 5:
            v = std::clamp(v, -1.0f, 1.0f) * huge;
            break;  // saturation
          case 6:
            v = 20.0f * v + 10.0f;
            break;  // offset outliers
          case 7:
            v = std::round(v * 4.0f) / 4.0f;
            break;  // exact .5 ties after scaling
          default:
            break;
        }
        x->Set(t, h * x->head_dim + d, v);
      }
    }
  }
}

inline ChunkDesc Desc(KvKind kind, uint32_t token_begin, uint32_t tokens, uint32_t kv_heads,
                      uint32_t head_dim, uint32_t seq_tokens) {
  ChunkDesc d;
  d.kind = kind;
  d.token_begin = token_begin;
  d.tokens = tokens;
  d.kv_heads = kv_heads;
  d.head_dim = head_dim;
  d.seq_tokens = seq_tokens;
  return d;
}

/// Which reference a codec spec maps to, and its parameters for a chunk.
struct RefCodec {
  std::unique_ptr<Codec> cpu;
  uint16_t id = 0;
  uint32_t bits = 0, group = 0, window = 0;

  static RefCodec Make(const std::string& spec) {
    RefCodec r;
    auto made = CreateCodec(spec);
    EXPECT_TRUE(made.ok()) << spec << ": " << made.status().ToString();
    if (!made.ok()) return r;
    r.cpu = std::move(made).value();
    r.id = r.cpu->Id();
    if (spec.rfind("kivi", 0) == 0) {
      std::string name;
      CodecOptions opts;
      EXPECT_TRUE(ParseCodecSpec(r.cpu->Spec(), &name, &opts).ok());
      r.bits = static_cast<uint32_t>(std::stoul(name.substr(4)));
      r.group = static_cast<uint32_t>(opts.GetInt("g", 32, 1, 1 << 20).value());
      r.window = static_cast<uint32_t>(opts.GetInt("r", 32, 0, 1 << 24).value());
    }
    return r;
  }

  kern::KiviParams Kivi(const ChunkDesc& d) const {
    kern::KiviParams k;
    k.bits = bits;
    k.group = group;
    k.key = d.kind == KvKind::kKey;
    k.quant_tokens = kern::KiviQuantTokens(d.seq_tokens, d.token_begin, d.tokens, group, window);
    k.lead_tokens = kern::KiviLeadTokens(d.token_begin, d.tokens, group);
    return k;
  }

  uint64_t PayloadBytes(const ChunkDesc& d) const {
    switch (id) {
      case 2:
        return kern::Int8PayloadBytes(d.tokens, d.kv_heads, d.head_dim);
      case 3:
        return kern::Q8_0PayloadBytes(d.tokens, d.kv_heads, d.head_dim);
      case 4:
        return kern::Q4_0PayloadBytes(d.tokens, d.kv_heads, d.head_dim);
      default:
        return kern::KiviLayoutOf(d.tokens, d.kv_heads * d.head_dim, Kivi(d)).bytes;
    }
  }

  std::vector<uint8_t> Encode(const ChunkDesc& d, const kern::KvTensor& src,
                              uint32_t* errors) const {
    std::vector<uint8_t> out(PayloadBytes(d), 0xee);
    const kern::TokenRange range{d.token_begin, d.tokens};
    switch (id) {
      case 2:
        kern::Int8Encode_ref(src, range, out.data(), errors);
        break;
      case 3:
        kern::Q8_0Encode_ref(src, range, out.data(), errors);
        break;
      case 4:
        kern::Q4_0Encode_ref(src, range, out.data(), errors);
        break;
      default:
        kern::KiviEncode_ref(src, range, Kivi(d), out.data(), errors);
        break;
    }
    return out;
  }

  void Decode(const ChunkDesc& d, const std::vector<uint8_t>& payload, const kern::KvTensor& dst,
              uint32_t* errors) const {
    const kern::TokenRange range{d.token_begin, d.tokens};
    switch (id) {
      case 2:
        kern::Int8Decode_ref(payload.data(), dst, range, errors);
        break;
      case 3:
        kern::Q8_0Decode_ref(payload.data(), dst, range, errors);
        break;
      case 4:
        kern::Q4_0Decode_ref(payload.data(), dst, range, errors);
        break;
      default:
        kern::KiviDecode_ref(payload.data(), dst, range, Kivi(d), errors);
        break;
    }
  }
};

/// A chunk layout to test: spec, K|V, shape, the chunk inside its sequence.
struct Case {
  std::string spec;
  KvKind kind;
  uint32_t kv_heads, head_dim, seq_tokens, token_begin, tokens;
};

inline std::string Name(const Case& c, DType dt, uint32_t block_size) {
  return c.spec + (c.kind == KvKind::kKey ? " K " : " V ") + std::string(DTypeName(dt)) + " [" +
         std::to_string(c.token_begin) + "+" + std::to_string(c.tokens) + " of " +
         std::to_string(c.seq_tokens) + ", " + std::to_string(c.kv_heads) + "x" +
         std::to_string(c.head_dim) + "]" +
         (block_size ? " paged/" + std::to_string(block_size) : " contiguous");
}

/// Every codec x kind over shapes that hit the edges: head_dim not a multiple of 8 (kivi bit
/// stream crossing rows), odd bit-widths, chunks inside a sequence, window-only chunks, chunks
/// that start mid-group.
inline std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    for (const char* spec : {"int8", "q8_0", "q4_0", "kivi2", "kivi4"}) {
      cases.push_back({spec, kind, 2, 64, 100, 0, 100});
      cases.push_back({spec, kind, 3, 32, 37, 0, 37});
    }
    cases.push_back({"int8", kind, 3, 12, 9, 2, 5});
    cases.push_back({"kivi2", kind, 2, 64, 160, 64, 64});        // a middle chunk, all quantized
    cases.push_back({"kivi2", kind, 2, 64, 160, 128, 32});       // a window-only chunk
    cases.push_back({"kivi4", kind, 1, 64, 200, 32, 160});       // quantized + window
    cases.push_back({"kivi3:g=4,r=3", kind, 3, 12, 27, 0, 27});  // HD = 36: bits cross rows
    cases.push_back({"kivi5:g=8,r=0", kind, 1, 40, 24, 8, 16});
    cases.push_back({"kivi8:g=4,r=5", kind, 2, 12, 21, 0, 21});
    cases.push_back({"kivi7:g=16,r=1", kind, 2, 32, 50, 0, 50});
    // Chunks that start mid-group (a migration tail): an fp16 lead, then groups and window.
    cases.push_back({"kivi2", kind, 2, 64, 200, 45, 115});  // lead 19, 96 quantized, window
    cases.push_back({"kivi4", kind, 1, 64, 160, 70, 20});   // all lead
    cases.push_back({"kivi3:g=4,r=3", kind, 3, 12, 27, 2, 25});
  }
  return cases;
}

}  // namespace kvwire::cuda_test
