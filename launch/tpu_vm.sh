#!/usr/bin/env bash
# Runs clipjax on a Cloud TPU VM pod slice: create the slice, install this checkout on every worker, run
# the same command on all workers, stream worker 0's log, delete the slice.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR_TYPE -- --config=configs/pretrain/vit_b16_datacompdr.py:cluster=v4-64 \
#       --config.data.path='gs://BUCKET/datacomp/{00000000..00139999}.tar' ... --workdir=/tmp/run \
#       --config.checkpoint_dir=gs://BUCKET/runs/b16_dr/checkpoints
#
# e.g. NAME=clipjax-b16 ZONE=us-central2-b ACCELERATOR_TYPE=v4-64. The hosts find each other by themselves
# (clipjax.distributed detects the slice). Data shards and checkpoints must be reachable from every worker:
# a gs:// bucket (install gcsfs: EXTRA_PIP=gcsfs) or a shared mount. Keep --workdir local or shared; metrics
# are written by worker 0 only.
#
# Environment: PROJECT (default: gcloud's), VERSION (TPU software, default tpu-ubuntu2204-base), SPOT=1
# for a preemptible slice, KEEP=1 to keep the slice afterwards, RETRIES (default 0): after a preemption
# (exit 75, or the slice deleted under us) recreate the slice and run the same command again, which
# resumes from the last checkpoint, up to this many times. EXTRA_PIP: more packages to install.
set -euo pipefail

if [[ $# -lt 4 || $4 != "--" ]]; then
  echo "usage: launch/tpu_vm.sh NAME ZONE ACCELERATOR_TYPE -- CLIPJAX_ARGS..." >&2
  exit 2
fi
name=$1 zone=$2 type=$3
shift 4
args=$(printf '%q ' "$@")
project=()
[[ -n ${PROJECT:-} ]] && project=(--project="$PROJECT")
version=${VERSION:-tpu-ubuntu2204-base}
retries=${RETRIES:-0}
here=$(cd "$(dirname "$0")/.." && pwd)

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$zone" "${project[@]}"; }
on_all() { tpu ssh "$name" --worker=all --command="$1"; }

create() {
  tpu create "$name" --accelerator-type="$type" --version="$version" ${SPOT:+--spot}
  # This checkout, without run outputs, to every worker.
  tar -C "$here" --exclude=.git --exclude=runs --exclude=.venv -czf /tmp/clipjax-src.tgz .
  tpu scp /tmp/clipjax-src.tgz "$name":~/clipjax-src.tgz --worker=all
  on_all "mkdir -p ~/clipjax && tar -xzf ~/clipjax-src.tgz -C ~/clipjax && cd ~/clipjax && \
    pip install -q -U 'jax[tpu]' && pip install -q -e . ${EXTRA_PIP:-}"
}

run() {
  # Start on every worker in the background, each writing its own log and exit status, then follow
  # worker 0's log until its process ends.
  on_all "cd ~/clipjax && rm -f run.status && nohup bash -c 'python -m clipjax.main $args > run.log 2>&1; \
    echo \$? > run.status' > /dev/null 2>&1 &"
  tpu ssh "$name" --worker=0 --command="cd ~/clipjax && until [ -f run.log ]; do sleep 1; done; \
    tail -n +1 -f run.log & while [ ! -f run.status ]; do sleep 10; done; sleep 2; kill %1; exit \$(cat run.status)"
}

cleanup() { [[ ${KEEP:-0} == 1 ]] || tpu delete "$name" --quiet || true; }
trap cleanup EXIT

attempt=0
while true; do
  tpu describe "$name" > /dev/null 2>&1 || create
  set +e
  run
  status=$?
  set -e
  # 75: clipjax saved a checkpoint after SIGTERM (a maintenance event); 255: ssh lost the worker.
  if [[ ($status -eq 75 || $status -eq 255) && $attempt -lt $retries ]]; then
    attempt=$((attempt + 1))
    echo "tpu_vm.sh: run stopped with status $status; attempt $attempt of $retries resumes it" >&2
    tpu describe "$name" --format='value(state)' 2>/dev/null | grep -q READY || { tpu delete "$name" --quiet || true; }
    continue
  fi
  exit "$status"
done
