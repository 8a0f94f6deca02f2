#!/usr/bin/env bash
# Prepares .deps/ on this (Debian 12) machine for the CUDA build on a GPU machine that lacks the
# Debian packages (../shared/cuda-build.md): yaml-cpp, spdlog, fmt, Catch2 and zlib unpacked into
# .deps/root, and Fashion-MNIST into .deps/data/fashion-mnist for the GPU runs and the tests of
# scripts/cuda_check.sh. About 40 MB; the device tool carries it with carry: [".deps"].
#
#   bash scripts/prepare_deps.sh        (then: echo /.deps/ >> .git/info/exclude, if not ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 catch2 zlib1g-dev zlib1g)
mkdir -p .deps/debs .deps/root .deps/data/fashion-mnist
(cd .deps/debs && apt-get download "${packages[@]}" >/dev/null)
for deb in .deps/debs/*.deb; do dpkg -x "$deb" .deps/root; done
rm -rf .deps/debs
source_data=/usr/share/datasets/fashion-mnist
for f in {t10k,train}-{images-idx3,labels-idx1}-ubyte.gz; do
  [[ -f $source_data/$f ]] || { echo "prepare_deps: $source_data/$f is missing (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
  cp "$source_data/$f" .deps/data/fashion-mnist/
done
# What cuda_check.sh links and reads; a missing one would fail minutes into a GPU session.
for f in root/usr/lib/x86_64-linux-gnu/libz.a root/usr/include/zlib.h root/usr/include/yaml-cpp/yaml.h \
         root/usr/include/spdlog/spdlog.h root/usr/include/catch2/catch.hpp \
         data/fashion-mnist/t10k-images-idx3-ubyte.gz; do
  [[ -e .deps/$f ]] || { echo "prepare_deps: .deps/$f is missing after unpacking" >&2; exit 1; }
done
size_mb=$(du -sm .deps | cut -f1)
echo "prepare_deps: .deps is ${size_mb} MB (the device tool carries at most 64 MiB)"
(( size_mb < 60 )) || { echo "prepare_deps: too large to carry" >&2; exit 1; }
