# Run by ctest (see CMakeLists.txt): install -> configure downstream -> build -> run. The
# downstream program (downstream/main.cpp) links only kvwire::kvwire: a codec round trip, a
# Sender -> Receiver transfer over tcp on 127.0.0.1 checked byte for byte, and one call into each
# further installed library.
foreach(var KVWIRE_BINARY_DIR DOWNSTREAM_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "package_test.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE RelWithDebInfo)
endif()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/downstream-build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(step name)
  message(STATUS "[package] ${name}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[package] ${name} failed (${rc}):\n${out}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

step(install ${CMAKE_COMMAND} --install ${KVWIRE_BINARY_DIR} --prefix ${prefix})
foreach(f include/kvwire/codec.h include/kvwire/stream.h include/kvwire/kv_file.h
          include/kvwire/transport.h include/kvwire/session.h bin/kvwire)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "[package] ${f} was not installed into ${prefix}")
  endif()
endforeach()
file(GLOB_RECURSE config LIST_DIRECTORIES false ${prefix}/*/kvwireConfig.cmake)
if(NOT config)
  message(FATAL_ERROR "[package] no kvwireConfig.cmake was installed into ${prefix}")
endif()
step(configure ${CMAKE_COMMAND} -S ${DOWNSTREAM_SOURCE_DIR} -B ${build} -G ${GENERATOR}
     -DCMAKE_BUILD_TYPE=${BUILD_TYPE} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
     -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_FIND_PACKAGE_PREFER_CONFIG=ON)
step(build ${CMAKE_COMMAND} --build ${build})
step(run ${build}/kvwire_downstream)
message("${step_output}")
if(NOT step_output MATCHES "kvwire downstream: OK")
  message(FATAL_ERROR "[package] the downstream program did not report OK")
endif()
step(cli ${prefix}/bin/kvwire --version)
message("[package] installed CLI: ${step_output}")
file(REMOVE_RECURSE ${WORK_DIR})
