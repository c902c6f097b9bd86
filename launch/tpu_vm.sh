#!/usr/bin/env bash
# Runs clipjax on a Cloud TPU VM pod slice: create the slice, install this checkout on every worker, run
# the same command on all workers, stream worker 0's log, copy worker 0's workdir back, delete the slice.
#
#   GCSFUSE=BUCKET launch/tpu_vm.sh NAME ZONE ACCELERATOR_TYPE -- \
#       --config=configs/pretrain/vit_b16_datacompdr.py:cluster=v4-64 \
#       --config.data.path='/mnt/BUCKET/datacomp/{00000000..00139999}.tar' ... --workdir=runs/b16_dr \
#       --config.checkpoint_dir=gs://BUCKET/runs/b16_dr/checkpoints
#
# e.g. NAME=clipjax-b16 ZONE=us-central2-b ACCELERATOR_TYPE=v4-64. The workers run with CLIPJAX_DISTRIBUTED=1
# and find each other through the VM metadata (clipjax.distributed). Data shards are read through the file
# system: GCSFUSE=BUCKET[,BUCKET...] mounts each bucket read-only at /mnt/BUCKET on every worker.
# Checkpoints go to a bucket directly (orbax writes gs:// paths; every worker writes its shards). --workdir
# (config, metrics, TensorBoard; written by worker 0) stays on worker 0's disk and is copied back here, to
# runs/NAME/DATE-TIME/, before the slice is deleted (checkpoints too if left there: set checkpoint_dir).
#
# Environment: PROJECT (default: gcloud's), VERSION (TPU software; default by accelerator: v6e
# v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, older tpu-ubuntu2204-base), SPOT=1 for a
# preemptible slice, KEEP=1 to keep the slice afterwards (one this script did not create is always kept),
# RETRIES (default 0): after a preemption (exit 75, or the slice lost under us) recreate the slice and run the
# same command again, which resumes from the last checkpoint, up to this many times. EXTRA_PIP: more packages.
set -euo pipefail

if [[ $# -lt 4 || $4 != "--" ]]; then
  echo "usage: launch/tpu_vm.sh NAME ZONE ACCELERATOR_TYPE -- CLIPJAX_ARGS..." >&2
  exit 2
fi
name=$1 zone=$2 type=$3
shift 4
project=()
[[ -n ${PROJECT:-} ]] && project=(--project="$PROJECT")
case $type in
  v6e*) default_version=v2-alpha-tpuv6e ;;
  v5p*) default_version=v2-alpha-tpuv5 ;;
  v5litepod* | v5e*) default_version=v2-alpha-tpuv5-lite ;;
  *) default_version=tpu-ubuntu2204-base ;;
esac
version=${VERSION:-$default_version}
spot=()
[[ ${SPOT:-0} == 1 ]] && spot=(--spot)
retries=${RETRIES:-0}
here=$(cd "$(dirname "$0")/.." && pwd)
workdir=""
for arg in "$@"; do [[ $arg == --workdir=* ]] && workdir=${arg#--workdir=}; done
# The command each worker runs, quoted once for the remote shell that `bash -c` gets it from: any argument
# (quotes, braces, spaces) reaches clipjax unchanged.
job="$(printf '%q ' python3 -m clipjax.main "$@") > run.log 2>&1; echo \$? > run.status"
created=0

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$zone" "${project[@]}"; }
on_all() { tpu ssh "$name" --worker=all --command="$1"; }

create() {
  tpu create "$name" --accelerator-type="$type" --version="$version" "${spot[@]}"
  created=1
}

install() {
  # This checkout as git sees it (tracked and untracked files, not what .gitignore names: no virtual
  # environments, no run outputs), to every worker; reinstalled on every attempt, so the code is this one.
  git -C "$here" ls-files -z --cached --others --exclude-standard | tar -C "$here" --null -T - -czf /tmp/clipjax-src.tgz
  tpu scp /tmp/clipjax-src.tgz "$name":~/clipjax-src.tgz --worker=all
  on_all "mkdir -p ~/clipjax && tar -xzf ~/clipjax-src.tgz -C ~/clipjax && cd ~/clipjax && \
    python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e . ${EXTRA_PIP:-}"
  local bucket buckets=${GCSFUSE:-}
  for bucket in ${buckets//,/ }; do
    on_all "command -v gcsfuse > /dev/null || { \
      echo 'deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main' | \
        sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null && \
      curl -fsS https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && \
      sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; } && \
      sudo mkdir -p /mnt/$bucket && sudo chown \$USER /mnt/$bucket && \
      { mountpoint -q /mnt/$bucket || gcsfuse --implicit-dirs -o ro $bucket /mnt/$bucket; }"
  done
}

run() {
  # Start on every worker in the background, each writing its own log and exit status, then follow
  # worker 0's log until its process ends.
  on_all "cd ~/clipjax && rm -f run.log run.status && \
    CLIPJAX_DISTRIBUTED=1 nohup bash -c $(printf %q "$job") > /dev/null 2>&1 &"
  tpu ssh "$name" --worker=0 --command="cd ~/clipjax && for i in \$(seq 300); do [ -f run.log ] && break; sleep 1; done; \
    [ -f run.log ] || { echo 'clipjax did not start on worker 0' >&2; exit 1; }; \
    tail -n +1 -f run.log & while [ ! -f run.status ]; do sleep 10; done; sleep 2; kill %1; exit \$(cat run.status)"
}

copy_back() {
  # The workdir holds what worker 0 alone wrote (config, metrics, TensorBoard): copied back before the slice
  # goes, each slice's to a directory of its own (a resumed run on a new slice starts a new workdir there).
  [[ -n $workdir ]] || return 0
  local into
  into="$here/runs/$name/$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$into"
  tpu ssh "$name" --worker=0 --command="cd ~/clipjax && tar -czf ~/workdir.tgz -C $(printf %q "$workdir") ." &&
    tpu scp "$name":~/workdir.tgz "$into/workdir.tgz" --worker=0 &&
    tar -xzf "$into/workdir.tgz" -C "$into" && rm "$into/workdir.tgz" &&
    echo "tpu_vm.sh: worker 0's workdir copied to ${into#"$here"/}" >&2
}

cleanup() {
  [[ $created == 1 && ${KEEP:-0} != 1 ]] || return 0
  copy_back || echo "tpu_vm.sh: could not copy the workdir back from worker 0" >&2
  tpu delete "$name" --quiet || true
}
trap cleanup EXIT

attempt=0
while true; do
  tpu describe "$name" > /dev/null 2>&1 || create
  install
  set +e
  run
  status=$?
  set -e
  # 75: clipjax saved a checkpoint after SIGTERM (a maintenance event); 255: ssh lost the worker.
  if [[ ($status -eq 75 || $status -eq 255) && $attempt -lt $retries ]]; then
    attempt=$((attempt + 1))
    echo "tpu_vm.sh: run stopped with status $status; attempt $attempt of $retries resumes it" >&2
    if ! tpu describe "$name" --format='value(state)' 2>/dev/null | grep -q READY; then
      copy_back || true # the workdir of the attempt so far, before the slice is replaced
      tpu delete "$name" --quiet || true
    fi
    continue
  fi
  exit "$status"
done
