#include "transport/goodput.h"

namespace kvwire::transport {

void GoodputEstimator::AddSample(double bytes, double seconds) {
  if (!(seconds > 0) || !(bytes > 0)) return;
  const double rate = bytes / seconds;
  last_rate_ = rate;
  ++samples_;
  if (ready_) {
    recent_[samples_ % kWindow] = rate;
    estimate_ = 0;
    for (double r : recent_) estimate_ = r > estimate_ ? r : estimate_;
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
  if (ready_) {
    for (double& r : recent_) r = best_;  // the probe's best stands until kWindow samples
  }
}

}  // namespace kvwire::transport
