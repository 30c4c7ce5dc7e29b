#include <charconv>
#include <cmath>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "codec/builtin.h"
#include "codec/scratch.h"
#include "common/fp16.h"
#include "kvwire/codec.h"

namespace kvwire {
namespace {

std::mutex& RegistryMutex() {
  static std::mutex m;
  return m;
}

std::vector<CodecFamily>& Registry() {
  static std::vector<CodecFamily> families = [] {
    std::vector<CodecFamily> f;
    detail::RegisterBaselineCodecs(&f);
    detail::RegisterFraqtlCodecs(&f);
    return f;
  }();
  return families;
}

}  // namespace

Status Codec::EncodeHalves(const ChunkDesc& desc, const uint16_t* in, std::vector<uint8_t>* out,
                           CodecImpl impl) const {
  thread_local std::vector<float> values;  // the float32 copy (scratch.h)
  const uint64_t n = desc.elements();
  try {
    Grow(&values, n);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kResourceExhausted,
                  "out of memory for a chunk of " + std::to_string(n) + " values");
  }
  HalvesToFloats(in, n, values.data());
  Status s = Encode(desc, values.data(), out, impl);
  ShedIfLarge(&values);
  return s;
}

Status ParseCodecSpec(std::string_view spec, std::string* name, CodecOptions* options) {
  const size_t colon = spec.find(':');
  *name = std::string(spec.substr(0, colon));
  options->values.clear();
  KVWIRE_RETURN_ERROR_IF(name->empty(), kInvalidArgument, "empty codec name in spec '" + std::string(spec) + "'");
  if (colon == std::string_view::npos) return Status::Ok();
  std::string_view rest = spec.substr(colon + 1);
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    std::string_view kv = rest.substr(0, comma);
    const size_t eq = kv.find('=');
    KVWIRE_RETURN_ERROR_IF(eq == std::string_view::npos || eq == 0 || eq + 1 == kv.size(),
                           kInvalidArgument,
                           "codec option '" + std::string(kv) + "' is not key=value in '" +
                               std::string(spec) + "'");
    std::string key(kv.substr(0, eq));
    KVWIRE_RETURN_ERROR_IF(options->Has(key), kInvalidArgument,
                           "codec option '" + key + "' given twice in '" + std::string(spec) + "'");
    options->values.emplace_back(std::move(key), std::string(kv.substr(eq + 1)));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return Status::Ok();
}

bool CodecOptions::Has(std::string_view key) const {
  for (const auto& [k, v] : values) {
    if (k == key) return true;
  }
  return false;
}

Result<int64_t> CodecOptions::GetInt(std::string_view key, int64_t fallback, int64_t min,
                                     int64_t max) const {
  for (const auto& [k, v] : values) {
    if (k != key) continue;
    int64_t x = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    KVWIRE_RETURN_ERROR_IF(ec != std::errc() || p != v.data() + v.size(), kInvalidArgument,
                           "codec option " + k + "=" + v + " is not an integer");
    KVWIRE_RETURN_ERROR_IF(x < min || x > max, kInvalidArgument,
                           "codec option " + k + "=" + v + " outside [" + std::to_string(min) +
                               ", " + std::to_string(max) + "]");
    return x;
  }
  return fallback;
}

Result<double> CodecOptions::GetDouble(std::string_view key, double fallback) const {
  for (const auto& [k, v] : values) {
    if (k != key) continue;
    double x = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    KVWIRE_RETURN_ERROR_IF(ec != std::errc() || p != v.data() + v.size() || !std::isfinite(x),
                           kInvalidArgument, "codec option " + k + "=" + v + " is not a number");
    return x;
  }
  return fallback;
}

void RegisterCodecFamily(CodecFamily family) {
  std::lock_guard lock(RegistryMutex());
  Registry().push_back(std::move(family));
}

std::vector<CodecFamily> ListCodecFamilies() {
  std::lock_guard lock(RegistryMutex());
  return Registry();
}

Result<std::unique_ptr<Codec>> CreateCodec(std::string_view spec, const Profile* profile) {
  std::string name;
  CodecOptions options;
  KVWIRE_RETURN_IF_ERROR(ParseCodecSpec(spec, &name, &options));
  std::string known;
  for (const CodecFamily& family : ListCodecFamilies()) {
    auto codec = family.make(name, options, profile);
    if (codec.ok() || codec.status().code() != StatusCode::kNotFound) return codec;
    known += known.empty() ? "" : ", ";
    known += family.pattern;
  }
  return Status(StatusCode::kNotFound, "unknown codec '" + name + "' (known: " + known + ")");
}

}  // namespace kvwire
