// Regression: rank-r on a rank-deficient chunk (fewer distinct directions than r) once produced
// NaN basis vectors (0/0 in the eigen-solver's shift), which Encode wrote and Decode refused.
// Found by fuzz_stream_reader; input from tests/fuzz/findings/stream-rank4-nonfinite-1.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kvwire/codec.h"

namespace kvwire {
namespace {

TEST(RankDegenerate, RankDeficientChunkRoundTripsFinite) {
  auto codec = CreateCodec("rank-4");
  ASSERT_TRUE(codec.ok()) << codec.status().ToString();
  ChunkDesc desc;
  desc.tokens = 4;
  desc.kv_heads = 1;
  desc.head_dim = 64;
  desc.seq_tokens = 4;
  std::vector<float> in(desc.elements());
  for (size_t i = 0; i < in.size(); ++i) in[i] = 2.0f * (1 + (512 + i) % 3);
  for (CodecImpl impl : {CodecImpl::kReference, CodecImpl::kOptimized}) {
    std::vector<uint8_t> payload;
    ASSERT_TRUE((*codec)->Encode(desc, in.data(), &payload, impl).ok());
    std::vector<float> out(in.size());
    Status s = (*codec)->Decode(desc, payload, out.data(), impl);
    ASSERT_TRUE(s.ok()) << s.ToString();
    // 4 tokens span at most 3 directions around their mean: rank 4 reconstructs them to fp16
    // precision.
    for (size_t i = 0; i < in.size(); ++i) {
      ASSERT_TRUE(std::isfinite(out[i]));
      EXPECT_NEAR(out[i], in[i], 0.02f) << "element " << i;
    }
  }
}

}  // namespace
}  // namespace kvwire
