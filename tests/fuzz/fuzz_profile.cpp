// Fuzz target of the profile reader (Profile::Parse, include/kvwire/profile.h): the profile a
// receiver fetches from a sender, or a user's .kvp file. Two modes, chosen by the first byte:
//
//  'K' (the first byte of the magic "KVWP"): the input is a profile file, as given.
//  anything else: the rest is a ProfileBody message; the target puts the 16-byte preamble in
//      front (format major 1, minor = first byte % 3, the body's length and CRC32C). The body
//      is under a CRC, so without this the fuzzer rarely gets past it to the fields behind.
//
// Parsing must never crash, hang or allocate beyond a bound proportional to the input
// (alloc_bound.h), and refusals are kCorrupt/kTruncated/kVersionMismatch with a message. What
// parses must validate, serialize, parse again to the same profile, and serialize again to the
// same bytes; its id is the hash of those bytes.
//
// A violated invariant calls Fail(), which aborts: a crash for libFuzzer and a failed ctest for
// the replay (replay_parser_main.cpp). Built as a libFuzzer binary with KVWIRE_BUILD_FUZZ=ON.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "fuzz/alloc_bound.h"
#include "kvwire/profile.h"
#include "kvwire/stream.h"

namespace kvwire {
namespace {

[[noreturn]] void Fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_profile: invariant violated: %s %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

void PutLE32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// The profile file the input stands for (see the modes above).
std::vector<uint8_t> ProfileBytes(std::span<const uint8_t> in) {
  if (!in.empty() && in[0] == 'K') return {in.begin(), in.end()};
  const std::span<const uint8_t> body = in.empty() ? in : in.subspan(1);
  std::vector<uint8_t> file(16 + body.size());
  std::memcpy(file.data(), "KVWP", 4);
  file[4] = kProfileFormatMajor & 0xff;
  file[5] = kProfileFormatMajor >> 8;
  file[6] = in.empty() ? 0 : in[0] % 3;
  PutLE32(file.data() + 8, static_cast<uint32_t>(body.size()));
  PutLE32(file.data() + 12, Crc32c(body));
  if (!body.empty()) std::memcpy(file.data() + 16, body.data(), body.size());
  return file;
}

bool SameBasis(const ProfileBasis& a, const ProfileBasis& b) {
  return a.mean == b.mean && a.forward == b.forward && a.inverse == b.inverse &&
         a.variance == b.variance && a.codebook_levels == b.codebook_levels &&
         a.distortion == b.distortion && a.rans_freq == b.rans_freq;
}

bool SameLevel(const ProfileLevel& a, const ProfileLevel& b) {
  return a.name == b.name && a.bits == b.bits && a.budgets == b.budgets && a.kl == b.kl &&
         a.dppl == b.dppl && a.top1 == b.top1 && a.measured_bits == b.measured_bits;
}

// Every field; values are finite after validation, so == is exact.
bool SameProfile(const Profile& a, const Profile& b) {
  if (a.model_fingerprint != b.model_fingerprint || a.layers != b.layers ||
      a.kv_heads != b.kv_heads || a.heads != b.heads || a.head_dim != b.head_dim ||
      a.rope_theta != b.rope_theta || a.rope_style != b.rope_style || a.rope_dim != b.rope_dim ||
      a.basis_kind != b.basis_kind || a.key_metric != b.key_metric ||
      a.value_metric != b.value_metric || a.calib_tokens != b.calib_tokens ||
      a.calib_source != b.calib_source || a.notes != b.notes ||
      a.fraqtl_defaults != b.fraqtl_defaults || a.bases.size() != b.bases.size() ||
      a.levels.size() != b.levels.size()) {
    return false;
  }
  for (size_t i = 0; i < a.bases.size(); ++i) {
    if (!SameBasis(a.bases[i], b.bases[i])) return false;
  }
  for (size_t i = 0; i < a.levels.size(); ++i) {
    if (!SameLevel(a.levels[i], b.levels[i])) return false;
  }
  return true;
}

// protobuf reserves a string field's declared length, up to its fixed cap of 50,000,000 bytes
// (kSafeStringSize in google/protobuf/parse_context.h), before it finds that the bytes are not
// there; a nested message's declared length is what it checks that against. So one
// allocation of up to that cap, independent of the input's size, is protobuf's and allowed.
constexpr uint64_t kProtobufStringReserveCap = 50'000'000;

Result<Profile> BoundedParse(std::span<const uint8_t> file) {
  fuzz::AllocBound bound("fuzz_profile", file.size(), 128, 1024, kProtobufStringReserveCap);
  return Profile::Parse(file);
}

void CheckParsed(const Profile& p) {
  if (Status s = p.Validate(); !s.ok()) Fail("parsed profile does not validate", s.ToString());
  const size_t expected = size_t{p.layers} * kProfileSlots * p.kv_heads;
  if (p.bases.size() != expected) Fail("bases count does not match the shape");
  for (const ProfileBasis& b : p.bases) {
    if (b.mean.empty()) continue;
    const size_t d = p.head_dim;
    if (b.mean.size() != d || b.forward.size() != d * d || b.inverse.size() != d * d ||
        b.variance.size() != d) {
      Fail("basis sizes do not match head_dim");
    }
    // levels(bits) indexes codebook_levels: it must stay inside for every bit-width.
    if (b.has_codebooks()) {
      const auto top = b.levels(kProfileMaxBits);
      if (top.data() + top.size() != b.codebook_levels.data() + b.codebook_levels.size()) {
        Fail("codebook levels do not end where the 8-bit codebook ends");
      }
    }
  }
  for (const ProfileLevel& lv : p.levels) {
    if (p.FindLevel(lv.name) != &lv) Fail("FindLevel does not find a level by its name", lv.name);
    if (lv.budgets.size() != size_t{p.layers} * 2) Fail("budgets count");
  }
  (void)p.has_prerope();

  // Round trip: serialize, parse again, same profile; serialize again, same bytes.
  auto bytes = p.Serialize();
  if (!bytes.ok()) Fail("parsed profile does not serialize", bytes.status().ToString());
  auto again = Profile::Parse(*bytes);
  if (!again.ok()) Fail("serialized profile does not parse", again.status().ToString());
  if (!SameProfile(p, *again)) Fail("serialize + parse changed the profile");
  auto bytes2 = again->Serialize();
  if (!bytes2.ok() || *bytes2 != *bytes) Fail("serialization is not deterministic");
  auto id = p.Id();
  if (!id.ok() || *id != ProfileIdOfBytes(*bytes)) Fail("Id() is not the hash of Serialize()");
}

}  // namespace
}  // namespace kvwire

bool KvwireFuzzAccepts(std::span<const uint8_t> input) {
  return kvwire::Profile::Parse(kvwire::ProfileBytes(input)).ok();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvwire;
  // Bodies with invalid UTF-8 strings make protobuf log an error per input: noise.
  static const bool initialized = (google::protobuf::SetLogHandler(nullptr), true);
  (void)initialized;
  const std::vector<uint8_t> file = ProfileBytes({data, size});
  auto p = BoundedParse(file);
  auto p2 = Profile::Parse(file);
  if (p.ok() != p2.ok()) Fail("parse outcome is not deterministic");
  if (!p.ok()) {
    const StatusCode c = p.status().code();
    if (c != StatusCode::kCorrupt && c != StatusCode::kTruncated &&
        c != StatusCode::kVersionMismatch) {
      Fail("unexpected error code", p.status().ToString());
    }
    if (p.status().message().empty()) Fail("error without a message");
    if (p.status().ToString() != p2.status().ToString()) Fail("error is not deterministic");
    return 0;
  }
  if (!SameProfile(*p, *p2)) Fail("parse result is not deterministic");
  CheckParsed(*p);
  return 0;
}
