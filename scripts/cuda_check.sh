#!/usr/bin/env bash
# One pass on a GPU machine: the CUDA build (../shared/cuda-build.md recipe: pip torch's
# LibTorch + Debian's yaml-cpp/spdlog/fmt/Catch2 unpacked in .deps/), the CPU test suite on the
# 2.x build, `dit bench` against the PyTorch reference (eager and torch.compile) on the same GPU,
# CUDA graphs, and a bf16 training run over NCCL. Every stage is time-boxed, so a run cut short still leaves
# its numbers. $LOG_DIR (default $OUT) receives three files only, as the device tool returns few:
# summary.txt and bench.jsonl (written as they grow) and logs.tar.gz (every stage's full log,
# packed on exit).
# Prepare .deps/ first on the CPU machine (scripts/prepare_deps.sh) and carry it.
#
#   LOG_DIR=/tmp/cuda-check bash scripts/cuda_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${LOG_DIR:-${OUT:-/tmp/cuda-check}}
log=$(mktemp -d /tmp/cuda-check-logs.XXXXXX)  # the full logs, packed into $out on exit
mkdir -p "$out"
# summary.txt and bench.jsonl are written in $out as they grow (a run killed by the tool's limit
# runs no trap); the stage logs are packed on exit.
trap 'tar -czf "$out/logs.tar.gz" -C "$log" . 2>/dev/null' EXIT
deadline=$((SECONDS + ${BUDGET_S:-520}))
left() { echo $((deadline - SECONDS)); }
# Stages run in the order $STAGES names them (build always first), most wanted first, so that
# the time box cuts the least wanted; a subset reruns part of the pass.
stages=${STAGES:-tests bench graph extra compile nccl}
stage() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$out/summary.txt"; }

stage "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda, torch._C._GLIBCXX_USE_CXX11_ABI)'
} 2>&1 | tee -a "$out/summary.txt"

stage "configure + build dit"
deps=$PWD/.deps/root/usr
[[ -f $deps/lib/x86_64-linux-gnu/libz.a && -f .deps/data/fashion-mnist/t10k-images-idx3-ubyte.gz &&
   -f .deps/data/fashion-mnist/train-images-idx3-ubyte.gz ]] ||
  { stage "no .deps (run scripts/prepare_deps.sh on the CPU machine and carry .deps); stopping"; exit 1; }
export LD_LIBRARY_PATH=$deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DDITLAB_WITH_OPENCV=OFF \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps" -DTORCH_CUDA_ARCH_LIST=9.0 \
  -DZLIB_LIBRARY="$deps/lib/x86_64-linux-gnu/libz.a" -DZLIB_INCLUDE_DIR="$deps/include" \
  >"$log/build.txt" 2>&1
timeout $(( $(left) - 300 )) cmake --build build-cuda -j 16 --target dit -- -k 0 >>"$log/build.txt" 2>&1
echo "build dit: exit $?" | tee -a "$out/summary.txt"
grep -E "error|FAILED" "$log/build.txt" | head -40 >>"$out/summary.txt"
dit=$PWD/build-cuda/dit
[[ -x $dit ]] || { stage "no dit binary; stopping"; exit 1; }

stage_nccl() {
stage "bf16 training over NCCL (launch.sh, 1 rank)"
rm -rf /tmp/nccl-run
timeout 90 scripts/launch.sh --nproc 1 -- "$dit" train --config configs/debug/dit.yaml \
  train.device=cuda train.precision=bf16 train.grad_reduce_dtype=bf16 train.steps=40 \
  data.path=.deps/data/fashion-mnist data.split=test run.dir=/tmp/nccl-run >"$log/nccl_train.txt" 2>&1
echo "nccl train: exit $?" | tee -a "$out/summary.txt"
grep -E "step 40/|nccl|gradient all-reduce|error" "$log/nccl_train.txt" | head -8 >>"$out/summary.txt"
}

