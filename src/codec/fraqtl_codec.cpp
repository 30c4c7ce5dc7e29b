// The fraqtl codec: the factory, its canonical spec, and the two kernels shared by encoder and
// decoder (fraqtl_codec_impl.h).
#include <algorithm>
#include <charconv>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "codec/fraqtl_codec_impl.h"
#include "codec/fraqtl_rans_kernels.h"
#include "kvwire/kv_view.h"

namespace kvwire::fraqtl {
namespace internal {

// z[0, d) += sum over j of mt[j * d, + d) * x[j], column by column in ascending j, skipping
// x[j] == 0: every z[i] receives the same products in the same order as the reference's dot
// products, so any vector width gives identical floats. An AVX2 clone is picked at load time
// where the CPU has it (no FMA: a fused multiply-add would round differently).
__attribute__((target_clones("avx2", "default"))) void AxpyColumns(
    const float* __restrict mt, const float* __restrict x, float* __restrict z, size_t d) {
  for (size_t j = 0; j < d; ++j) {
    const float xj = x[j];
    if (xj == 0.0f) continue;
    const float* col = mt + j * d;
    for (size_t i = 0; i < d; ++i) z[i] += col[i] * xj;
  }
}

// cos/sin of RoPE at positions [first, first + tokens), token t at [t * 2 * half, + 2 * half)
// (cos half, then sin half), computed by RopeAnglesInto (the floats of Rope::Angles). They cost
// more than decoding a chunk, and every layer's K chunks need the same positions, on whichever
// thread codes them: the angles are kept process-wide in pages of kPagePositions positions per
// (theta, rope_dim), up to kMaxCachedBytes (the oldest pages go first). A range inside one page
// is read where it lies (the page is held until the thread's next call); one across pages is
// copied into a buffer of the calling thread, which keeps it for the next call with the same
// positions.
namespace {

// 2 MiB of angles at rope_dim 64: a page is one huge page where the kernel grants them (a fresh
// 4 KiB page costs a fault each, 512 of them per page); chunks of up to 8192 tokens cut from
// token 0 lie in one page.
constexpr int64_t kPagePositions = 8192;

// Storage for a page: a KvCache's (2 MiB-aligned and advised as huge pages from 1 MiB on).
std::shared_ptr<float[]> NewPage(size_t floats) {
  const size_t bytes = floats * sizeof(float);
  return std::shared_ptr<float[]>(static_cast<float*>(detail::AllocateZeroed(bytes)),
                                  [bytes](float* q) { detail::FreeZeroed(q, bytes); });
}
constexpr size_t kMaxCachedBytes = size_t{64} << 20;

class AnglePages {
 public:
  using Page = std::shared_ptr<const float[]>;
  Page Get(const Rope& rope, int64_t page) {
    const Key key{rope.theta, rope.rope_dim, page};
    {
      std::lock_guard lock(mu_);
      if (auto it = pages_.find(key); it != pages_.end()) return it->second;
    }
    const size_t floats = PageFloats(rope.rope_dim);
    std::shared_ptr<float[]> cs = NewPage(floats);
    RopeAnglesInto(rope, page * kPagePositions, kPagePositions, cs.get());
    std::lock_guard lock(mu_);
    auto [it, added] = pages_.emplace(key, std::move(cs));
    if (added) {
      order_.push_back(key);
      bytes_ += floats * sizeof(float);
      while (bytes_ > kMaxCachedBytes && order_.size() > 1) {
        bytes_ -= PageFloats(std::get<1>(order_.front())) * sizeof(float);
        pages_.erase(order_.front());
        order_.pop_front();
      }
    }
    return it->second;
  }

 private:
  using Key = std::tuple<double, uint32_t, int64_t>;  // theta, rope_dim, page
  static size_t PageFloats(uint32_t rope_dim) {
    return size_t{kPagePositions} * (rope_dim / 2) * 2;
  }
  std::mutex mu_;
  std::map<Key, Page> pages_;
  std::deque<Key> order_;
  size_t bytes_ = 0;
};

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - (a % b != 0 && (a < 0) != (b < 0)); }

}  // namespace

const float* PositionAngles(const Rope& rope, int64_t first, uint32_t tokens) {
  static AnglePages* const pages = new AnglePages;  // never destroyed: coders may outlive main
  const size_t row = size_t{rope.rope_dim / 2} * 2;
  thread_local AnglePages::Page page_held;  // the page a range inside one page was read from
  thread_local std::vector<float> cs;
  // The positions `cs` holds: the K chunks of every layer of a request cover the same tokens.
  thread_local struct {
    double theta = 0;
    uint32_t rope_dim = 0;
    int64_t first = 0;
    uint32_t tokens = 0;
  } held;
  const int64_t page0 = FloorDiv(first, kPagePositions);
  if (tokens > 0 && FloorDiv(first + int64_t{tokens} - 1, kPagePositions) == page0) {
    page_held = pages->Get(rope, page0);
    return page_held.get() + size_t(first - page0 * kPagePositions) * row;
  }
  if (held.tokens != 0 && held.theta == rope.theta && held.rope_dim == rope.rope_dim &&
      first >= held.first && first + int64_t{tokens} <= held.first + int64_t{held.tokens}) {
    return cs.data() + size_t(first - held.first) * row;
  }
  held.tokens = 0;
  ShedIfLarge(&cs);
  Grow(&cs, size_t{tokens} * row + 1);  // + 1: never empty
  for (int64_t pos = first; pos < first + int64_t{tokens};) {
    const int64_t page = FloorDiv(pos, kPagePositions);
    const int64_t end = std::min(first + int64_t{tokens}, (page + 1) * kPagePositions);
    const AnglePages::Page p = pages->Get(rope, page);
    std::copy(p.get() + size_t(pos - page * kPagePositions) * row,
              p.get() + size_t(end - page * kPagePositions) * row,
              cs.data() + size_t(pos - first) * row);
    pos = end;
  }
  held = {rope.theta, rope.rope_dim, first, tokens};
  return cs.data();
}

}  // namespace internal

