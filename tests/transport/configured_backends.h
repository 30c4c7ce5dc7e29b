// The transport backends this build was configured with, as the build system knows them
// (KVWIRE_BUILT_BACKENDS, from kvwire_transport's KVWIRE_BACKENDS property). A backend listed
// here is part of the product under test: its tests assert that it is available instead of
// skipping when it is not.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#ifndef KVWIRE_BUILT_BACKENDS
#error "KVWIRE_BUILT_BACKENDS must name the configured backends (tests/CMakeLists.txt)"
#endif

namespace kvwire::testing_backends {

inline std::vector<std::string> ConfiguredBackends() {
  std::vector<std::string> out;
  std::string all = KVWIRE_BUILT_BACKENDS;
  size_t begin = 0;
  while (begin <= all.size()) {
    const size_t end = std::min(all.find(',', begin), all.size());
    if (end > begin) out.push_back(all.substr(begin, end - begin));
    begin = end + 1;
  }
  return out;
}

inline bool Configured(const std::string& backend) {
  const auto all = ConfiguredBackends();
  return std::find(all.begin(), all.end(), backend) != all.end();
}

}  // namespace kvwire::testing_backends
