#!/usr/bin/env bash
# Compiles every translation unit of the CPU build again, without linking, against the headers
# of a CUDA build of LibTorch 2.x (Debian trixie's libtorch-cuda-dev 2.6, with the CUDA 12.4 and
# NCCL headers), as a CUDA build would: DITLAB_WITH_CUDA, NCCL instead of Gloo. It checks on a
# machine without a GPU that the 2.x branches of src/common/compat.* and the CUDA-only code
# (graph capture, the fused optimizer, NCCL) compile, so that a short GPU session does not find
# a compile error first. It does not run anything: `scripts/cuda_check.sh` does, on a GPU.
#
#   bash scripts/check_torch2.sh [file-filter-regex]     (after a CPU build in build/)
#
# The packages (about 1 GB to download, 60 MB of headers kept) are unpacked once into
# $TORCH2_HEADERS (default /opt/torch2-headers); nothing is installed into the system.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${TORCH2_HEADERS:-/opt/torch2-headers}
filter=${1:-.}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=(
  pool/contrib/p/pytorch-cuda/libtorch-cuda-dev_2.6.0+dfsg-7+b1_amd64.deb
  pool/contrib/n/nvidia-nccl/libnccl-dev_2.22.3-1-1_amd64.deb
  pool/non-free/n/nvidia-cuda-toolkit/nvidia-cuda-dev_12.4.127~12.4.1-2_amd64.deb
  pool/main/c/cccl/libcu++-dev_2.3.2-2_all.deb
)
if [[ ! -f $root/.complete ]]; then
  echo "fetching LibTorch 2.6 (CUDA), CUDA 12.4 and NCCL headers into $root"
  mkdir -p "$root/tmp"
  for p in "${packages[@]}"; do
    deb=$root/tmp/$(basename "$p")
    curl -sSf -o "$deb" "$mirror/$p" || { echo "cannot fetch $mirror/$p" >&2; exit 1; }
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$root" --wildcards './usr/include/*'
    rm -f "$deb"
  done
  rmdir "$root/tmp"
  touch "$root/.complete"
fi
[[ -f build/compile_commands.json ]] || { echo "build/compile_commands.json missing: build the CPU variant first" >&2; exit 1; }

inc=$root/usr/include
# The CPU build's commands, turned into syntax checks: 2.6's headers ahead of the system's
# 1.13 ones, the CUDA build's definitions instead of Gloo's, the precompiled header's contents
# included as plain text.
/usr/bin/python3 - "$inc" "$filter" >/tmp/check_torch2.commands <<'EOF'
import json, re, shlex, sys
inc, pattern = sys.argv[1], re.compile(sys.argv[2])
for entry in json.load(open("build/compile_commands.json")):
    source = entry["file"]
    if source.endswith(".hxx.cxx") or not pattern.search(source):
        continue
    args = shlex.split(entry["command"])
    out, skip = [], False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("-o", "-include", "-x"):
            skip = True
            continue
        if a in ("-c", "-Winvalid-pch", "-DDITLAB_WITH_GLOO=1", "-DUSE_C10D_GLOO") or a == source:
            continue
        out.append(a)
    out = [args[0], "-fsyntax-only", "-isystem", inc, "-isystem", inc + "/torch/csrc/api/include",
           "-DDITLAB_WITH_CUDA=1", "-DDITLAB_WITH_NCCL=1", "-DUSE_C10D_NCCL", "-DUSE_CUDA",
           "-include", entry["directory"].rsplit("/build", 1)[0] + "/src/pch.h"] + out + [source]
    print(shlex.join(out))
EOF
echo "checking against LibTorch $(grep -m1 -oE '"[0-9]+\.[0-9]+\.[0-9]+' "$inc/torch/csrc/api/include/torch/version.h" | tr -d '"') headers"
# One compiler per core; a failure prints the file and its first errors.
/usr/bin/python3 - "$(nproc)" <<'EOF'
import concurrent.futures, shlex, subprocess, sys
commands = open("/tmp/check_torch2.commands").read().splitlines()
def check(command):
    r = subprocess.run(shlex.split(command), cwd="build", capture_output=True, text=True)
    return command.rsplit(" ", 1)[-1], r.returncode, r.stderr
failed = 0
with concurrent.futures.ThreadPoolExecutor(int(sys.argv[1])) as pool:
    for source, code, err in pool.map(check, commands):
        if code != 0:
            failed += 1
            print("FAIL", source)
            print("\n".join([l for l in err.splitlines() if "error" in l][:8]))
print(f"{len(commands) - failed} of {len(commands)} translation units compile against LibTorch 2.x with CUDA")
sys.exit(1 if failed else 0)
EOF