std::string CanonicalSpec(const Config& c) {
  char b[32];
  auto [end, ec] = std::to_chars(b, b + sizeof(b), c.bits);
  std::string s = "fraqtl@" + std::string(b, end) + ":";
  if (!c.level.empty()) s += "level=" + c.level + ",";
  s += "sink=" + std::to_string(c.sink) + ",window=" + std::to_string(c.window) +
       ",prerope=" + std::to_string(int{c.prerope}) + ",";
  if (!c.basis.empty()) s += "basis=" + c.basis + ",";
  s += "floor=" + std::to_string(int{c.floor}) + ",protect=" + std::to_string(c.protect) +
       ",gain=" + std::to_string(int{c.gain});
  if (c.sign != 0 || c.spell_steps) s += ",sign=" + std::to_string(c.sign);
  if (c.delta != 0 || c.spell_steps) s += ",delta=" + std::to_string(c.delta);
  s += ",entropy=" + std::string(c.entropy == Entropy::kRans   ? "rans"
                                 : c.entropy == Entropy::kZstd ? "zstd"
                                                               : "none") +
       ",book=" + std::string(c.calibrated_books ? "calib" : "gauss");
  return s;
}

Result<std::unique_ptr<Codec>> MakeFraqtlCodec(const Config& requested, const Profile& profile) {
  Config config = requested;
  // sign=1 asks for the default sketch size, D / 2 rows.
  if (config.sign == 1) config.sign = std::max<uint32_t>(1, profile.head_dim / 2);
  KVWIRE_RETURN_ERROR_IF(config.sign > 4 * profile.head_dim, kInvalidArgument,
                         "fraqtl: sign=" + std::to_string(config.sign) +
                             " sketch rows, at most 4 x head_dim (" +
                             std::to_string(4 * profile.head_dim) + ")");
  KVWIRE_RETURN_ERROR_IF(config.delta == 1, kInvalidArgument,
                         "fraqtl: delta=G needs groups of G >= 2 tokens (delta=0: off)");
  KVWIRE_RETURN_ERROR_IF(config.delta != 0 && config.gain, kInvalidArgument,
                         "fraqtl: delta=G and gain=1 do not combine (delta tokens have no gain)");
  KVWIRE_RETURN_ERROR_IF(config.entropy == Entropy::kRans && (config.sign != 0 || config.delta != 0),
                         kInvalidArgument,
                         "fraqtl: sign=M and delta=G exist only in the bit-packed payload "
                         "(entropy=zstd or entropy=none), not with entropy=rans");
  KVWIRE_RETURN_ERROR_IF(!(config.bits > 0 && config.bits <= 16), kInvalidArgument,
                         "fraqtl: target bits/element must be in (0, 16]");
  KVWIRE_RETURN_IF_ERROR(profile.Validate());
  KVWIRE_RETURN_ERROR_IF(
      !config.basis.empty() && config.basis != profile.basis_kind, kInvalidArgument,
      "fraqtl: basis=" + config.basis + " but the profile was calibrated with '" +
          profile.basis_kind + "' (calibrate with --basis " + config.basis + ")");
  if (!config.level.empty() && !profile.FindLevel(config.level)) {
    // kInvalidArgument, not kNotFound: the registry reads kNotFound as "not this family".
    std::string names;
    for (const auto& lv : profile.levels) names += (names.empty() ? "" : ", ") + lv.name;
    return Status(StatusCode::kInvalidArgument,
                  "fraqtl: the profile has no level '" + config.level + "' (its levels: " +
                      (names.empty() ? "none; `kvwire diagnose` writes them" : names) + ")");
  }
  return std::unique_ptr<Codec>(std::make_unique<internal::FraqtlCodec>(config, profile));
}

}  // namespace kvwire::fraqtl
