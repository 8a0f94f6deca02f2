#!/usr/bin/env bash
# Races `dit bench` against the PyTorch reference step (scripts/reference/bench_reference.py) on
# the same model, batch, device and threads, alternating the contestants round by round so that
# drifting machine load hits both, and prints each one's median step time and the ratio.
#
#   scripts/race.sh --model DiT-S/2 --batch 8 --threads 2 --rounds 3
#   scripts/race.sh --model DiT-XL/2 --batch 256 --device cuda --precision bf16 --compile
#
# --count-ops also counts each contestant's operator calls in one more step after round 1 (not
# timed) and prints them side by side (scripts/compare_ops.py); with --out FILE.jsonl the counts
# are kept as FILE.ops-ditlab.json and FILE.ops-pytorch.json.
#
# Both processes get the same OpenBLAS kernels and allocator settings that `dit` uses on its
# own (OPENBLAS_CORETYPE, glibc's mmap threshold), so on a CPU the gap is framework overhead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dit=${DIT:-$here/../build/dit}
python=${PYTHON:-}
if [[ -z $python ]]; then  # the first Python that has torch (Debian's is /usr/bin/python3)
  for candidate in python3 /usr/bin/python3; do
    if "$candidate" -c 'import torch' 2>/dev/null; then python=$candidate; break; fi
  done
  [[ -n $python ]] || { echo "race.sh: no python3 with torch found; set PYTHON=" >&2; exit 2; }
fi
model=DiT-S/2 batch=8 threads=0 rounds=3 steps=5 warmup=2 device="" precision="" compile=0
size=32 channels=4 out="" count_ops=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --input-size) size=$2; shift 2 ;;
    --in-channels) channels=$2; shift 2 ;;
    --compile) compile=1; shift ;;
    --count-ops) count_ops=1; shift ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "race.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x $dit ]] || { echo "race.sh: $dit not found; build first or set DIT=" >&2; exit 2; }
if [[ -z ${OPENBLAS_CORETYPE:-} ]]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 DITLAB_NO_BLAS_TUNING=1
common=(--model "$model" --batch "$batch" --input-size "$size" --in-channels "$channels"
        --steps "$steps" --warmup "$warmup")
[[ $threads -gt 0 ]] && common+=(--threads "$threads")
[[ -n $device ]] && common+=(--device "$device")
[[ -n $precision ]] && common+=(--precision "$precision")
results=$(mktemp)
scratch=$(mktemp -d)
trap 'rm -f "$results"; rm -rf "$scratch"' EXIT
ops_prefix=$scratch/race
[[ -n $out ]] && ops_prefix=${out%.jsonl}
for ((r = 1; r <= rounds; r++)); do
  ditlab_ops=() pytorch_ops=()
  if [[ $count_ops == 1 && $r == 1 ]]; then
    ditlab_ops=(--count-ops "$ops_prefix.ops-ditlab.json")
    pytorch_ops=(--count-ops "$ops_prefix.ops-pytorch.json")
  fi
  echo "round $r/$rounds: ditlab" >&2
  "$dit" bench "${common[@]}" "${ditlab_ops[@]}" | sed 's/^{/{"impl": "ditlab", /' >>"$results"
  echo "round $r/$rounds: pytorch eager" >&2
  "$python" "$here/reference/bench_reference.py" "${common[@]}" "${pytorch_ops[@]}" >>"$results"
  if [[ $compile == 1 ]]; then
    echo "round $r/$rounds: pytorch compile" >&2
    "$python" "$here/reference/bench_reference.py" "${common[@]}" --compile >>"$results"
  fi
done
[[ -n $out ]] && cp "$results" "$out"
"$python" - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in runs:
    by.setdefault(r["impl"], []).append(r["step_ms_median"])
first = runs[0]
print(f"model {first['model']}, batch {first['batch']}, {first['in_channels']}x{first['input_size']}x"
      f"{first['input_size']}, {first['precision']}, device {first['device']} ({first['device_name']}), "
      f"threads {first['threads']}")
base = statistics.median(by["ditlab"])
print(f"{'contestant':<18}{'step ms (median of rounds)':>28}{'images/s':>12}{'time / ditlab':>16}")
for impl, ms in by.items():
    m = statistics.median(ms)
    print(f"{impl:<18}{m:>28.1f}{first['batch'] / m * 1e3:>12.2f}{m / base:>16.3f}")
PY
if [[ $count_ops == 1 ]]; then
  echo
  echo "operator calls per step (outermost calls, one step after round 1):"
  "$python" "$here/compare_ops.py" --names ditlab pytorch "$ops_prefix.ops-ditlab.json" \
    "$ops_prefix.ops-pytorch.json"
fi
