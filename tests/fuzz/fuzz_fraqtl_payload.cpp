// Fuzz target of fraqtl's table-driven payload (entropy=rans, payload version 2; docs/FORMAT.md)
// on a toy profile (tests/codec/fraqtl_toy.h: 2 layers, 2 KV heads, head_dim 16).
//
// Input: byte 0 picks the codec, byte 1 the layer (bit 0) and K|V (bit 1), bytes 2-3 the chunk's
// token count (1..512), byte 4 the mode:
//  'R': round trip. The rest seeds the chunk's values (and, from its first bytes, where the
//       chunk sits in its sequence and a byte to flip). Reference and optimized encoders must
//       give the same bytes, both decoders the same values; the payload with one byte flipped
//       must decode or be refused, never crash.
//  anything else: the rest is a payload. Decoding must not crash, hang or read out of bounds;
//       if the optimized decoder accepts it, the reference decoder must accept it too and give
//       the same values.
// Built as a libFuzzer binary with KVWIRE_BUILD_FUZZ=ON; otherwise replay_main.cpp replays the
// corpus in corpus/fraqtl/ under ctest.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "codec/fraqtl_toy.h"
#include "kvwire/codec.h"

namespace kvwire {
namespace {

[[noreturn]] void Fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_fraqtl_payload: invariant violated: %s %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

struct Codecs {
  Profile profile = fraqtl_toy::ToyProfile(true);
  std::vector<std::unique_ptr<Codec>> list;
  Codecs() {
    for (const char* spec :
         {"fraqtl@0.25:entropy=rans", "fraqtl@1:entropy=rans", "fraqtl@2:window=3,sink=1,entropy=rans",
          "fraqtl@3:gain=1,entropy=rans", "fraqtl@6:protect=4,entropy=rans",
          "fraqtl@2.5:floor=1,entropy=rans", "fraqtl@1.5:prerope=0,book=gauss,entropy=rans",
          "fraqtl@2:level=2,entropy=rans"}) {
      auto c = CreateCodec(spec, &profile);
      if (!c.ok()) Fail("codec", c.status().ToString());
      list.push_back(std::move(c).value());
    }
  }
};

const Codecs& TheCodecs() {
  static const Codecs codecs;
  return codecs;
}

void RoundTrip(const Codec& codec, const ChunkDesc& d, const uint8_t* rest, size_t n) {
  uint64_t seed = 0;
  for (size_t i = 0; i < n; ++i) seed = seed * 131 + rest[i];
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0, 1);
  std::vector<float> x(d.elements());
  const double scale = std::ldexp(1.0, static_cast<int>(rng() % 24) - 12);
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t dir = i % fraqtl_toy::kDim;
    x[i] = static_cast<float>(normal(rng) * scale * std::pow(2.0, -double(dir) / 3.0));
    if (rng() % 97 == 0) x[i] = 0.0f;
  }
  std::vector<uint8_t> a, b;
  const Status sa = codec.Encode(d, x.data(), &a, CodecImpl::kReference);
  const Status sb = codec.Encode(d, x.data(), &b, CodecImpl::kOptimized);
  if (sa.ok() != sb.ok()) Fail("encoders disagree on status", codec.Spec());
  if (!sa.ok()) return;
  if (a != b) Fail("reference and optimized payloads differ", codec.Spec());
  std::vector<float> ya(x.size()), yb(x.size());
  const Status da = codec.Decode(d, a, ya.data(), CodecImpl::kReference);
  const Status db = codec.Decode(d, a, yb.data(), CodecImpl::kOptimized);
  if (!da.ok() || !db.ok()) Fail("a fresh payload does not decode", da.ToString() + db.ToString());
  if (std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)) != 0) {
    Fail("reference and optimized decoders differ", codec.Spec());
  }
  if (!a.empty()) {
    std::vector<uint8_t> c = a;
    c[rng() % c.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    (void)codec.Decode(d, c, yb.data(), CodecImpl::kOptimized);
  }
}

void DecodeOnly(const Codec& codec, const ChunkDesc& d, const uint8_t* rest, size_t n) {
  std::vector<float> ya(d.elements()), yb(d.elements());
  const std::span<const uint8_t> payload(rest, n);
  const Status so = codec.Decode(d, payload, yb.data(), CodecImpl::kOptimized);
  const Status sr = codec.Decode(d, payload, ya.data(), CodecImpl::kReference);
  if (so.ok() != sr.ok()) Fail("decoders disagree on status", so.ToString() + " / " + sr.ToString());
  if (so.ok() && std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)) != 0) {
    Fail("reference and optimized decoders differ on an accepted payload");
  }
}

}  // namespace
}  // namespace kvwire

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvwire;
  if (size < 5) return 0;
  const Codecs& codecs = TheCodecs();
  const Codec& codec = *codecs.list[data[0] % codecs.list.size()];
  ChunkDesc d = fraqtl_toy::Desc(data[1] & 1u, (data[1] & 2u) ? KvKind::kValue : KvKind::kKey,
                                 1 + ((uint32_t{data[2]} | uint32_t{data[3]} << 8) % 512));
  if (data[4] == 'R') {
    if (size > 6) {  // the chunk somewhere inside its sequence
      d.token_begin = data[5] % 64;
      d.seq_tokens = d.token_begin + d.tokens + data[6] % 64;
      d.positions_start = data[5];
    }
    RoundTrip(codec, d, data + 5, size - 5);
  } else {
    DecodeOnly(codec, d, data + 5, size - 5);
  }
  return 0;
}
