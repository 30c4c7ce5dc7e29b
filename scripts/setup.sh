#!/usr/bin/env bash
# Installs the Debian packages kvwire needs (idempotent: quick when already present), then
# configures and builds into ${KVWIRE_BUILD_DIR:-build}. Extra arguments go to cmake configure.
# Used by both README commands (scripts/demo.sh and scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  libprotobuf-dev protobuf-compiler libzstd-dev libasio-dev libssl-dev
  libucx-dev ucx-utils
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev
  clang libclang-rt-14-dev
  iproute2
  python3 python3-numpy python3-torch libopenblas0-pthread
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "[setup] all ${#packages[@]} Debian packages already installed"
fi

build_dir="${KVWIRE_BUILD_DIR:-build}"
jobs="${KVWIRE_JOBS:-$(nproc)}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${KVWIRE_BUILD_TYPE:-RelWithDebInfo}" "$@"
cmake --build "$build_dir" -j "$jobs"
