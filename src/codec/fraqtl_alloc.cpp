// Reverse water-filling by greedy marginal gains (fraqtl_math.h).
#include <queue>

#include "codec/fraqtl_math.h"

namespace kvwire::fraqtl {
namespace {

// A candidate step: give item `index` its next increment (1 bit, or the jump to fp16).
struct Step {
  double gain_per_bit;
  uint32_t index;
  uint32_t cost;
};

// Max-heap order: larger gain per bit first; on ties the lower index.
struct StepLess {
  bool operator()(const Step& a, const Step& b) const {
    if (a.gain_per_bit != b.gain_per_bit) return a.gain_per_bit < b.gain_per_bit;
    return a.index > b.index;
  }
};

// Unit-variance distortion of a protected (fp16) coefficient: fp16 keeps 11 significant bits.
constexpr double kProtectedDistortion = 1e-7;

}  // namespace

std::vector<uint8_t> AllocateBits(std::span<const AllocationItem> items, uint64_t total_bits,
                                  const AllocationOptions& options) {
  const size_t n = items.size();
  std::vector<uint8_t> bits(n, 0);
  uint64_t left = total_bits;
  const int protect = options.protect > 0 && options.protect <= kMaxCodedBits ? options.protect : 0;
  auto next_step = [&](uint32_t i) -> Step {
    const int b = bits[i];
    const AllocationItem& it = items[i];
    if (b == kProtectedBits) return {-1.0, i, 0};
    if (protect != 0 && b >= protect) {  // beyond `protect` bits the next step is fp16
      const uint32_t cost = kProtectedBits - b;
      return {it.variance * (it.distortion[b] - kProtectedDistortion) / cost, i, cost};
    }
    if (b >= kMaxCodedBits) return {-1.0, i, 0};
    return {it.variance * (it.distortion[b] - it.distortion[b + 1]), i, 1};
  };
  if (options.floor_one_bit && total_bits >= n) {
    // The 1-bit floor: no direction deleted. (A budget below one bit per direction cannot
    // honour it; the allocation is then plain water-filling.)
    for (uint32_t i = 0; i < n; ++i) bits[i] = 1;
    left -= n;
  }
  std::priority_queue<Step, std::vector<Step>, StepLess> heap;
  for (uint32_t i = 0; i < n; ++i) {
    const Step s = next_step(i);
    if (s.gain_per_bit > 0) heap.push(s);
  }
  while (left > 0 && !heap.empty()) {
    const Step s = heap.top();
    heap.pop();
    if (s.cost > left) continue;  // the fp16 jump no longer fits; this item stays where it is
    left -= s.cost;
    bits[s.index] = s.cost == 1 ? bits[s.index] + 1 : kProtectedBits;
    const Step t = next_step(s.index);
    if (t.gain_per_bit > 0) heap.push(t);
  }
  return bits;
}

std::vector<uint8_t> AllocateBitsWeighted(std::span<const AllocationItem> items,
                                          std::span<const uint64_t> costs, uint64_t total_bits,
                                          int protect_bits) {
  const size_t n = items.size();
  std::vector<uint8_t> bits(n, 0);
  uint64_t left = total_bits;
  const int protect = protect_bits > 0 && protect_bits <= kMaxCodedBits ? protect_bits : 0;
  // Step.cost holds the bits of the step (1 or 16 - b); what it spends is that times costs[i].
  auto next_step = [&](uint32_t i) -> Step {
    const int b = bits[i];
    const AllocationItem& it = items[i];
    if (b == kProtectedBits || costs[i] == 0) return {-1.0, i, 0};
    if (protect != 0 && b >= protect) {
      const uint32_t step = kProtectedBits - b;
      return {it.variance * (it.distortion[b] - kProtectedDistortion) / step, i, step};
    }
    if (b >= kMaxCodedBits) return {-1.0, i, 0};
    return {it.variance * (it.distortion[b] - it.distortion[b + 1]), i, 1};
  };
  std::priority_queue<Step, std::vector<Step>, StepLess> heap;
  for (uint32_t i = 0; i < n; ++i) {
    const Step s = next_step(i);
    if (s.gain_per_bit > 0) heap.push(s);
  }
  while (left > 0 && !heap.empty()) {
    const Step s = heap.top();
    heap.pop();
    const uint64_t spend = uint64_t{s.cost} * costs[s.index];
    if (spend > left) continue;
    left -= spend;
    bits[s.index] = s.cost == 1 ? bits[s.index] + 1 : kProtectedBits;
    const Step t = next_step(s.index);
    if (t.gain_per_bit > 0) heap.push(t);
  }
  return bits;
}

double AllocationDistortion(std::span<const AllocationItem> items, std::span<const uint8_t> bits) {
  double d = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const double di =
        bits[i] == kProtectedBits ? kProtectedDistortion : items[i].distortion[bits[i]];
    d += items[i].variance * di;
  }
  return d;
}

}  // namespace kvwire::fraqtl
