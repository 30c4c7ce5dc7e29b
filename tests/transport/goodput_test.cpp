#include "transport/goodput.h"

#include <gtest/gtest.h>

namespace kvwire::transport {
namespace {

using E = GoodputEstimator;

TEST(Goodput, NothingForTheChooserWhileProbing) {
  E e;
  EXPECT_EQ(e.for_chooser(), 0);
  e.AddSample(1e6, 0.01);  // 100 MB/s
  EXPECT_FALSE(e.ready());
  EXPECT_EQ(e.for_chooser(), 0);
  EXPECT_DOUBLE_EQ(e.estimate(), 100e6);
}

TEST(Goodput, ASteadyLinkEndsTheProbeAfterTheMinimumOfSamples) {
  E e;
  for (int i = 0; i < 1 + E::kFlatSamples; ++i) {
    EXPECT_FALSE(e.ready()) << i;
    e.AddSample(125e3, 1e-3);  // 125 MB/s, flat
  }
  // The first sample sets the best; kFlatSamples flat ones after it end the probe.
  EXPECT_EQ(e.samples(), 1 + E::kFlatSamples);
  EXPECT_TRUE(e.ready());
  EXPECT_DOUBLE_EQ(e.for_chooser(), 125e6);
}

// A connection that starts slow (first round trips, a peer still warming up) is measured at the
// rate it reaches, not at its start, and not at an average dragged down by the start.
TEST(Goodput, TheProbeLastsWhileTheRateGrowsAndKeepsItsBest) {
  E e;
  const double mb_per_s[] = {120, 70, 170, 75, 660, 750, 600, 700};
  int i = 0;
  for (; i < 8 && !e.ready(); ++i) e.AddSample(mb_per_s[i] * 1e3, 1e-3);
  // 170 beats 120 by more than 25 %, 660 beats 170: the probe ends three flat samples after 660.
  EXPECT_EQ(i, 8);
  EXPECT_TRUE(e.ready());
  EXPECT_DOUBLE_EQ(e.for_chooser(), 750e6);
}

TEST(Goodput, AProbeThatKeepsGrowingStillEnds) {
  E e;
  double rate = 1e6;
  for (int i = 0; i < E::kMaxProbeSamples; ++i, rate *= 2) {
    EXPECT_FALSE(e.ready());
    e.AddSample(rate, 1.0);
  }
  EXPECT_TRUE(e.ready());
}

TEST(Goodput, AfterTheProbeASlowerLinkIsFollowed) {
  E e;
  for (int i = 0; i < 4; ++i) e.AddSample(500e3, 1e-3);  // 500 MB/s
  ASSERT_TRUE(e.ready());
  for (int i = 0; i < 20; ++i) e.AddSample(100e3, 1e-3);  // the link drops to 100 MB/s
  EXPECT_NEAR(e.for_chooser(), 100e6, 1e6);
}

// A dip of fewer samples than the window leaves the estimate at the link's rate; the window
// then follows a link that stays slower.
TEST(Goodput, AfterTheProbeADipIsIgnoredAndASlowdownFollowedByTheWindow) {
  E e;
  for (int i = 0; i < 4; ++i) e.AddSample(500e3, 1e-3);  // 500 MB/s
  ASSERT_TRUE(e.ready());
  for (int i = 0; i < E::kWindow - 1; ++i) {
    e.AddSample(100e3, 1e-3);
    EXPECT_DOUBLE_EQ(e.for_chooser(), 500e6) << "after " << i + 1 << " low samples";
  }
  e.AddSample(100e3, 1e-3);
  EXPECT_DOUBLE_EQ(e.for_chooser(), 100e6);
  e.AddSample(300e3, 1e-3);  // faster again: at once
  EXPECT_DOUBLE_EQ(e.for_chooser(), 300e6);
}

TEST(Goodput, EmptyOrTimelessSamplesAreIgnored) {
  E e;
  e.AddSample(0, 1);
  e.AddSample(1e6, 0);
  e.AddSample(1e6, -1);
  EXPECT_EQ(e.samples(), 0);
  EXPECT_EQ(e.estimate(), 0);
}

}  // namespace
}  // namespace kvwire::transport
