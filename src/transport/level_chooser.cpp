#include "transport/level_chooser.h"

#include <algorithm>
#include <cstdio>

namespace kvwire::transport {
namespace {

std::string Fmt(const char* fmt, double a, double b = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, fmt, a, b);
  return buf;
}

}  // namespace

LevelChoice ChooseLevel(const LevelChoiceInput& in) {
  LevelChoice out;
  if (in.levels.empty()) return out;
  uint32_t best = 0;  // most accurate
  for (uint32_t i = 1; i < in.levels.size(); ++i)
    if (in.levels[i].bits_per_element > in.levels[best].bits_per_element) best = i;

  // Allowed levels, most accurate first.
  std::vector<uint32_t> allowed;
  for (uint32_t i = 0; i < in.levels.size(); ++i) {
    const LevelInfo& l = in.levels[i];
    bool ok = l.bits_per_element >= in.min_bits;
    if (in.max_kl > 0) ok = ok && l.kl >= 0 && l.kl <= in.max_kl;
    if (ok || i == best) allowed.push_back(i);
  }
  std::stable_sort(allowed.begin(), allowed.end(), [&](uint32_t a, uint32_t b) {
    return in.levels[a].bits_per_element > in.levels[b].bits_per_element;
  });
  const uint32_t cheapest = allowed.back();

  if (in.remaining_ms < 0) {
    if (in.max_kl > 0) {
      out.level = cheapest;
      out.reason = Fmt("no deadline: cheapest level within max_kl %.4g", in.max_kl);
    } else {
      out.level = best;
      out.reason = "no deadline, no accuracy budget: most accurate level";
    }
    return out;
  }
  if (in.goodput_bytes_per_s <= 0) {
    out.level = cheapest;
    out.reason = "deadline set, goodput not measured yet: cheapest allowed level";
    return out;
  }
  const double budget_s = in.remaining_ms / 1000.0 * in.safety;
  for (uint32_t i : allowed) {
    const double bytes = double(in.remaining_elements) * in.levels[i].bits_per_element / 8.0 +
                         double(in.inflight_bytes);
    const double need_s = bytes / in.goodput_bytes_per_s;
    if (need_s <= budget_s) {
      out.level = i;
      out.reason = Fmt("fits: needs %.1f ms of %.1f ms left", need_s * 1000, in.remaining_ms) +
                   Fmt(" at %.3g MB/s", in.goodput_bytes_per_s / 1e6);
      return out;
    }
  }
  out.level = cheapest;
  out.reason = Fmt("deadline at risk: no allowed level fits %.1f ms at %.3g MB/s", in.remaining_ms,
                   in.goodput_bytes_per_s / 1e6);
  return out;
}

}  // namespace kvwire::transport
