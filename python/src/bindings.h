// The parts of the module, each adding its functions and classes to `m`.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "kvwire/kv_view.h"
#include "kvwire/profile.h"

namespace kvwire::python {

namespace py = pybind11;

/// A loaded profile and its id, shared by whoever uses it (a Sender, a Receiver, an encode).
struct PyProfile {
  std::shared_ptr<const Profile> profile;
  std::string id;
};

/// The profile behind a Python argument (None or kvwire.Profile); null for None.
std::shared_ptr<const PyProfile> ProfileArg(py::handle obj);

/// Metadata from keyword arguments (None: KvMetadata's default).
KvMetadata MetadataArg(int64_t positions_start, py::handle rope_theta, py::handle rope_style,
                       const std::string& model_fingerprint);
py::dict MetadataDict(const KvMetadata& m);

void AddCodecApi(py::module_& m);
void AddSessionApi(py::module_& m);

}  // namespace kvwire::python