bench() {  # label, timeout, command...
  local label=$1 limit=$2; shift 2
  if (( $(left) < limit )); then echo "skip $label (time)" >>"$out/summary.txt"; return; fi
  echo "== $label" >>"$log/bench_stderr.txt"
  timeout "$limit" "$@" 2>>"$log/bench_stderr.txt" | sed "s|^{|{\"label\": \"$label\", |" |
    tee -a "$out/bench.jsonl" | cut -c1-400 >>"$out/summary.txt"
}
ref=scripts/reference/bench_reference.py

stage_bench() {  # the race: ditlab and PyTorch eager alternating, same model and batch
stage "benchmarks: ditlab against PyTorch eager"
for spec in "DiT-XL/2 64" "DiT-B/2 256" "DiT-S/2 256"; do
  set -- $spec
  bench "ditlab $1 b$2" 60 "$dit" bench --model "$1" --batch "$2" --steps 10 --warmup 3 --device cuda --precision bf16
  bench "pytorch-eager $1 b$2" 60 python3 $ref --model "$1" --batch "$2" --steps 10 --warmup 3 --device cuda --precision bf16
done
}

stage_compile() {
stage "PyTorch torch.compile"
bench "pytorch-compile DiT-B/2 b256" 150 python3 $ref --model DiT-B/2 --batch 256 --steps 10 --warmup 3 --device cuda --precision bf16 --compile
}

stage_extra() {
stage "TF32, DiM's chunked scan, checkpointed blocks, sampling"
bench "ditlab DiT-XL/2 b64 fp32 tf32" 60 "$dit" bench --model DiT-XL/2 --batch 64 --steps 5 --warmup 2 --device cuda --precision fp32
bench "ditlab DiT-XL/2 b64 fp32 no-tf32" 60 "$dit" bench --model DiT-XL/2 --batch 64 --steps 5 --warmup 2 --device cuda --precision fp32 train.tf32=false
bench "ditlab DiM-S/2 b64" 60 "$dit" bench --model DiM-S/2 --batch 64 --steps 5 --warmup 2 --device cuda --precision bf16
bench "ditlab DiT-XL/2 b256 checkpointed" 60 "$dit" bench --model DiT-XL/2 --batch 256 --steps 3 --warmup 1 --device cuda --precision bf16 model.checkpoint_blocks=true
bench "ditlab sample DiT-XL/2 b64" 45 "$dit" bench --sample --model DiT-XL/2 --batch 64 --steps 1 --device cuda sample.steps=50
}

stage_graph() {
stage "CUDA graphs: same training with and without, then S/2 and B/2 timed both ways"
for g in false true; do
  rm -rf /tmp/graph-$g
  if (( $(left) < 70 )); then echo "skip train cuda_graph=$g (time)" | tee -a "$out/summary.txt"; continue; fi
  timeout 60 "$dit" train --config configs/debug/dit.yaml train.device=cuda train.precision=bf16 \
    train.steps=60 train.log_every=20 train.cuda_graph=$g data.path=.deps/data/fashion-mnist \
    data.split=test sample.at_end=false run.dir=/tmp/graph-$g >"$log/graph_train_$g.txt" 2>&1
  echo "train cuda_graph=$g: exit $?" | tee -a "$out/summary.txt"
  grep -iE "error|graph" "$log/graph_train_$g.txt" | head -5 >>"$out/summary.txt"
done
python3 - "$log" <<'PY' 2>&1 | tee -a "$out/summary.txt"
import json, os, sys
if not all(os.path.exists(f"/tmp/graph-{g}/metrics.jsonl") for g in ("false", "true")):
    sys.exit("graph comparison: a run left no metrics.jsonl")
runs = {g: [json.loads(l) for l in open(f"/tmp/graph-{g}/metrics.jsonl")] for g in ("false", "true")}
for a, b in zip(runs["false"], runs["true"]):
    print(f"step {a['step']}: loss eager {a['loss']:.5f} graph {b['loss']:.5f} "
          f"(rel diff {abs(a['loss'] - b['loss']) / abs(a['loss']):.1e}); img/s {a['images_per_sec']:.0f} -> {b['images_per_sec']:.0f}")
PY
for spec in "DiT-S/2 32" "DiT-S/2 256" "DiT-B/2 256"; do
  set -- $spec
  bench "ditlab $1 b$2 eager" 45 "$dit" bench --model "$1" --batch "$2" --steps 10 --warmup 3 --device cuda --precision bf16
  bench "ditlab $1 b$2 graph" 60 "$dit" bench --model "$1" --batch "$2" --steps 10 --warmup 3 --device cuda --precision bf16 train.cuda_graph=true
done
bench "pytorch-eager DiT-S/2 b32" 45 python3 $ref --model DiT-S/2 --batch 32 --steps 10 --warmup 3 --device cuda --precision bf16
}

