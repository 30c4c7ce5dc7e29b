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
  // How much of its codec speed a level delivered in this transfer, at worst (1: as fast as
  // measured alone, or nothing seen yet). A level not seen yet is predicted at its codec speed
  // times this share: the cores its codec would run on are the ones the seen level shared, and
  // a seen level must not look slower than an unseen one for that alone.
  auto codec_speed = [](const LevelInfo& l) {  // the slower known side; 0: none known
    const double e = l.encode_elements_per_s, d = l.decode_elements_per_s;
    if (e > 0 && d > 0) return std::min(e, d);
    return std::max(0.0, std::max(e, d));
  };
  double share = 1;
  for (const LevelInfo& l : in.levels) {
    if (l.delivered_elements_per_s > 0 && codec_speed(l) > 0) {
      share = std::min(share, l.delivered_elements_per_s / codec_speed(l));
    }
  }
  // Predicted seconds to finish at level i (goodput measured): its slowest pipelined stage.
  // With `drain`, the wire stage first carries the bytes already in flight.
  auto stage_s = [&](uint32_t i, bool drain) {
    const LevelInfo& l = in.levels[i];
    const double elements = double(in.remaining_elements);
    double t = (elements * l.bits_per_element / 8.0 + (drain ? double(in.inflight_bytes) : 0.0)) /
               in.goodput_bytes_per_s;
    if (l.encode_elements_per_s > 0) t = std::max(t, elements / l.encode_elements_per_s);
    if (l.decode_elements_per_s > 0) t = std::max(t, elements / l.decode_elements_per_s);
    if (l.delivered_elements_per_s > 0) {
      t = std::max(t, elements / l.delivered_elements_per_s);
    } else if (codec_speed(l) > 0) {
      t = std::max(t, elements / (share * codec_speed(l)));
    }
    return t;
  };
  auto finish_s = [&](uint32_t i) { return stage_s(i, true); };
  // The level predicted to finish first; a less accurate one (later in `allowed`) must beat
  // the current pick by kSwitchGain. With drain = false, levels are compared on what is left
  // to send alone: the bytes in flight drain whichever level comes next, and counting them on
  // the wire stage only made a codec-bound level look as if its coding overlapped their drain
  // for free. Near the end of a transfer on a fast link that let it win against the level that
  // measures the link, though on shared cores the coding takes the CPU the drain needs
  // (measured: with a deadline no level could meet, an unshaped loopback mixed in fraqtl
  // chunks and ended at 0.85x of fp16 alone).
  auto fastest = [&](bool drain) {
    uint32_t f = allowed.front();
    for (uint32_t i : allowed) {
      if (stage_s(i, drain) < kSwitchGain * stage_s(f, drain)) f = i;
    }
    return f;
  };

  // Where codec speeds are known, the allowed level quickest to compute: the one that measures
  // the link while goodput is unknown (acks come after decoding, so a level limited by its
  // codec would measure the codec).
  auto speed = [&](uint32_t i) {
    const LevelInfo& l = in.levels[i];
    return std::min(l.encode_elements_per_s, l.decode_elements_per_s);
  };
  uint32_t quick = allowed.front();
  for (uint32_t i : allowed) {
    if (speed(i) > speed(quick)) quick = i;
  }
  const bool quick_known = speed(quick) > 0;

  if (in.remaining_ms < 0) {
    if (in.max_kl > 0 && in.goodput_bytes_per_s <= 0 && quick_known) {
      out.level = quick;
      out.reason = "no deadline, goodput not measured yet: the allowed level quickest to compute";
      return out;
    }
    if (in.max_kl > 0 && in.goodput_bytes_per_s > 0) {
      const double first = finish_s(fastest(true));
      for (auto it = allowed.rbegin(); it != allowed.rend(); ++it) {  // cheapest first
        if (finish_s(*it) <= 1.05 * first) {
          out.level = *it;
          out.reason = Fmt("no deadline: cheapest level within max_kl %.4g", in.max_kl) +
                       Fmt(" that finishes within 5 %% of the first (%.1f ms)", first * 1000);
          return out;
        }
      }
    }
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
    if (quick_known) {
      out.level = quick;
      out.reason = "deadline set, goodput not measured yet: the allowed level quickest to compute";
      return out;
    }
    out.level = cheapest;
    out.reason = "deadline set, goodput not measured yet: cheapest allowed level";
    return out;
  }
  const double budget_s = in.remaining_ms / 1000.0 * in.safety;
  for (uint32_t i : allowed) {
    const double need_s = finish_s(i);
    if (need_s <= budget_s) {
      out.level = i;
      out.reason = Fmt("fits: needs %.1f ms of %.1f ms left", need_s * 1000, in.remaining_ms) +
                   Fmt(" at %.3g MB/s", in.goodput_bytes_per_s / 1e6);
      return out;
    }
  }
  out.level = fastest(false);
  out.reason = Fmt("deadline at risk: no allowed level fits %.1f ms at %.3g MB/s", in.remaining_ms,
                   in.goodput_bytes_per_s / 1e6) +
               Fmt("; the one that finishes first (%.1f ms)", finish_s(out.level) * 1000);
  return out;
}

}  // namespace kvwire::transport
