// The forward pass on synthetic models: agreement with a naive double-precision transcription
// of the LLaMA equations, batched prefill == token-by-token, continuation on an injected
// uncompressed cache == one pass, thread-count independence, queries capture, metrics.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "kvwire/model.h"
#include "model/test_models.h"

namespace kvwire {
namespace {

using testing::MakeTinyModel;
using testing::NaiveForward;
using testing::RelativeError;
using testing::TinyConfig;
using testing::WriteLlama2c;

std::unique_ptr<Model> LoadTiny(const TinyConfig& c, uint32_t seed, int threads = 2) {
  const auto bytes = WriteLlama2c(MakeTinyModel(c, seed));
  ModelOptions o;
  o.threads = threads;
  auto m = Model::LoadFromBytes(bytes, "tiny.bin", o);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::move(m).value() : nullptr;
}

std::vector<int32_t> Tokens(size_t n, uint32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

std::vector<float> AllLogits(const Model& m, const std::vector<int32_t>& tokens) {
  auto seq = m.NewSequence(static_cast<uint32_t>(tokens.size()));
  EXPECT_TRUE(seq.ok());
  std::vector<float> logits;
  EXPECT_TRUE(m.Forward(&*seq, tokens, {}, &logits).ok());
  return logits;
}

TEST(ForwardTest, MatchesNaiveReferenceTiedAndUntied) {
  for (bool tied : {true, false}) {
    TinyConfig c;
    c.tied = tied;
    c.hidden = 40;  // not a multiple of the 16-column strip: exercises the scalar tail
    const auto model = MakeTinyModel(c, 11);
    auto m = Model::LoadFromBytes(WriteLlama2c(model), "tiny.bin");
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ((*m)->config().tied_output, tied);
    EXPECT_EQ((*m)->config().head_dim, 8u);
    const auto tokens = Tokens(37, c.vocab, 3);
    const auto got = AllLogits(**m, tokens);
    EXPECT_LT(RelativeError(got, NaiveForward(model, tokens)), 1e-5) << "tied=" << tied;
  }
}

TEST(ForwardTest, HeadDim64GqaMatchesNaive) {
  TinyConfig c;
  c.dim = 128;
  c.heads = 2;
  c.kv_heads = 1;
  c.hidden = 96;
  c.vocab = 64;
  const auto model = MakeTinyModel(c, 5);
  auto m = Model::LoadFromBytes(WriteLlama2c(model), "tiny.bin");
  ASSERT_TRUE(m.ok());
  const auto tokens = Tokens(50, c.vocab, 9);
  EXPECT_LT(RelativeError(AllLogits(**m, tokens), NaiveForward(model, tokens)), 1e-5);
}

TEST(ForwardTest, PrefillKvEqualsTokenByTokenKv) {
  TinyConfig c;
  c.seq_len = 128;
  auto m = LoadTiny(c, 1);
  ASSERT_TRUE(m);
  const auto tokens = Tokens(70, c.vocab, 2);
  auto batch = m->Prefill(tokens, DType::kF32, /*with_queries=*/true);
  ASSERT_TRUE(batch.ok()) << batch.status().ToString();
  auto seq = m->NewSequence(70, true);
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits;
  for (int32_t t : tokens) {
    ASSERT_TRUE(
        m->Forward(&*seq, std::span<const int32_t>(&t, 1), {ForwardOptions::Logits::kLast}, &logits)
            .ok());
  }
  auto step = seq->Export(0, 70, DType::kF32, true, m->kv_metadata());
  ASSERT_TRUE(step.ok());
  EXPECT_EQ(batch->shape(), step->shape());
  EXPECT_EQ(batch->shape().kv_heads, c.kv_heads);
  EXPECT_EQ(batch->q_heads(), c.heads);
  for (uint32_t l = 0; l < c.layers; ++l) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      auto a = batch->tensor(l, kind), b = step->tensor(l, kind);
      // Each value is computed with the same operations in the same order either way.
      EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << "layer " << l;
    }
    auto qa = batch->queries(l), qb = step->queries(l);
    EXPECT_TRUE(std::equal(qa.begin(), qa.end(), qb.begin(), qb.end()));
  }
  EXPECT_EQ(batch->metadata().rope_style, "interleaved");
  EXPECT_EQ(batch->metadata().rope_theta, 10000.0);
  EXPECT_EQ(batch->metadata().model_fingerprint, m->fingerprint());
  EXPECT_EQ(m->fingerprint().rfind("sha256:", 0), 0u);
}

TEST(ForwardTest, ContinuationOnUncompressedCacheEqualsSinglePass) {
  TinyConfig c;
  c.seq_len = 128;
  auto m = LoadTiny(c, 4);
  ASSERT_TRUE(m);
  const size_t P = 45, C = 30;
  const auto tokens = Tokens(P + C, c.vocab, 8);
  const auto full = AllLogits(*m, tokens);
  auto prefix = m->Prefill(std::span<const int32_t>(tokens).first(P));
  ASSERT_TRUE(prefix.ok());
  auto cont = m->Continue(prefix->view(), std::span<const int32_t>(tokens).subspan(P));
  ASSERT_TRUE(cont.ok()) << cont.status().ToString();
  const std::vector<float> tail(full.begin() + P * c.vocab, full.end());
  EXPECT_EQ(*cont, tail);  // bit-identical

  // An fp16 copy of the cache is close but not identical.
  auto half = m->Prefill(std::span<const int32_t>(tokens).first(P), DType::kF16);
  ASSERT_TRUE(half.ok());
  auto cont16 = m->Continue(half->view(), std::span<const int32_t>(tokens).subspan(P));
  ASSERT_TRUE(cont16.ok());
  EXPECT_LT(RelativeError(*cont16, tail), 1e-2);

  // Positions: the same cache continued at another start position is a different model input.
  auto shifted = m->Continue(prefix->view(), std::span<const int32_t>(tokens).subspan(P), 5);
  ASSERT_TRUE(shifted.ok());
  EXPECT_NE(*shifted, tail);
}

TEST(ForwardTest, ResultsDoNotDependOnThreadsOrChunking) {
  TinyConfig c;
  c.seq_len = 2048;
  c.hidden = 72;
  const auto tokens = Tokens(700, c.vocab, 12);  // more than one internal 512-token batch
  auto m1 = LoadTiny(c, 21, 1);
  auto m3 = LoadTiny(c, 21, 3);
  ASSERT_TRUE(m1 && m3);
  EXPECT_EQ(m3->threads(), 3);
  const auto a = AllLogits(*m1, tokens);
  EXPECT_EQ(a, AllLogits(*m3, tokens));
  // Two calls (300 + 400) give the same logits as one.
  auto seq = m3->NewSequence(700);
  ASSERT_TRUE(seq.ok());
  std::vector<float> l1, l2;
  ASSERT_TRUE(m3->Forward(&*seq, std::span<const int32_t>(tokens).first(300), {}, &l1).ok());
  ASSERT_TRUE(m3->Forward(&*seq, std::span<const int32_t>(tokens).subspan(300), {}, &l2).ok());
  l1.insert(l1.end(), l2.begin(), l2.end());
  EXPECT_EQ(a, l1);
}

TEST(ForwardTest, LayerHookRunsOncePerLayerWhenItsKvIsFinal) {
  TinyConfig c;
  c.seq_len = 2048;
  c.layers = 3;
  const auto tokens = Tokens(600, c.vocab, 5);  // two internal batches: it fires in the last
  auto m = LoadTiny(c, 8);
  ASSERT_TRUE(m);
  auto seq = m->NewSequence(600);
  ASSERT_TRUE(seq.ok());
  const size_t n = 600 * size_t{c.kv_heads} * c.head_dim();
  std::vector<uint32_t> calls;
  std::vector<std::vector<float>> k_then, v_then;
  ForwardOptions fo(ForwardOptions::Logits::kNone);
  fo.on_layer_done = [&](uint32_t layer) {
    calls.push_back(layer);
    auto k = seq->kv(layer, KvKind::kKey), v = seq->kv(layer, KvKind::kValue);
    k_then.emplace_back(k.begin(), k.begin() + n);
    v_then.emplace_back(v.begin(), v.begin() + n);
  };
  ASSERT_TRUE(m->Forward(&*seq, tokens, fo, nullptr).ok());
  EXPECT_EQ(calls, (std::vector<uint32_t>{0, 1, 2}));
  for (uint32_t l = 0; l < calls.size(); ++l) {
    auto k = seq->kv(l, KvKind::kKey), v = seq->kv(l, KvKind::kValue);
    EXPECT_TRUE(std::equal(k_then[l].begin(), k_then[l].end(), k.begin())) << "K of layer " << l;
    EXPECT_TRUE(std::equal(v_then[l].begin(), v_then[l].end(), v.begin())) << "V of layer " << l;
  }
}

TEST(ForwardTest, GenerateIsGreedy) {
  TinyConfig c;
  auto m = LoadTiny(c, 30);
  ASSERT_TRUE(m);
  const std::vector<int32_t> prompt = {3, 14, 15};
  auto gen = m->Generate(prompt, 10);
  ASSERT_TRUE(gen.ok());
  ASSERT_EQ(gen->size(), 10u);  // no tokenizer -> no EOS
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), gen->begin(), gen->end());
  const auto logits = AllLogits(*m, all);
  for (size_t i = 0; i < gen->size(); ++i) {
    const float* row = logits.data() + (prompt.size() - 1 + i) * c.vocab;
    EXPECT_EQ((*gen)[i], std::max_element(row, row + c.vocab) - row);
  }
}

