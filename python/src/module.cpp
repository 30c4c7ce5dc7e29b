// kvwire._kvwire: the compiled part of the Python package kvwire (python/kvwire/).
//
// GIL: every call that can block or run long (encode, decode, connect, listen, push, wait,
// next_request) releases it; C++ threads never call into Python.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "errors.h"

PYBIND11_MODULE(_kvwire, m) {
  m.doc() = "kvwire: compressed KV-cache streams and transfers (compiled part)";
  kvwire::python::RegisterErrorTranslator();
  kvwire::python::AddCodecApi(m);
  kvwire::python::AddSessionApi(m);
}
