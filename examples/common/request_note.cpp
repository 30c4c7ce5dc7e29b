#include "request_note.h"

#include <cerrno>
#include <cstdlib>

namespace kvwire::examples {
namespace {

constexpr std::string_view kHeader = "kvwire-example/1";

bool ValidKey(std::string_view k) {
  if (k.empty() || k.size() > 64) return false;
  for (char c : k) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

bool ValidValue(std::string_view v) {
  if (v.size() > 256) return false;
  for (char c : v) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

std::string RequestNote::Encode() const {
  std::string out(kHeader);
  out += '\n';
  for (const auto& [k, v] : values_) out += k + "=" + v + "\n";
  return out;
}

Result<RequestNote> RequestNote::Parse(std::string_view bytes) {
  auto bad = [](const std::string& why) {
    return Status(StatusCode::kCorrupt, "request note: " + why);
  };
  if (bytes.size() > kMaxNoteBytes)
    return bad("longer than " + std::to_string(kMaxNoteBytes) + " bytes");
  RequestNote note;
  size_t pos = 0, line_no = 0;
  while (pos < bytes.size()) {
    const size_t end = bytes.find('\n', pos);
    if (end == std::string_view::npos) return bad("last line does not end with a newline");
    const std::string_view line = bytes.substr(pos, end - pos);
    pos = end + 1;
    if (line_no++ == 0) {
      if (line != kHeader)
        return bad("not a kvwire example note (no '" + std::string(kHeader) + "' header)");
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) return bad("line " + std::to_string(line_no) + " has no '='");
    const std::string_view key = line.substr(0, eq), value = line.substr(eq + 1);
    if (!ValidKey(key) || !ValidValue(value))
      return bad("line " + std::to_string(line_no) + " has an invalid key or value");
    if (!note.values_.emplace(std::string(key), std::string(value)).second)
      return bad("key '" + std::string(key) + "' given twice");
  }
  if (line_no == 0) return bad("empty");
  return note;
}

Result<std::string> RequestNote::Get(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) return Status(StatusCode::kNotFound, "request note: no '" + key + "'");
  return it->second;
}

Result<int64_t> RequestNote::GetInt(const std::string& key, int64_t min, int64_t max) const {
  auto it = values_.find(key);
  if (it == values_.end()) return Status(StatusCode::kCorrupt, "request note: no '" + key + "'");
  const std::string& v = it->second;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || errno != 0 || end != v.c_str() + v.size() || x < min || x > max)
    return Status(StatusCode::kCorrupt, "request note: '" + key + "' = '" + v +
                                            "' is not an integer in [" + std::to_string(min) +
                                            ", " + std::to_string(max) + "]");
  return static_cast<int64_t>(x);
}

}  // namespace kvwire::examples
