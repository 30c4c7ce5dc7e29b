// Turning a kvwire::Status into a Python exception (kvwire.errors).
#pragma once

#include <pybind11/pybind11.h>

#include <exception>
#include <string>

#include "kvwire/status.h"

namespace kvwire::python {

/// Thrown by the binding code for a failed Status; the translator registered by
/// RegisterErrorTranslator raises kvwire.errors.Error (or its subclass for the code) from it.
class StatusError : public std::exception {
 public:
  explicit StatusError(Status status) : status_(std::move(status)), what_(status_.message()) {}
  const Status& status() const { return status_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  Status status_;
  std::string what_;
};

/// Throws StatusError when `status` is not ok.
inline void ThrowIfError(const Status& status) {
  if (!status.ok()) throw StatusError(status);
}

/// The value of `result`, or throws StatusError.
template <typename T>
T ValueOrThrow(Result<T> result) {
  if (!result.ok()) throw StatusError(result.status());
  return std::move(result).value();
}

void RegisterErrorTranslator();

}  // namespace kvwire::python
