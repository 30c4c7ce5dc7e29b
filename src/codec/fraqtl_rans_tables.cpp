// fraqtl's table-driven payload: the rANS tables, the rate ladder and the decoding slots
// (FraqtlCodec::BuildRans, EnsureSlots; docs/FORMAT.md 6.8.1), and the cache of what codecs of
// one profile share (AcquireShared).
#include <algorithm>
#include <deque>
#include <memory>
#include <mutex>
#include <queue>
#include <string>

#include "codec/fraqtl_codec_impl.h"
#include "codec/fraqtl_rans_kernels.h"
#include "kvwire/profile.h"

namespace kvwire::fraqtl::internal {
namespace {

// Frequencies of the cells that `th` (ascending thresholds) cut N(0, 1) into.
std::vector<uint16_t> GaussianFrequencies(const std::vector<float>& th) {
  auto phi = [](double x) {  // P(N(0, 1) <= x)
    return x >= 0 ? 1.0 - baseline::GaussianTail(x) : baseline::GaussianTail(-x);
  };
  std::vector<double> prob(th.size() + 1);
  double lo = 0.0;
  for (size_t c = 0; c < prob.size(); ++c) {
    const double hi = c < th.size() ? phi(th[c]) : 1.0;
    prob[c] = std::max(hi - lo, 0.0);
    lo = hi;
  }
  return rans::NormalizeFrequencies(prob);
}

// The rANS table of the Gaussian Lloyd-Max codebook at b bits (book=gauss, or a profile
// without calibrated codebooks): cell probabilities under N(0, 1), computed once.
const rans::Table& GaussianTable(int b) {
  static const std::vector<rans::Table> tables = [] {
    std::vector<rans::Table> t(kMaxCodedBits + 1);
    for (int bits = 1; bits <= kMaxCodedBits; ++bits) {
      rans::BuildTable(GaussianFrequencies(baseline::GaussianLloydMax(bits).thresholds), &t[bits],
                       /*slots=*/false);
    }
    return t;
  }();
  return tables[b];
}


}  // namespace

// The shared states built in this process, newest last (FraqtlCodec::AcquireShared).
static std::mutex& SharedCacheMutex() {
  static std::mutex mu;
  return mu;
}

static std::deque<std::pair<std::string, std::shared_ptr<FraqtlShared>>>& SharedCache() {
  static std::deque<std::pair<std::string, std::shared_ptr<FraqtlShared>>> cache;
  return cache;
}

void FraqtlCodec::BuildRans(const Profile& profile) {
  const size_t H = kv_heads_, D = d_;
  // Tables: the profile's calibrated cell frequencies; without them, the cells' probabilities
  // under N(0, 1) (the coefficients are normalized to unit variance). Both are exact integers
  // on every machine (GaussianTail is deterministic).
  tables_.assign(size_t{layers_} * 2 * H * (kMaxCodedBits + 1), rans::Table{});
  for (uint32_t l = 0; l < layers_; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      const ProfileSlot slot = k == 1 ? ProfileSlot::kValue
                                      : (prerope_ ? ProfileSlot::kKeyPreRope : ProfileSlot::kKey);
      for (uint32_t h = 0; h < H; ++h) {
        const ProfileBasis& pb = profile.basis(l, slot, h);
        const bool calib = cfg_.calibrated_books && pb.has_codebooks();
        const Prepared& p = prep(l, static_cast<KvKind>(k), h);
        for (int b = 1; b <= kMaxCodedBits; ++b) {
          rans::Table& t = tables_[((size_t{l} * 2 + k) * H + h) * (kMaxCodedBits + 1) + b];
          if (!calib) {
            t = GaussianTable(b);
          } else if (!pb.rans_freq.empty()) {
            rans::BuildTable(std::span<const uint16_t>(pb.rans_freq)
                                 .subspan((size_t{1} << b) - 2, size_t{1} << b),
                             &t, /*slots=*/false);
          } else {
            rans::BuildTable(GaussianFrequencies(p.thresholds[b]), &t, /*slots=*/false);
          }
        }
      }
    }
  }
  // Filled per table on first use (EnsureSlots): no need to zero it.
  slot_pool_ = std::make_unique_for_overwrite<uint32_t[]>((tables_.size() + 1) * rans::kProbScale);
  slot_once_ = std::make_unique<std::once_flag[]>(tables_.size() + 1);
  slot_ready_ = std::make_unique<std::atomic<bool>[]>(tables_.size() + 1);
  // Ladders: greedy on variance * (D(b) - D(b')) per unit of model cost (the table's entropy
  // per token), ties to the lower item; as AllocateBits with coded bits for integer bits.
  const int protect = cfg_.protect > 0 && cfg_.protect <= kMaxCodedBits ? cfg_.protect : 0;
  ladders_.assign(size_t{layers_} * 2, RansLadder{});
  for (uint32_t l = 0; l < layers_; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      const auto kind = static_cast<KvKind>(k);
      RansLadder& lad = ladders_[size_t{l} * 2 + k];
      const size_t n = H * D;
      std::vector<uint8_t> bits(n, 0);
      auto entropy = [&](uint32_t item, int b) -> uint64_t {
        if (b == 0) return 0;
        if (b == kProtectedBits) return kProtectedCost;
        return std::max<uint64_t>(Table(l, kind, item / d_, b).entropy, 1);
      };
      uint64_t cost = 0;
      lad.cum.push_back(0);
      auto take = [&](uint32_t item, uint8_t to) {
        const uint64_t before = entropy(item, bits[item]), after = entropy(item, to);
        cost += after > before ? after - before : 1;
        lad.steps.push_back({item, bits[item], to});
        lad.cum.push_back(cost);
        bits[item] = to;
      };
      if (cfg_.floor) {
        for (uint32_t item = 0; item < n; ++item) take(item, 1);
      }
      struct Cand {
        double gain;
        uint32_t item;
        uint8_t to;
      };
      auto less = [](const Cand& a, const Cand& b) {
        if (a.gain != b.gain) return a.gain < b.gain;
        return a.item > b.item;
      };
      std::priority_queue<Cand, std::vector<Cand>, decltype(less)> heap(less);
      auto next = [&](uint32_t item) {
        const int b = bits[item];
        if (b == kProtectedBits) return;
        const Prepared& p = prep(l, kind, item / d_);
        const uint32_t i = item % d_;
        const double var = p.variance[i];
        int to;
        double dd;
        if (protect != 0 && b >= protect) {
          to = kProtectedBits;
          dd = p.distortion[b] - kProtectedDistortion;
        } else if (b >= kMaxCodedBits) {
          return;
        } else {
          to = b + 1;
          dd = p.distortion[b] - p.distortion[b + 1];
        }
        const uint64_t e0 = entropy(item, b), e1 = entropy(item, to);
        const double dc = static_cast<double>(e1 > e0 ? e1 - e0 : 1);
        const double gain = var * dd / dc;
        if (gain > 0) heap.push({gain, item, static_cast<uint8_t>(to)});
      };
      for (uint32_t item = 0; item < n; ++item) next(item);
      while (!heap.empty()) {
        const Cand c = heap.top();
        heap.pop();
        take(c.item, c.to);
        next(c.item);
      }
    }
  }
}

