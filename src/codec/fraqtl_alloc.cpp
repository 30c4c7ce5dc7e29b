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

// The greedy of both allocators: starting from `bits` with `left` bits to spend, repeatedly takes
// the step with the largest gain per step bit, a step of item i costing its step bits times
// costs[i] (1 when `costs` is empty). Beyond `protect` bits (0: off) an item's next step is the
// jump to fp16 (kProtectedBits); an item with cost 0 takes no step.
std::vector<uint8_t> Greedy(std::span<const AllocationItem> items, std::span<const uint64_t> costs,
                            std::vector<uint8_t> bits, uint64_t left, int protect) {
  auto cost_of = [&](uint32_t i) -> uint64_t { return costs.empty() ? 1 : costs[i]; };
  auto next_step = [&](uint32_t i) -> Step {
    const int b = bits[i];
    const AllocationItem& it = items[i];
    if (b == kProtectedBits || cost_of(i) == 0) return {-1.0, i, 0};
    if (protect != 0 && b >= protect) {  // beyond `protect` bits the next step is fp16
      const uint32_t step = kProtectedBits - b;
      return {it.variance * (it.distortion[b] - kProtectedDistortion) / step, i, step};
    }
    if (b >= kMaxCodedBits) return {-1.0, i, 0};
    return {it.variance * (it.distortion[b] - it.distortion[b + 1]), i, 1};
  };
  std::priority_queue<Step, std::vector<Step>, StepLess> heap;
  for (uint32_t i = 0; i < items.size(); ++i) {
    const Step s = next_step(i);
    if (s.gain_per_bit > 0) heap.push(s);
  }
  while (left > 0 && !heap.empty()) {
    const Step s = heap.top();
    heap.pop();
    const uint64_t spend = uint64_t{s.cost} * cost_of(s.index);
    if (spend > left) continue;  // the fp16 jump no longer fits; this item stays where it is
    left -= spend;
    bits[s.index] = s.cost == 1 ? bits[s.index] + 1 : kProtectedBits;
    const Step t = next_step(s.index);
    if (t.gain_per_bit > 0) heap.push(t);
  }
  return bits;
}

int ProtectBits(int protect) { return protect > 0 && protect <= kMaxCodedBits ? protect : 0; }

}  // namespace

std::vector<uint8_t> AllocateBits(std::span<const AllocationItem> items, uint64_t total_bits,
                                  const AllocationOptions& options) {
  const size_t n = items.size();
  std::vector<uint8_t> bits(n, 0);
  uint64_t left = total_bits;
  if (options.floor_one_bit && total_bits >= n) {
    // The 1-bit floor: no direction deleted. (A budget below one bit per direction cannot
    // honour it; the allocation is then plain water-filling.)
    for (uint32_t i = 0; i < n; ++i) bits[i] = 1;
    left -= n;
  }
  return Greedy(items, {}, std::move(bits), left, ProtectBits(options.protect));
}

std::vector<uint8_t> AllocateBitsWeighted(std::span<const AllocationItem> items,
                                          std::span<const uint64_t> costs, uint64_t total_bits,
                                          int protect_bits) {
  return Greedy(items, costs, std::vector<uint8_t>(items.size(), 0), total_bits,
                ProtectBits(protect_bits));
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
