# The control-parser fuzz target (tests/fuzz/fuzz_control_parser.cpp). Included by
# tests/fuzz/CMakeLists.txt. With KVWIRE_BUILD_FUZZ it is a libFuzzer binary; otherwise a
# replayer. Either way ctest replays the corpus in corpus/control/.
add_executable(fuzz_control_parser ${CMAKE_CURRENT_LIST_DIR}/fuzz_control_parser.cpp)
target_include_directories(fuzz_control_parser PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(fuzz_control_parser PRIVATE kvwire_transport)
if(KVWIRE_BUILD_FUZZ)
  target_compile_options(fuzz_control_parser PRIVATE -fsanitize=fuzzer)
  target_link_options(fuzz_control_parser PRIVATE -fsanitize=fuzzer)
else()
  target_compile_definitions(fuzz_control_parser PRIVATE KVWIRE_FUZZ_REPLAY_MAIN=1)
endif()
add_test(NAME fuzz_control_parser_corpus
         COMMAND fuzz_control_parser -runs=0 ${CMAKE_CURRENT_LIST_DIR}/corpus/control)
set_tests_properties(fuzz_control_parser_corpus PROPERTIES LABELS "fuzz;transport")