TEST(ForwardTest, InvalidCallsAreErrors) {
  TinyConfig c;
  auto m = LoadTiny(c, 2);
  ASSERT_TRUE(m);
  auto seq = m->NewSequence(4);
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits;
  const std::vector<int32_t> bad = {0, static_cast<int32_t>(c.vocab)};
  EXPECT_EQ(m->Forward(&*seq, bad, {}, &logits).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(seq->tokens(), 0u);
  const std::vector<int32_t> five = {1, 2, 3, 4, 5};
  EXPECT_EQ(m->Forward(&*seq, five, {}, &logits).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(m->Forward(&*seq, {}, {}, &logits).ok());
  EXPECT_FALSE(m->Forward(nullptr, five, {}, &logits).ok());
  EXPECT_FALSE(m->NewSequence(0).ok());
  // A cache of the wrong shape is refused.
  auto wrong = KvCache::Create({c.layers, 3, c.kv_heads + 1, c.head_dim()}, DType::kF16);
  ASSERT_TRUE(wrong.ok());
  EXPECT_EQ(m->SequenceFromKv(wrong->view(), 4).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(seq->Export(0, 1, DType::kF32, false, {}).ok());  // nothing cached yet
}

TEST(MetricsTest, LogitStats) {
  const uint32_t V = 4;
  const std::vector<float> ref = {1, 2, 3, 4, 0, 0, 0, 5};
  const std::vector<int32_t> targets = {3, 0};
  LogitStats self;
  ASSERT_TRUE(AccumulateLogitStats(ref, ref, targets, V, &self).ok());
  EXPECT_EQ(self.positions, 2u);
  EXPECT_EQ(self.mean_kl(), 0.0);
  EXPECT_EQ(self.top1(), 1.0);
  const double lse0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + std::exp(4.0));
  const double lse1 = std::log(3.0 + std::exp(5.0));
  EXPECT_NEAR(self.nll_sum, (lse0 - 4) + (lse1 - 0), 1e-9);
  EXPECT_NEAR(self.ppl(), std::exp(self.nll_sum / 2), 1e-12);

  const std::vector<float> coded = {1, 2, 4, 3, 0, 0, 0, 5};  // row 0 swaps the top two
  LogitStats s;
  ASSERT_TRUE(AccumulateLogitStats(coded, ref, targets, V, &s).ok());
  EXPECT_EQ(s.top1_agree, 1u);
  EXPECT_GT(s.mean_kl(), 0.0);
  EXPECT_FALSE(AccumulateLogitStats(coded, ref, std::vector<int32_t>{9, 0}, V, &s).ok());
  EXPECT_FALSE(AccumulateLogitStats(coded, ref, std::vector<int32_t>{0}, V, &s).ok());
}

TEST(MetricsTest, SampleWindowsDeterministicAndDisjoint) {
  auto a = SampleWindows(10000, 513, 16, 7);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, *SampleWindows(10000, 513, 16, 7));
  EXPECT_NE(*a, *SampleWindows(10000, 513, 16, 8));
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_LE((*a)[i] + 513, 10000u);
    if (i > 0) {
      EXPECT_GE((*a)[i], (*a)[i - 1] + 513);
    }
  }
  auto tight = SampleWindows(1000, 513, 4, 1);  // not enough text: spread, overlapping
  ASSERT_TRUE(tight.ok());
  EXPECT_EQ(tight->front(), 0u);
  EXPECT_EQ(tight->back(), 1000u - 513);
  EXPECT_EQ(SampleWindows(100, 513, 1, 1).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvwire
