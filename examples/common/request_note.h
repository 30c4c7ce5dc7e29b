// What the examples put in SendRequestOptions::user_data: a short note of "key=value" lines
// (first line "kvwire-example/1") with what the receiving process needs beside the KV — the
// next input token, how many tokens to generate, the sender's clock reading for the timings.
// The receiver treats it as untrusted input: Parse checks the size, the syntax and every value
// it reads against a range.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "kvwire/status.h"

namespace kvwire::examples {

inline constexpr size_t kMaxNoteBytes = 4096;

class RequestNote {
 public:
  RequestNote() = default;

  void Set(const std::string& key, const std::string& value) { values_[key] = value; }
  void SetInt(const std::string& key, int64_t value) { values_[key] = std::to_string(value); }

  /// The user_data bytes.
  std::string Encode() const;
  /// Parses user_data bytes: the header line, then lowercase keys [a-z0-9_] and printable
  /// values; no duplicate keys; at most kMaxNoteBytes.
  static Result<RequestNote> Parse(std::string_view bytes);

  /// The value of `key`; kNotFound when absent.
  Result<std::string> Get(const std::string& key) const;
  /// The integer value of `key` within [min, max]; kCorrupt when malformed or out of range.
  Result<int64_t> GetInt(const std::string& key, int64_t min, int64_t max) const;

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace kvwire::examples
