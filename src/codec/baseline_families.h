// The baseline codec families (fp16, int8, q8_0, q4_0, kivi, int-token/channel, rank, turbo),
// one factory per family, and the small name/option helpers their factories share. Registered
// by baseline_registry.cpp.
#pragma once

#include <charconv>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

#include "kvwire/codec.h"

namespace kvwire::baseline {

CodecFamily Fp16Family();        // baseline_fp16.cpp
CodecFamily Int8Family();        // baseline_int8.cpp
CodecFamily Q8_0Family();        // baseline_ggml_q.cpp
CodecFamily Q4_0Family();        // baseline_ggml_q.cpp
CodecFamily KiviFamily();        // baseline_kivi.cpp
CodecFamily IntTokenFamily();    // baseline_intb.cpp
CodecFamily IntChannelFamily();  // baseline_intb.cpp
CodecFamily RankFamily();        // baseline_rank.cpp
CodecFamily TurboFamily();       // baseline_turbo.cpp

/// The "not this family" answer of a CodecFamily::make.
inline Result<std::unique_ptr<Codec>> NotThisFamily() {
  return Status(StatusCode::kNotFound, "not this family");
}

/// True when `name` is exactly prefix + decimal digits + suffix (no sign, at most 6 digits);
/// the number goes to *value.
inline bool MatchNumbered(std::string_view name, std::string_view prefix, std::string_view suffix,
                          uint32_t* value) {
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) ||
      !name.ends_with(suffix)) {
    return false;
  }
  const std::string_view digits =
      name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 6) return false;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return false;
  }
  std::from_chars(digits.data(), digits.data() + digits.size(), *value);
  return true;
}

/// kInvalidArgument naming the first option of `opts` that is not in `allowed`.
inline Status CheckOptionKeys(std::string_view codec, const CodecOptions& opts,
                              std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : opts.values) {
    bool known = false;
    for (std::string_view a : allowed) known = known || key == a;
    if (known) continue;
    std::string list;
    for (std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    return Status(
        StatusCode::kInvalidArgument,
        "codec " + std::string(codec) + " has no option '" + key + "'" +
            (list.empty() ? std::string(" (it takes none)") : " (options: " + list + ")"));
  }
  return Status::Ok();
}

}  // namespace kvwire::baseline
