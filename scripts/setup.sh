#!/usr/bin/env bash
# Sets up a Debian 12 machine for ditlab and builds it into build/.
# Idempotent: installs only the packages that are missing, then (re)configures and builds.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build ccache git
  libtorch-dev libgloo-dev                 # LibTorch 1.13 (CPU) with c10d and Gloo
  libopenblas0-pthread                     # ~40x faster matrix products than the reference BLAS
  libyaml-cpp-dev libspdlog-dev libopencv-dev catch2 zlib1g-dev
  dataset-fashion-mnist                    # the default dataset, in /usr/share/datasets
  python3-torch python3-matplotlib         # the PyTorch reference (parity tests) and plots
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all Debian packages present"
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
echo "setup: built build/dit and the tests"