std::shared_ptr<FraqtlShared> FraqtlCodec::AcquireShared(const Config& config, const Profile& p,
                                                         bool* fresh, std::string* key) {
  // Everything the shared state depends on: the profile's content and the options that
  // Prepare and BuildRans read.
  const bool prerope = config.prerope && p.has_prerope();
  *key = ProfileContentDigest(p) + "|prerope=" + std::to_string(prerope) +
         "|books=" + std::to_string(config.calibrated_books) +
         "|sign=" + std::to_string(config.sign) +
         "|entropy=" + std::to_string(static_cast<int>(config.entropy)) +
         "|protect=" + std::to_string(config.protect) + "|floor=" + std::to_string(config.floor);
  std::lock_guard lock(SharedCacheMutex());
  for (const auto& [k, shared] : SharedCache()) {
    if (k == *key) {
      *fresh = false;
      return shared;
    }
  }
  *fresh = true;
  return std::make_shared<FraqtlShared>();
}

void FraqtlCodec::PublishShared(const std::string& key, std::shared_ptr<FraqtlShared> shared) {
  // The last few stay alive between requests (a serving node encodes or decodes with the same
  // profile request after request); older ones live as long as a codec holds them.
  constexpr size_t kKept = 4;
  std::lock_guard lock(SharedCacheMutex());
  auto& cache = SharedCache();
  for (const auto& entry : cache)
    if (entry.first == key) return;  // built twice at once: the first one stays
  cache.emplace_back(key, std::move(shared));
  if (cache.size() > kKept) cache.pop_front();
}

uint32_t FraqtlCodec::EnsureSlots(uint32_t layer, KvKind kind, uint32_t h, int b) const {
  const size_t t = TableIndex(layer, kind, h, b);
  if (!slot_ready_[t].load(std::memory_order_acquire)) {
    std::call_once(slot_once_[t], [&] {
      const rans::Table& src = t == tables_.size() ? rans::UniformByteTable() : tables_[t];
      rans::Table full;
      rans::BuildTable(src.freq, &full);
      std::copy(full.slots.begin(), full.slots.end(), slot_pool_.get() + t * rans::kProbScale);
      slot_ready_[t].store(true, std::memory_order_release);
    });
  }
  return static_cast<uint32_t>(t * rans::kProbScale);
}


}  // namespace kvwire::fraqtl::internal
