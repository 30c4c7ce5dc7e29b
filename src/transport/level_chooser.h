// Per-chunk choice of the rate-distortion level (docs/PROTOCOL.md section 5, "Adaptive
// level"). A pure function so it can be tested on its own.
//
// Policy:
//   1. Allowed levels: bits_per_element >= min_bits, and when max_kl > 0 a known kl <= max_kl.
//      The most accurate level (highest bits) is always allowed (the fallback).
//   2. With a deadline and a goodput estimate: the most accurate allowed level whose predicted
//      finish fits the time left (with a safety margin); if none fits, the allowed level that
//      finishes first ("deadline at risk"), where a less accurate level must be predicted to
//      finish at least kSwitchGain sooner to be taken over a more accurate one (the goodput
//      the prediction rests on comes from a short probe, which underestimates a fast link
//      still ramping up; a near tie is not worth the accuracy), the levels compared on what is
//      left to send (the bytes in flight drain whichever level comes next). A level's
//      predicted finish is its slowest pipelined stage: the bytes still to send at that level
//      + bytes in flight at the measured goodput, and, where the level's codec throughput is
//      known, encoding and decoding the elements left, or at the rate the level was seen to
//      deliver during this transfer where that is slower; a level not seen yet at its codec
//      speed times the smallest share of its codec speed a seen level delivered. So a level
//      that compresses more but computes slower than the link is not taken for a faster one,
//      one that turned out slower than its codec speeds promised (its cores shared with other
//      work) is left again, and not for another whose codec would share the same cores.
//   3. With a deadline but no goodput measured yet: the allowed level quickest to compute where
//      codec speeds are known (a codec-bound level would measure its codec, not the link), else
//      the cheapest allowed level (be safe first, climb once the link is measured).
//   4. Without a deadline: when an accuracy budget is given, the cheapest allowed level (spend
//      the budget, save the wire) among those whose predicted finish, once goodput is measured,
//      is within 5 % of the earliest; else the most accurate level.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvwire::transport {

/// A less accurate level is "faster" only when predicted to finish in at most this fraction of
/// the time of the more accurate one.
inline constexpr double kSwitchGain = 0.85;

struct LevelInfo {
  double bits_per_element = 16;
  double kl = -1;                     // < 0: unknown
  double encode_elements_per_s = 0;   // <= 0: unknown (not counted)
  double decode_elements_per_s = 0;   // <= 0: unknown (not counted)
  // Seen during this transfer: elements per second the level's chunks were delivered
  // (encoded, sent, decoded, acknowledged) while it was the only level acknowledged, for a
  // level limited by its codec; <= 0: not seen.
  double delivered_elements_per_s = 0;
};

struct LevelChoiceInput {
  std::vector<LevelInfo> levels;
  double max_kl = 0;                // <= 0: no accuracy budget
  double min_bits = 0;              // <= 0: none
  double remaining_ms = -1;         // < 0: no deadline
  double goodput_bytes_per_s = 0;   // <= 0: not measured yet
  uint64_t remaining_elements = 0;  // elements not yet encoded (this chunk included)
  uint64_t inflight_bytes = 0;      // sent, not yet acknowledged
  double safety = 0.85;             // use this fraction of the time left
};

struct LevelChoice {
  uint32_t level = 0;
  std::string reason;
};

LevelChoice ChooseLevel(const LevelChoiceInput& in);

}  // namespace kvwire::transport
