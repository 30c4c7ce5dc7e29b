#!/usr/bin/env bash
# README command 2: install what is missing, build, run the whole test suite (ctest), then the
# same suite under AddressSanitizer + UndefinedBehaviorSanitizer in a second build tree.
# KVWIRE_SKIP_SANITIZE=1 skips the sanitizer pass (for quick local runs only; CI runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${KVWIRE_JOBS:-$(nproc)}"

# The tests the last ctest run in build tree $1 skipped, each with the reason it printed
# ("SKIPPED: ..."): a skip is never silent, nor counted as a pass.
skip_summary() {
  local log="$1/Testing/Temporary/LastTest.log" lines
  [ -f "$log" ] || return 0
  lines=$(awk '
    /^[0-9]+\/[0-9]+ Test: / { name = $3; reason = "" }
    # gtest prints "file:line: Skipped" and then the test'"'"'s message.
    skipped_at { skipped_at = 0; if (reason == "") reason = $0; sub(/^SKIPPED: /, "", reason) }
    /: Skipped$/ { skipped_at = 1 }
    /^\[  SKIPPED \] [0-9]+ tests?, listed below/ { if (!(name in why)) why[name] = reason }
    END { for (t in why) printf "  %s: %s\n", t, why[t] == "" ? "(no reason printed)" : why[t] }
  ' "$log" | sort)
  if [ -z "$lines" ]; then
    echo "[test] 0 tests skipped"
  else
    echo "[test] $(wc -l <<<"$lines") test(s) skipped, each with its reason:"
    echo "$lines"
  fi
}

scripts/setup.sh
echo "[test] ctest (RelWithDebInfo)"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600
skip_summary build

if [ "${KVWIRE_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "[test] ctest under ASan+UBSan"
  # CUDA code is not instrumented by the sanitizers; the kernels are covered by the first pass.
  KVWIRE_BUILD_DIR=build-asan KVWIRE_BUILD_TYPE=RelWithDebInfo scripts/setup.sh -DKVWIRE_SANITIZE=address,undefined \
    -DKVWIRE_WITH_CUDA=OFF
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900 -LE no_sanitize
  skip_summary build-asan
fi
echo "[test] all passed"
