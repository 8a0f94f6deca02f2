#!/usr/bin/env bash
# Starts N local processes of COMMAND with the torchrun environment set (RANK, WORLD_SIZE,
# LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), for machines without torchrun.
# Waits for all; if one fails, stops the others and exits with the first failure's code. On
# SIGINT or SIGTERM it sends the ranks SIGTERM and still waits for all of them (dit train
# checkpoints first), exiting 0 when they all exited 0.
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
# A signal (Ctrl-C, a scheduler's SIGTERM) is passed on to every rank as SIGTERM (dit train then
# checkpoints and exits 0); the script keeps waiting for them all and exits with their status.
signalled=0 trapped=0
trap 'signalled=1 trapped=1; kill "${pids[@]}" 2>/dev/null' INT TERM

# Until the first failure or signal, `wait -n` reports ranks as they end, so that one failing
# stops the others at once. A trapped signal cuts `wait -n` short with `finished` unset, and
# after one bash 5.2's `wait -n` may report a rank twice, with a wrong status, or as "no such
# job" forever: from then on (and whenever nothing finished) the plain waits below take over.
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0 && status == 0 && signalled == 0)); do
  unset finished
  wait -n -p finished "${running[@]}"
  code=$?
  if ((signalled)) || [[ -z "${finished:-}" ]]; then break; fi
  still=()
  for pid in "${running[@]}"; do [[ $pid == "$finished" ]] || still+=("$pid"); done
  running=("${still[@]}")
  if ((code != 0)); then
    status=$code
    echo "launch.sh: process $finished exited with $code; stopping the others" >&2
    kill "${running[@]}" 2>/dev/null
  fi
done
# The ranks left (told to stop after a failure or a signal, or simply awaited where `wait -n`
# lost track): `wait PID` gives a rank's status even after bash has reaped it, so a wait that a
# further signal cut short is simply asked again. After a signal the first failing rank (in rank
# order) sets the exit status, 0 if none failed.
for pid in "${running[@]}"; do
  while :; do
    trapped=0
    wait "$pid"
    code=$?
    ((trapped)) || break
  done
  if ((code != 0 && status == 0)); then
    status=$code
    ((signalled)) || echo "launch.sh: process $pid exited with $code" >&2
  fi
done
exit "$status"
