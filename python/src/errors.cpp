#include "errors.h"

namespace kvwire::python {

namespace py = pybind11;

void RegisterErrorTranslator() {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      // The exception classes live in Python (kvwire/errors.py) so that kvwire.TimeoutError
      // can derive from both kvwire.Error and the builtin TimeoutError.
      py::object make = py::module_::import("kvwire.errors").attr("_from_status");
      py::object exc = make(std::string(StatusCodeName(e.status().code())), e.status().message());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });
}

}  // namespace kvwire::python
