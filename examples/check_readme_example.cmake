# Checks that the ```cpp block of README.md is examples/readme_example.cpp, byte for byte, so the
# example a reader copies is the one ctest compiles and runs.
#   cmake -DREADME=README.md -DSOURCE=examples/readme_example.cpp -P check_readme_example.cmake
cmake_minimum_required(VERSION 3.25)
file(READ "${README}" readme)
file(READ "${SOURCE}" source)
string(FIND "${readme}" "\n```cpp\n" begin)
if(begin EQUAL -1)
  message(FATAL_ERROR "${README} has no ```cpp block")
endif()
math(EXPR begin "${begin} + 8")
string(SUBSTRING "${readme}" ${begin} -1 rest)
string(FIND "${rest}" "\n```" end)
if(end EQUAL -1)
  message(FATAL_ERROR "the ```cpp block of ${README} is not closed")
endif()
math(EXPR end "${end} + 1")
string(SUBSTRING "${rest}" 0 ${end} block)
if(NOT "${block}" STREQUAL "${source}")
  message(FATAL_ERROR "the ```cpp block of ${README} differs from ${SOURCE}: "
                      "paste the file into the block (or the block into the file)")
endif()
message(STATUS "README.md's ```cpp block is ${SOURCE}")
