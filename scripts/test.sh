#!/usr/bin/env bash
# README command 2: install what is missing, build, run the whole test suite (ctest), then the
# same suite under AddressSanitizer + UndefinedBehaviorSanitizer in a second build tree.
# KVWIRE_SKIP_SANITIZE=1 skips the sanitizer pass (for quick local runs only; CI runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${KVWIRE_JOBS:-$(nproc)}"

scripts/setup.sh
echo "[test] ctest (RelWithDebInfo)"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600

if [ "${KVWIRE_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "[test] ctest under ASan+UBSan"
  # CUDA code is not instrumented by the sanitizers; the kernels are covered by the first pass.
  KVWIRE_BUILD_DIR=build-asan KVWIRE_BUILD_TYPE=RelWithDebInfo scripts/setup.sh -DKVWIRE_SANITIZE=address,undefined \
    -DKVWIRE_WITH_CUDA=OFF
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900 -LE no_sanitize
fi
echo "[test] all passed"
