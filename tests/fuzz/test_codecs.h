// Test-only codec families for the stream tests, the fuzz target and the seed-corpus
// generator, so they do not depend on which real codecs a build has. Their ids sit in the
// range docs/FORMAT.md reserves for tests (0xFF00-0xFFFF); no real stream uses them.
//
//   test-f32[:align=N]  passthrough, little-endian float32 (32 bits/element), lossless
//   test-tiny           one byte per chunk, decodes to zeros: violates the payload floor, for
//                       the writer's refusal test
#pragma once

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "kvwire/codec.h"

namespace kvwire::testing {

inline constexpr uint16_t kTestF32Id = 0xFF01;
inline constexpr uint16_t kTestTinyId = 0xFF02;

/// test-f32 codecs made so far in this process (for tests of how often a codec is built).
inline std::atomic<uint64_t>& TestF32Made() {
  static std::atomic<uint64_t> made{0};
  return made;
}

class TestF32Codec final : public Codec {
 public:
  explicit TestF32Codec(uint32_t align) : align_(align) {}
  std::string Spec() const override {
    return align_ == 1 ? "test-f32" : "test-f32:align=" + std::to_string(align_);
  }
  uint16_t Id() const override { return kTestF32Id; }
  uint32_t TokenAlignment() const override { return align_; }

  Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                CodecImpl) const override {
    const size_t n = desc.elements();
    for (size_t i = 0; i < n; ++i) {
      KVWIRE_RETURN_ERROR_IF(!std::isfinite(in[i]), kInvalidArgument,
                             "test-f32: non-finite input at element " + std::to_string(i));
    }
    const size_t at = out->size();
    out->resize(at + n * 4);
    for (size_t i = 0; i < n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &in[i], 4);
      for (int b = 0; b < 4; ++b) (*out)[at + i * 4 + b] = static_cast<uint8_t>(bits >> (8 * b));
    }
    return Status::Ok();
  }

  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl) const override {
    const size_t n = desc.elements();
    KVWIRE_RETURN_ERROR_IF(payload.size() != n * 4, kCorrupt,
                           "test-f32: payload of " + std::to_string(payload.size()) +
                               " bytes, expected " + std::to_string(n * 4));
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* p = payload.data() + i * 4;
      const uint32_t bits =
          uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
      std::memcpy(&out[i], &bits, 4);
    }
    return Status::Ok();
  }

 private:
  uint32_t align_;
};

class TestTinyCodec final : public Codec {
 public:
  std::string Spec() const override { return "test-tiny"; }
  uint16_t Id() const override { return kTestTinyId; }
  Status Encode(const ChunkDesc&, const float*, std::vector<uint8_t>* out,
                CodecImpl) const override {
    out->push_back(0);
    return Status::Ok();
  }
  Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                CodecImpl) const override {
    KVWIRE_RETURN_ERROR_IF(payload.size() != 1, kCorrupt, "test-tiny: payload is one byte");
    std::memset(out, 0, desc.elements() * sizeof(float));
    return Status::Ok();
  }
};

/// Registers the test families once per process.
inline void RegisterTestCodecs() {
  static std::once_flag once;
  std::call_once(once, [] {
    RegisterCodecFamily(CodecFamily{
        "test-f32", "test only: float32 passthrough (32 b/e)",
        [](std::string_view name, const CodecOptions& opts,
           const Profile*) -> Result<std::unique_ptr<Codec>> {
          if (name != "test-f32") return Status(StatusCode::kNotFound, "");
          KVWIRE_ASSIGN_OR_RETURN(const int64_t align, opts.GetInt("align", 1, 1, 4096));
          for (const auto& [k, v] : opts.values) {
            KVWIRE_RETURN_ERROR_IF(k != "align", kInvalidArgument, "test-f32: unknown option " + k);
          }
          TestF32Made().fetch_add(1);
          return std::unique_ptr<Codec>(new TestF32Codec(static_cast<uint32_t>(align)));
        },
        [](std::string_view name) { return name == "test-f32"; }});
    RegisterCodecFamily(CodecFamily{"test-tiny", "test only: one byte per chunk",
                                    [](std::string_view name, const CodecOptions& opts,
                                       const Profile*) -> Result<std::unique_ptr<Codec>> {
                                      if (name != "test-tiny")
                                        return Status(StatusCode::kNotFound, "");
                                      KVWIRE_RETURN_ERROR_IF(!opts.values.empty(), kInvalidArgument,
                                                             "test-tiny: no options");
                                      return std::unique_ptr<Codec>(new TestTinyCodec());
                                    }});
  });
}

}  // namespace kvwire::testing
