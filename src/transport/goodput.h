// The sender's estimate of the link's goodput, from the acknowledgements of chunks sent at the
// level that measures the link (docs/PROTOCOL.md section 5, "Adaptive level"). A plain class
// so it can be tested on its own.
//
// A sample is the bytes acknowledged over a period. Samples only ever err low: a period can
// lose time to the peer's scheduling, to the first round trips of a connection, to acks that
// arrive in bunches, but the link never carries more than it can. And the two errors do not
// cost the same: an estimate that is too high keeps the sender on the level that measures the
// link, whose next samples correct it; one that is too low can make the sender switch to a
// level limited by its codec, whose acks measure the codec, so nothing corrects it and the
// transfer can end several times later than it would have. Hence:
//   - Startup (the probe): the estimate is the best sample so far, and the probe ends once at
//     least kMinProbeSamples samples are in and the last kFlatSamples of them did not raise the
//     best by kGrowth (the rate stopped growing: the link, not the start-up, sets it), or after
//     kMaxProbeSamples. Before that the chooser sees no estimate.
//   - Then: the best of the last kWindow samples, so a link that slows down is followed after
//     kWindow samples, and a low sample alone (a scheduling hiccup of either process, a bunch of
//     acks) does not make the link look slower than it is. An average of the samples did: on an
//     unshaped loopback, where the link outruns every codec, its dips made the chooser take
//     compressed levels that ended the transfer later than fp16 alone.
#pragma once

#include <cstdint>

namespace kvwire::transport {

class GoodputEstimator {
 public:
  static constexpr int kMinProbeSamples = 3;
  static constexpr int kFlatSamples = 3;
  static constexpr int kMaxProbeSamples = 12;
  static constexpr double kGrowth = 1.25;
  static constexpr int kWindow = 4;

  /// A sample of `bytes` acknowledged over `seconds` (> 0).
  void AddSample(double bytes, double seconds);
  /// True once the probe is over; estimate() is meaningful from then on.
  bool ready() const { return ready_; }
  /// Bytes per second; 0 before the first sample.
  double estimate() const { return estimate_; }
  /// The estimate the level chooser may use: 0 (not measured) while probing.
  double for_chooser() const { return ready_ ? estimate_ : 0; }
  int samples() const { return samples_; }
  /// The last sample's rate (bytes per second), for logs.
  double last_rate() const { return last_rate_; }

 private:
  double estimate_ = 0, best_ = 0, last_rate_ = 0;
  double recent_[kWindow] = {};  // the last samples' rates after the probe, a ring
  int samples_ = 0, flat_ = 0;
  bool ready_ = false;
};

}  // namespace kvwire::transport
