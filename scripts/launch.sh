#!/usr/bin/env bash
# Starts N local processes of COMMAND with the torchrun environment set (RANK, WORLD_SIZE,
# LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), for machines without torchrun.
# Waits for all; if one fails, stops the others and exits with the first failure's code.
#
# usage: scripts/launch.sh --nproc N [--master-port P] -- COMMAND [ARGS...]
set -uo pipefail

nproc="" port="${MASTER_PORT:-29500}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc) nproc="$2"; shift 2 ;;
    --master-port) port="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "launch.sh: unknown option '$1' (usage: --nproc N [--master-port P] -- COMMAND...)" >&2; exit 2 ;;
  esac
done
if [[ -z "$nproc" || ! "$nproc" =~ ^[1-9][0-9]*$ || $# -eq 0 ]]; then
  echo "usage: scripts/launch.sh --nproc N [--master-port P] -- COMMAND [ARGS...]" >&2
  exit 2
fi

pids=()
for ((rank = 0; rank < nproc; rank++)); do
  RANK=$rank WORLD_SIZE=$nproc LOCAL_RANK=$rank LOCAL_WORLD_SIZE=$nproc \
    MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}" MASTER_PORT=$port "$@" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  wait -n -p finished "${running[@]}"
  code=$?
  still=()
  for pid in "${running[@]}"; do [[ $pid == "$finished" ]] || still+=("$pid"); done
  running=("${still[@]}")
  if ((code != 0 && status == 0)); then
    status=$code
    echo "launch.sh: process $finished exited with $code; stopping the others" >&2
    kill "${running[@]}" 2>/dev/null
  fi
done
exit $status
