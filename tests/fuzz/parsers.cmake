# Fuzz targets of the parsers that read untrusted files and network data (included by
# tests/fuzz/CMakeLists.txt):
#
#   fuzz_profile            Profile::Parse (the profile a receiver fetches, .kvp files)
#   fuzz_kv_dump            ParseKvDump / LoadKvDump (safetensors KV dumps)
#   fuzz_gguf               the GGUF reader and GGUF model loader
#   fuzz_llama2c_model      the llama2.c model reader
#   fuzz_llama2c_tokenizer  the llama2.c tokenizer reader
#
# As the other targets: with KVWIRE_BUILD_FUZZ (clang) each is a libFuzzer binary with ASan and
# UBSan; otherwise it is linked with replay_parser_main.cpp and ctest replays its committed
# corpus tests/fuzz/corpus/<name>/ (label fuzz). make_parser_corpus writes the generated seeds.
#
#   build-fuzz/tests/fuzz/fuzz_gguf -max_total_time=600 -rss_limit_mb=2048 \
#       -malloc_limit_mb=1024 WORK_COPY_OF_tests/fuzz/corpus/gguf

if(KVWIRE_BUILD_FUZZ AND TARGET kvwire_model)
  # Coverage feedback inside the model readers; the sanitizers come with kvwire_codec's
  # PUBLIC options.
  target_compile_options(kvwire_model PRIVATE -fsanitize=fuzzer-no-link)
  # clang refuses to compile the 8-float helpers of the model's kernels (kernels.cpp,
  # attention.cpp) into their pre-AVX "default" clones ("AVX vector return ... without 'avx'
  # enabled changes the ABI"); GCC only warns. The fuzz build therefore assumes an AVX2 host
  # for the whole model library. The readers fuzzed here do not depend on it.
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    target_compile_options(kvwire_model PRIVATE -mavx2)
  endif()
endif()

# kvwire_add_parser_fuzzer(NAME CORPUS LABEL LIBS...): NAME.cpp fuzzing corpus/CORPUS.
function(kvwire_add_parser_fuzzer name corpus label)
  if(KVWIRE_BUILD_FUZZ)
    add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/${name}.cpp)
    target_compile_options(${name} PRIVATE -fsanitize=fuzzer ${KVWIRE_FUZZ_SANITIZERS})
    target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  else()
    add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/${name}.cpp
                   ${CMAKE_CURRENT_SOURCE_DIR}/replay_parser_main.cpp)
  endif()
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${ARGN})
  # Replays the committed corpus: nothing may crash, every seed-* still parses, every bad-* and
  # regression-* is still refused.
  add_test(NAME ${name}_corpus
           COMMAND ${name} -runs=0 ${CMAKE_CURRENT_SOURCE_DIR}/corpus/${corpus})
  set_tests_properties(${name}_corpus PROPERTIES LABELS "fuzz;${label}")
endfunction()

kvwire_add_parser_fuzzer(fuzz_profile profile codec kvwire_codec protobuf::libprotobuf)
kvwire_add_parser_fuzzer(fuzz_kv_dump kv_dump common kvwire_codec nlohmann_json::nlohmann_json)

if(TARGET kvwire_model)
  kvwire_add_parser_fuzzer(fuzz_gguf gguf model kvwire_model)
  kvwire_add_parser_fuzzer(fuzz_llama2c_model llama2c_model model kvwire_model)
  kvwire_add_parser_fuzzer(fuzz_llama2c_tokenizer llama2c_tokenizer model kvwire_model)

  # Seed generator (not a test): make_parser_corpus tests/fuzz/corpus
  add_executable(make_parser_corpus ${CMAKE_CURRENT_SOURCE_DIR}/make_parser_corpus.cpp)
  target_include_directories(make_parser_corpus PRIVATE ${PROJECT_SOURCE_DIR}/src
                             ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(make_parser_corpus PRIVATE kvwire_model)
  target_compile_definitions(make_parser_corpus PRIVATE KVWIRE_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
endif()
