# KVWIRE_WITH_PYTHON (AUTO|ON|OFF) -> KVWIRE_HAVE_PYTHON: the pybind11 module kvwire._kvwire
# (python/). Needs Python 3 (interpreter and module headers) and pybind11's CMake package.
# Included at the top level, not wrapped in a function: pybind11_add_module reads the variables
# that find_package(Python3) and find_package(pybind11) set.
set(KVWIRE_WITH_PYTHON AUTO CACHE STRING "Build the Python module kvwire: AUTO|ON|OFF")
string(TOUPPER "${KVWIRE_WITH_PYTHON}" kvwire_python_mode)
if(NOT kvwire_python_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "KVWIRE_WITH_PYTHON=${KVWIRE_WITH_PYTHON}: expected AUTO, ON or OFF")
endif()
set(KVWIRE_HAVE_PYTHON FALSE)
if(KVWIRE_SANITIZE AND NOT kvwire_python_mode STREQUAL "OFF")
  # A sanitized extension module cannot be loaded by an unsanitized interpreter.
  message(STATUS "kvwire: KVWIRE_WITH_PYTHON=${kvwire_python_mode} -> OFF "
                 "(KVWIRE_SANITIZE='${KVWIRE_SANITIZE}': an instrumented module needs an "
                 "instrumented python)")
  set(kvwire_python_mode OFF)
endif()
if(NOT kvwire_python_mode STREQUAL "OFF")
  # Debian's interpreter is the one with numpy and torch; prefer it over one found first on PATH.
  if(NOT DEFINED Python3_EXECUTABLE AND EXISTS /usr/bin/python3)
    set(Python3_EXECUTABLE /usr/bin/python3 CACHE FILEPATH "Python 3 interpreter")
  endif()
  find_package(Python3 COMPONENTS Interpreter Development.Module QUIET)
  if(Python3_FOUND)
    find_package(pybind11 CONFIG QUIET)
    if(pybind11_FOUND)
      set(KVWIRE_HAVE_PYTHON TRUE)
    endif()
  endif()
  if(kvwire_python_mode STREQUAL "ON" AND NOT KVWIRE_HAVE_PYTHON)
    message(FATAL_ERROR "KVWIRE_WITH_PYTHON=ON but Python 3 development files "
                        "(python3-dev) or pybind11 (pybind11-dev) were not found")
  endif()
endif()
set(kvwire_python_found "${KVWIRE_HAVE_PYTHON}")
if(KVWIRE_HAVE_PYTHON)
  string(APPEND kvwire_python_found " (${Python3_EXECUTABLE}, pybind11 ${pybind11_VERSION})")
endif()
message(STATUS "kvwire: KVWIRE_WITH_PYTHON=${kvwire_python_mode} -> PYTHON ${kvwire_python_found}")
