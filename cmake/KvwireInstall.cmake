include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(DIRECTORY include/kvwire DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS kvwire_codec kvwire_proto EXPORT kvwireTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS kvwire_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT kvwireTargets NAMESPACE kvwire:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvwire)
configure_package_config_file(cmake/kvwireConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/kvwireConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvwire)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/kvwireConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/kvwireConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/kvwireConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvwire)
