# Compiler flags that decide which bytes and values kvwire computes.
#
# Floating-point contraction is off for every C and C++ target: GCC contracts a * b + c into a
# fused multiply-add by default in C++ wherever the target has FMA (aarch64 always, x86-64 with
# -march levels that include FMA), which changes rounding and so the bytes a codec writes and the
# values it decodes. Code that wants FMA says so with std::fma or an FMA intrinsic, which this
# flag does not touch. CUDA sources pin the same with nvcc's --fmad=false (kernels/).
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-ffp-contract=off>)
endif()

# Instruction-set level of the CPU libraries. On x86-64 the baseline is x86-64-v2 (SSE4.2 and
# POPCNT: the crc32 instruction of CRC32C, the SSE loops of the codecs); wider paths (AVX2,
# AVX-512) are chosen at run time from per-function target attributes. Other processors
# (aarch64 among them) get no -march flag and build for the toolchain's default target.
set(KVWIRE_CPU_FLAGS "")
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|X86_64|AMD64|amd64|x64)$")
  set(KVWIRE_CPU_FLAGS -march=x86-64-v2)
endif()
message(STATUS "kvwire: CPU flags for ${CMAKE_SYSTEM_PROCESSOR}: '${KVWIRE_CPU_FLAGS}'")

# kvwire_optimize(target): -O3 in optimized configurations and the CPU flags above, privately.
function(kvwire_optimize target)
  target_compile_options(${target} PRIVATE $<$<CONFIG:Release,RelWithDebInfo>:-O3>
                         ${KVWIRE_CPU_FLAGS})
endfunction()
