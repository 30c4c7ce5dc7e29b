#include "transport/level_chooser.h"

#include <gtest/gtest.h>

namespace kvwire::transport {
namespace {

// fp16, q8_0-ish, q4_0-ish, 2-bit: most accurate first, KL growing as bits drop.
std::vector<LevelInfo> Ladder() { return {{16, 0}, {8.5, 0.0005}, {4.5, 0.01}, {2.0, 0.08}}; }

LevelChoiceInput Base() {
  LevelChoiceInput in;
  in.levels = Ladder();
  in.remaining_elements = 1'000'000;  // fp16: 2 MB, 4.5 b/e: 0.56 MB
  return in;
}

TEST(LevelChooser, NoDeadlineNoBudgetIsMostAccurate) { EXPECT_EQ(ChooseLevel(Base()).level, 0u); }

TEST(LevelChooser, NoDeadlineWithBudgetIsCheapestWithinBudget) {
  auto in = Base();
  in.max_kl = 0.02;
  EXPECT_EQ(ChooseLevel(in).level, 2u);
  in.max_kl = 0.1;
  EXPECT_EQ(ChooseLevel(in).level, 3u);
}

TEST(LevelChooser, TightDeadlineFewerBitsLooseDeadlineMore) {
  auto in = Base();
  in.max_kl = 0.1;
  in.goodput_bytes_per_s =
      100e6;  // fp16 needs 20 ms, 8.5 b/e 10.6 ms, 4.5 b/e 5.6 ms, 2 b/e 2.5 ms
  in.remaining_ms = 100;
  EXPECT_EQ(ChooseLevel(in).level, 0u);
  in.remaining_ms = 10;
  EXPECT_EQ(ChooseLevel(in).level, 2u);
  in.remaining_ms = 4;
  EXPECT_EQ(ChooseLevel(in).level, 3u);
  in.remaining_ms = 1;  // nothing fits: cheapest allowed, and says so
  auto c = ChooseLevel(in);
  EXPECT_EQ(c.level, 3u);
  EXPECT_NE(c.reason.find("at risk"), std::string::npos);
}

TEST(LevelChooser, AccuracyBudgetIsNeverBrokenForTheDeadline) {
  auto in = Base();
  in.max_kl = 0.001;
  in.goodput_bytes_per_s = 100e6;
  in.remaining_ms = 1;
  EXPECT_EQ(ChooseLevel(in).level, 1u);
  in.min_bits = 10;
  EXPECT_EQ(ChooseLevel(in).level, 0u);
}

TEST(LevelChooser, InflightBytesCountAgainstTheDeadline) {
  auto in = Base();
  in.goodput_bytes_per_s = 100e6;
  in.remaining_ms = 30;
  EXPECT_EQ(ChooseLevel(in).level, 0u);
  in.inflight_bytes = 2'000'000;  // 20 ms already queued
  EXPECT_GT(ChooseLevel(in).level, 0u);
}

TEST(LevelChooser, UnmeasuredGoodputStartsCheap) {
  auto in = Base();
  in.remaining_ms = 1000;
  EXPECT_EQ(ChooseLevel(in).level, 3u);
}

TEST(LevelChooser, UnknownKlIsNotAllowedUnderABudget) {
  auto in = Base();
  in.levels[3].kl = -1;
  in.max_kl = 1;
  EXPECT_EQ(ChooseLevel(in).level, 2u);
}

}  // namespace
}  // namespace kvwire::transport
