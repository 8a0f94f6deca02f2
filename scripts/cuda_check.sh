#!/usr/bin/env bash
# One pass on a GPU machine: the CUDA build (../shared/cuda-build.md recipe: pip torch's
# LibTorch + Debian's yaml-cpp/spdlog/fmt/Catch2 unpacked in .deps/), a bf16 training run over
# NCCL, `dit bench` against the PyTorch reference (eager and torch.compile) on the same GPU, and
# the CPU test suite on the 2.x build. Every stage is time-boxed, so a run cut short still leaves
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
# The graph stage, never yet run on a GPU, comes before the benchmarks measured once already.
stages=${STAGES:-build nccl graph bench extra tests}  # a subset reruns part of the pass
want() { [[ " $stages " == *" $1 "* ]]; }
stage() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$out/summary.txt"; }

stage "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda, torch._C._GLIBCXX_USE_CXX11_ABI)'
} 2>&1 | tee -a "$out/summary.txt"

stage "configure + build dit"
deps=$PWD/.deps/root/usr
[[ -f $deps/lib/x86_64-linux-gnu/libz.a && -f .deps/data/fashion-mnist/t10k-images-idx3-ubyte.gz ]] ||
  { stage "no .deps (run scripts/prepare_deps.sh on the CPU machine and carry .deps); stopping"; exit 1; }
export LD_LIBRARY_PATH=$deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DDITLAB_WITH_OPENCV=OFF \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps" -DTORCH_CUDA_ARCH_LIST=9.0 \
  -DZLIB_LIBRARY="$deps/lib/x86_64-linux-gnu/libz.a" -DZLIB_INCLUDE_DIR="$deps/include" \
  >"$log/build.txt" 2>&1
timeout $(( $(left) - 300 )) cmake --build build-cuda -j 16 --target dit >>"$log/build.txt" 2>&1
echo "build dit: exit $?" | tee -a "$out/summary.txt"
grep -E "error|FAILED" "$log/build.txt" | head -40 >>"$out/summary.txt"
dit=$PWD/build-cuda/dit
[[ -x $dit ]] || { stage "no dit binary; stopping"; exit 1; }

if want nccl; then
stage "bf16 training over NCCL (launch.sh, 1 rank)"
rm -rf /tmp/nccl-run
timeout 90 scripts/launch.sh --nproc 1 -- "$dit" train --config configs/debug/dit.yaml \
  train.device=cuda train.precision=bf16 train.grad_reduce_dtype=bf16 train.steps=40 \
  data.path=.deps/data/fashion-mnist data.split=test run.dir=/tmp/nccl-run >"$log/nccl_train.txt" 2>&1
echo "nccl train: exit $?" | tee -a "$out/summary.txt"
grep -E "step 40/|nccl|gradient all-reduce|error" "$log/nccl_train.txt" | head -8 >>"$out/summary.txt"
fi

bench() {  # label, timeout, command...
  local label=$1 limit=$2; shift 2
  if (( $(left) < limit )); then echo "skip $label (time)" >>"$out/summary.txt"; return; fi
  echo "== $label" >>"$log/bench_stderr.txt"
  timeout "$limit" "$@" 2>>"$log/bench_stderr.txt" | sed "s|^{|{\"label\": \"$label\", |" >>"$out/bench.jsonl"
}
ref=scripts/reference/bench_reference.py
if want bench; then
stage "benchmarks"
for spec in "DiT-XL/2 64" "DiT-B/2 256" "DiT-S/2 256"; do
  set -- $spec
  bench "ditlab $1 b$2" 90 "$dit" bench --model "$1" --batch "$2" --steps 10 --warmup 3 --device cuda --precision bf16
  bench "pytorch-eager $1 b$2" 90 python3 $ref --model "$1" --batch "$2" --steps 10 --warmup 3 --device cuda --precision bf16
