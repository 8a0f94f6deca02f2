#!/usr/bin/env bash
# Builds ditlab against LibTorch 2.x (Debian trixie's libtorch-dev 2.6, CPU) and runs its tests,
# on a Debian 12 machine whose own LibTorch is 1.13: a trixie root in $TORCH2_ROOT (default
# /opt/trixie, made once with debootstrap, about 2 GB) with the source tree mounted read-only at
# /src and the build in /build. This runs the LibTorch 2.x code paths for real (the fused AdamW,
# scaled_dot_product_attention, the 2.4 autocast API); the CUDA-only code needs a GPU
# (scripts/cuda_check.sh) or at least scripts/check_torch2.sh, which compiles it.
#
#   sudo bash scripts/torch2_chroot.sh [ctest arguments, e.g. -R AdamW]
#
# Needs root (debootstrap, chroot, mount) and Debian's package archive.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${TORCH2_ROOT:-/opt/trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [[ ! -x $root/usr/bin/cmake ]]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
  debootstrap --variant=minbase \
    --include=g++,cmake,ninja-build,libtorch-dev,libyaml-cpp-dev,libspdlog-dev,zlib1g-dev,libopenblas0-pthread,python3-torch,python3-numpy,python3-yaml \
    trixie "$root" "$mirror"
  # trixie has Catch2 3; the tests are written for Catch2 2 (header-only): take this machine's.
  for f in $(dpkg -L catch2 | grep -v /share/doc); do
    [[ -f $f ]] && mkdir -p "$root$(dirname "$f")" && cp "$f" "$root$f"
  done
fi
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mkdir -p "$root/src"
mountpoint -q "$root/src" || { mount --bind "$PWD" "$root/src" && mount -o remount,bind,ro "$root/src"; }
chroot "$root" bash -c '
set -e
cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDITLAB_WITH_OPENCV=OFF >/build.cmake.log 2>&1 ||
  { tail -30 /build.cmake.log; exit 1; }
python3 -c "import torch; print(\"LibTorch\", torch.__version__)"
cmake --build /build -j"$(nproc)" -- -k 0 >/build.log 2>&1 || { grep -E "error|FAILED" /build.log | head -30; exit 1; }
cd /build && ctest -j"$(nproc)" --timeout 600 "$@"
' bash "$@"
