#include "transport/goodput.h"

namespace kvwire::transport {

void GoodputEstimator::AddSample(double bytes, double seconds) {
  if (!(seconds > 0) || !(bytes > 0)) return;
  const double rate = bytes / seconds;
  last_rate_ = rate;
  ++samples_;
  if (ready_) {
    estimate_ = (1 - kWeight) * estimate_ + kWeight * rate;
    return;
  }
  if (rate > kGrowth * best_) {
    flat_ = 0;
  } else {
    ++flat_;
  }
  if (rate > best_) best_ = rate;
  estimate_ = best_;
  ready_ = (samples_ >= kMinProbeSamples && flat_ >= kFlatSamples) ||
           samples_ >= kMaxProbeSamples;
}

}  // namespace kvwire::transport
