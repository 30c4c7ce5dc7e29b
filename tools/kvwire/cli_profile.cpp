#include "cli_profile.h"

#include <iostream>

namespace kvwire::cli {

Result<LoadedProfile> LoadProfileArg(const std::string& path) {
  LoadedProfile out;
  if (path.empty()) return out;
  KVWIRE_ASSIGN_OR_RETURN(Profile p, Profile::Load(path));
  KVWIRE_ASSIGN_OR_RETURN(out.id, p.Id());
  out.profile = std::make_unique<Profile>(std::move(p));
  return out;
}

Status CheckStreamProfile(const std::string& stream_id, const LoadedProfile& loaded) {
  KVWIRE_RETURN_ERROR_IF(
      !stream_id.empty() && loaded.profile && stream_id != loaded.id, kInvalidArgument,
      "the stream was encoded with profile " + stream_id + ", --profile is " + loaded.id);
  return Status::Ok();
}

void WarnFingerprint(const std::string& what, const std::string& fingerprint,
                     const LoadedProfile& loaded) {
  if (!loaded.profile || fingerprint.empty() || loaded.profile->model_fingerprint.empty()) return;
  if (fingerprint == loaded.profile->model_fingerprint) return;
  std::cerr << "warning: " << what << " fingerprint " << fingerprint
            << " differs from the profile's model " << loaded.profile->model_fingerprint
            << " (calibrated on another model or checkpoint)\n";
}

}  // namespace kvwire::cli
