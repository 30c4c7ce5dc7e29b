// `--profile P` of encode/decode/eval: loading and matching a calibration profile.
#pragma once

#include <memory>
#include <string>

#include "kvwire/profile.h"
#include "kvwire/status.h"

namespace kvwire::cli {

/// A loaded profile and its id ("sha256:..."), or nothing when `path` is empty.
struct LoadedProfile {
  std::unique_ptr<Profile> profile;
  std::string id;
  const Profile* get() const { return profile.get(); }
};
Result<LoadedProfile> LoadProfileArg(const std::string& path);

/// kInvalidArgument when a stream names profile `stream_id` and `loaded` has another id (or a
/// stream needs one and none was given is left to the codec, which says so).
Status CheckStreamProfile(const std::string& stream_id, const LoadedProfile& loaded);

/// One warning line on stderr when both fingerprints are known and differ.
void WarnFingerprint(const std::string& what, const std::string& fingerprint,
                     const LoadedProfile& loaded);

}  // namespace kvwire::cli
