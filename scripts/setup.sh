#!/usr/bin/env bash
# Installs the Debian packages kvwire needs (idempotent: quick when already present), then
# configures and builds into ${KVWIRE_BUILD_DIR:-build}, and makes `import kvwire` load the Python
# module of that build when it has one. Extra arguments go to cmake configure.
# Used by both README commands (scripts/demo.sh and scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  libprotobuf-dev protobuf-compiler libzstd-dev libxxhash-dev libasio-dev libssl-dev
  libucx-dev ucx-utils
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev
  clang libclang-rt-14-dev
  iproute2
  python3 python3-numpy python3-torch libopenblas0-pthread
  python3-dev pybind11-dev python3-pybind11
)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
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

# The Python module, when this build made one (not in sanitizer builds): a kvwire.pth in the site
# directory of the interpreter it was built for, and of a different python3 on PATH of the same
# version, makes `import kvwire` load it from this build tree, from any directory.
cache="$build_dir/CMakeCache.txt"
if compgen -G "$build_dir/python/kvwire/_kvwire*.so" >/dev/null &&
  [ -z "$(sed -n 's/^KVWIRE_SANITIZE:STRING=//p' "$cache")" ]; then
  py_dir="$(cd "$build_dir/python" && pwd)"
  built_for="$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' "$cache")"
  version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
  interpreters=("$built_for")
  on_path="$(command -v python3 || true)"
  if [ -n "$on_path" ]; then
    on_path_exe="$("$on_path" -c 'import sys; print(sys.executable)')"
    if [ "$on_path_exe" != "$(readlink -f "$built_for")" ] && [ "$on_path_exe" != "$built_for" ] &&
      [ "$(version "$on_path")" = "$(version "$built_for")" ]; then
      interpreters+=("$on_path")
    fi
  fi
  installed=()
  for py in "${interpreters[@]}"; do
    site="$("$py" -c 'import site; print(site.getsitepackages()[0])')"
    $SUDO mkdir -p "$site"
    echo "$py_dir" | $SUDO tee "$site/kvwire.pth" >/dev/null
    installed+=("$site/kvwire.pth ($py)")
  done
  echo "[setup] python: import kvwire loads $py_dir through ${installed[*]}"
fi
