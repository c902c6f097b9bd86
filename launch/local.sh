#!/usr/bin/env bash
# Runs NPROC clipjax processes on this machine as one multi-host job, with a coordinator on 127.0.0.1.
# For testing the multi-host code paths without a cluster:
#
#   XLA_FLAGS=--xla_force_host_platform_device_count=2 \
#     launch/local.sh 2 -- --config=configs/demo.py:smoke --workdir=runs/local2
#
# Every process gets the same arguments plus --coordinator_address/--num_processes/--process_id. On the
# CPU each process has the devices XLA_FLAGS gives it; with GPUs, GPUS_PER_PROCESS=N gives process i the GPUs
# i*N .. i*N+N-1 (JAX_LOCAL_DEVICE_IDS). SIGTERM / SIGINT stop every process (they save and exit 75): a Ctrl-C
# reaches them from the terminal and is passed on as SIGTERM, since a second SIGINT means "abort now". The
# exit status is the first non-zero one among the processes, else 0. Environment: PYTHON (default
# python), CLIPJAX_PORT (default: a free port), GPUS_PER_PROCESS.
set -uo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "usage: launch/local.sh NPROC -- --config=... --workdir=... [--config.KEY=VALUE ...]" >&2
  exit 2
fi
nproc=$1
shift
[[ ${1:-} == "--" ]] && shift
python=${PYTHON:-python}
port=${CLIPJAX_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
forward() { kill -s "$1" "${pids[@]}" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward TERM' INT
for ((i = 0; i < nproc; i++)); do
  if [[ -n ${GPUS_PER_PROCESS:-} ]]; then
    JAX_LOCAL_DEVICE_IDS=$(seq -s, $((i * GPUS_PER_PROCESS)) $((i * GPUS_PER_PROCESS + GPUS_PER_PROCESS - 1)))
    export JAX_LOCAL_DEVICE_IDS
  fi
  "$python" -m clipjax.main "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$nproc" --process_id="$i" &
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  # `wait` returns early when a trapped signal arrives; wait again until the process has really exited.
  while true; do
    wait "$pid"
    code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  if [[ $status -eq 0 && $code -ne 0 ]]; then status=$code; fi
done
exit "$status"