done
bench "pytorch-compile DiT-B/2 b256" 150 python3 $ref --model DiT-B/2 --batch 256 --steps 10 --warmup 3 --device cuda --precision bf16 --compile
want extra && bench "ditlab DiT-XL/2 b64 fp32 tf32" 60 "$dit" bench --model DiT-XL/2 --batch 64 --steps 5 --warmup 2 --device cuda --precision fp32
want extra && bench "ditlab DiT-XL/2 b64 fp32 no-tf32" 60 "$dit" bench --model DiT-XL/2 --batch 64 --steps 5 --warmup 2 --device cuda --precision fp32 train.tf32=false
want extra && bench "ditlab DiM-S/2 b64" 90 "$dit" bench --model DiM-S/2 --batch 64 --steps 5 --warmup 2 --device cuda --precision bf16
want extra && bench "ditlab DiT-XL/2 b256 checkpointed" 90 "$dit" bench --model DiT-XL/2 --batch 256 --steps 3 --warmup 1 --device cuda --precision bf16 model.checkpoint_blocks=true
want extra && bench "ditlab sample DiT-XL/2 b64" 60 "$dit" bench --sample --model DiT-XL/2 --batch 64 --steps 1 --device cuda sample.steps=50
cat "$out/bench.jsonl" >>"$out/summary.txt" 2>/dev/null
fi

if want graph; then
stage "CUDA graphs: same training with and without, then S/2 and B/2 timed both ways"
for g in false true; do
  rm -rf /tmp/graph-$g
  if (( $(left) < 130 )); then echo "skip train cuda_graph=$g (time)" | tee -a "$out/summary.txt"; continue; fi
  timeout 120 "$dit" train --config configs/debug/dit.yaml train.device=cuda train.precision=bf16 \
    train.steps=60 train.log_every=20 train.cuda_graph=$g data.path=.deps/data/fashion-mnist \
    data.split=test sample.at_end=false run.dir=/tmp/graph-$g >"$log/graph_train_$g.txt" 2>&1
  echo "train cuda_graph=$g: exit $?" | tee -a "$out/summary.txt"
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
for spec in "DiT-S/2 256" "DiT-S/2 32" "DiT-B/2 256"; do
  set -- $spec
  bench "ditlab $1 b$2 eager" 60 "$dit" bench --model "$1" --batch "$2" --steps 10 --warmup 3 --device cuda --precision bf16
  bench "ditlab $1 b$2 graph" 90 "$dit" bench --model "$1" --batch "$2" --steps 10 --warmup 3 --device cuda --precision bf16 train.cuda_graph=true
done
bench "pytorch-eager DiT-S/2 b32" 60 python3 $ref --model DiT-S/2 --batch 32 --steps 10 --warmup 3 --device cuda --precision bf16
grep '"label": "ditlab DiT-[SB]/2 b[0-9]* \(eager\|graph\)\|b32' "$out/bench.jsonl" >>"$out/summary.txt" 2>/dev/null
fi

if want coretests; then  # the core tests alone, verbose, with TMPDIR set
stage "core tests"
export TMPDIR=/tmp
timeout 100 cmake --build build-cuda -j 16 --target test_core >"$log/build_tests.txt" 2>&1
(cd build-cuda && timeout $(( $(left) - 5 )) ctest -j 16 --timeout 60 -R "base file|safetensors|malformed" \
  --output-on-failure >"$log/ctest.txt" 2>&1)
grep -E "tests passed|Failed|SEGFAULT" "$log/ctest.txt" >>"$out/summary.txt"
fi

if want tests; then
stage "tests (CPU code on the 2.x build)"
timeout $(( $(left) - 40 )) cmake --build build-cuda -j 16 -- -k 0 >"$log/build_tests.txt" 2>&1
echo "build tests: exit $?" | tee -a "$out/summary.txt"
grep -E "error|FAILED" "$log/build_tests.txt" | head -30 >>"$out/summary.txt"
(cd build-cuda && timeout $(( $(left) - 5 )) ctest -j 16 --timeout 120 >"$log/ctest.txt" 2>&1)
grep -E "tests passed|Failed|SEGFAULT" "$log/ctest.txt" >>"$out/summary.txt"
fi
stage "done"