stage_coretests() {  # the core tests alone, verbose, with TMPDIR set
stage "core tests"
export TMPDIR=/tmp
timeout 100 cmake --build build-cuda -j 16 --target test_core >"$log/build_tests.txt" 2>&1
(cd build-cuda && timeout $(( $(left) - 5 )) ctest -j 16 --timeout 60 -R "base file|safetensors|malformed" \
  --output-on-failure >"$log/ctest.txt" 2>&1)
grep -E "tests passed|Failed|SEGFAULT" "$log/ctest.txt" >>"$out/summary.txt"
}

stage_tests() {
stage "tests (CPU code on the 2.x build)"
# The tests read Fashion-MNIST where Debian puts it; the GPU machine is disposable and run as root.
if [[ ! -e /usr/share/datasets/fashion-mnist ]]; then
  { mkdir -p /usr/share/datasets && cp -r .deps/data/fashion-mnist /usr/share/datasets/; } 2>/dev/null ||
    echo "cannot put Fashion-MNIST into /usr/share/datasets (not root?): its tests will fail" | tee -a "$out/summary.txt"
fi
# At most 5 minutes for building and running the tests, so that the benchmarks still run, and
# never past the budget (a run killed by the tool's limit loses logs.tar.gz).
cap() { local l=$(( $(left) - 10 )); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }
timeout "$(cap 150)" cmake --build build-cuda -j 16 -- -k 0 >"$log/build_tests.txt" 2>&1
echo "build tests: exit $?" | tee -a "$out/summary.txt"
grep -E "error|FAILED" "$log/build_tests.txt" | head -30 >>"$out/summary.txt"
# Which copy of std::filesystem the programs run (pytorch/pytorch#133437; CMakeLists.txt links
# libstdc++ first): the wheel's exported copies, and where the check program binds.
{ echo "libtorch_cpu.so exports $(nm -D --defined-only "$torch_prefix/../../lib/libtorch_cpu.so" 2>/dev/null |
    grep -c ' _ZN[KS]*t10filesystem') std::filesystem symbols; first NEEDED of dit:" \
    "$(readelf -d "$dit" | grep -m1 NEEDED)"
  LD_DEBUG=bindings build-cuda/tests/link_order_check 2>&1 | grep -m2 temp_directory_path; } >>"$out/summary.txt"
(cd build-cuda && timeout "$(cap 150)" ctest -j 16 --timeout 60 --output-on-failure >"$log/ctest.txt" 2>&1)
grep -E "tests passed|\*\*\*|Timeout" "$log/ctest.txt" | head -40 >>"$out/summary.txt"
}

for s in $stages; do
  [[ $s == build ]] && continue
  declare -F "stage_$s" >/dev/null || { stage "unknown stage '$s' (known: bench graph extra compile nccl coretests tests)"; continue; }
  (( $(left) > 20 )) || { stage "no time left for $s"; continue; }
  "stage_$s"
done
stage "done"
