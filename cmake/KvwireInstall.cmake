# Installs the libraries, their public headers, the CLI and the CMake package (find_package(kvwire)
# -> kvwire::kvwire and one kvwire::<library> per library). Expects KVWIRE_LIBRARIES and the
# umbrella target kvwire (top-level CMakeLists.txt).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# Every public header with the library that implements it. A header is installed only when its
# library is built in this configuration (model.h without the model runner, cuda_codec.h without
# CUDA are not), and a header missing from this list stops the configure: nothing is installed
# that a downstream project could include but not link.
set(kvwire_header_library
    codec.h=kvwire_codec
    kv_file.h=kvwire_codec
    kv_view.h=kvwire_codec
    profile.h=kvwire_codec
    status.h=kvwire_codec
    stream.h=kvwire_codec
    transport.h=kvwire_transport
    session.h=kvwire_transport
    model.h=kvwire_model
    diagnostics.h=kvwire_diagnostics
    cuda_codec.h=kvwire_cuda)
file(GLOB kvwire_public_headers RELATIVE ${PROJECT_SOURCE_DIR}/include/kvwire
     CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/include/kvwire/*.h)
set(kvwire_installed_headers "")
foreach(header IN LISTS kvwire_public_headers)
  set(lib "")
  foreach(pair IN LISTS kvwire_header_library)
    if(pair MATCHES "^([^=]+)=(.+)$" AND CMAKE_MATCH_1 STREQUAL header)
      set(lib ${CMAKE_MATCH_2})
    endif()
  endforeach()
  if(lib STREQUAL "")
    message(FATAL_ERROR "include/kvwire/${header}: no library is named for it in "
                        "cmake/KvwireInstall.cmake (kvwire_header_library)")
  endif()
  if(TARGET ${lib})
    list(APPEND kvwire_installed_headers ${PROJECT_SOURCE_DIR}/include/kvwire/${header})
  else()
    message(STATUS "kvwire: include/kvwire/${header} not installed (${lib} is not built)")
  endif()
endforeach()
install(FILES ${kvwire_installed_headers} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvwire)

install(TARGETS ${KVWIRE_LIBRARIES} kvwire EXPORT kvwireTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS kvwire_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT kvwireTargets NAMESPACE kvwire:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvwire)

# What kvwireConfig.cmake must find for the exported link interfaces: the libraries are static,
# so their private dependencies (zstd, OpenSSL, UCX, ...) reach the downstream link line.
get_target_property(KVWIRE_PACKAGE_BACKENDS kvwire_transport KVWIRE_BACKENDS)
set(KVWIRE_PACKAGE_NEEDS_UCX OFF)
if("ucx" IN_LIST KVWIRE_PACKAGE_BACKENDS)
  set(KVWIRE_PACKAGE_NEEDS_UCX ON)
endif()
set(KVWIRE_PACKAGE_NEEDS_CUDA OFF)
if(TARGET kvwire_cuda)
  set(KVWIRE_PACKAGE_NEEDS_CUDA ON)
endif()
list(JOIN KVWIRE_PACKAGE_BACKENDS ", " KVWIRE_PACKAGE_BACKENDS_TEXT)
list(JOIN KVWIRE_LIBRARIES ", " KVWIRE_PACKAGE_LIBRARIES_TEXT)
configure_package_config_file(cmake/kvwireConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/kvwireConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvwire)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/kvwireConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/kvwireConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/kvwireConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvwire)
