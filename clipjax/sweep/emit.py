"""A sweep's commands as a script for somewhere else: a shell script, SLURM arrays, or a TPU VM queue.

Each script names every run not yet done once, in dependency order, with the `python -m clipjax.main` arguments
the sweep would run it with (clipjax/sweep/runs.py: `clipjax_arguments`); runs already done are left out.
Run it from the clipjax checkout, with the sweep's workdir on a file system every machine sees (the runs read
their dependencies' workdirs). `python -m clipjax.sweep --list` and `fit` read the results afterwards, as a
local sweep's.

- shell: the runs one after another; a failed run is named at the end and the runs after it that depend on it
  are skipped.
- slurm: one job array per wave of runs (a wave's runs depend only on earlier waves), each through
  launch/slurm_gpu.sbatch (its resources, requeue on preemption) and after the previous wave has succeeded
  (afterok: a failed run holds the waves after it; fix it and submit the script again).
- tpu: the runs one after another on one TPU VM slice through launch/tpu_vm.sh, kept between runs and deleted
  at the end. The sweep's workdir must be a writable share mounted at the same path here and on every worker
  (e.g. Filestore over NFS): the runs write their workdirs and checkpoints there, their dependents read them
  from there, and `--list` / `fit` read them here. (launch/tpu_vm.sh mounts buckets read-only and copies back
  only worker 0's workdir when it deletes a slice it made: not enough for a sweep.)
"""

from __future__ import annotations

import os
import shlex

from clipjax.errors import ConfigError
from clipjax.sweep.runs import LOG_FILE, STOPPED, clipjax_arguments
from clipjax.sweep.spec import Run, dependency_order
from clipjax.train.workdir import SUMMARY_FILE

KINDS = ("shell", "slurm", "tpu")


def emit(kind: str, spec: str, runs: tuple[Run, ...], done: set[str], workdir: str) -> str:
    """The script (text) of `kind` for the runs of sweep `spec` not in `done`, writing under `workdir`."""
    waves = [[run for run in wave if run.name not in done] for wave in dependency_order(runs)]
    waves = [wave for wave in waves if wave]
    for run in (run for wave in waves for run in wave):
        if any("\n" in argument for argument in clipjax_arguments(run, workdir)):
            raise ConfigError(f"sweep run {run.name!r}: an override holds a line break, which a script line cannot")
    header = [
        "#!/usr/bin/env bash",
        f"# clipjax sweep {spec}: {sum(map(len, waves))} runs ({len(done)} done already are left out), written by",
        f"# python -m clipjax.sweep --emit={kind}. Run it from the clipjax checkout; the runs write to",
        f"# {os.path.abspath(workdir)}, which every machine must see.",
    ]
    body = {"shell": _shell, "slurm": _slurm, "tpu": _tpu}[kind](waves, workdir)
    return "\n".join(header + body) + "\n"


def _quoted(arguments: list[str]) -> str:
    return " ".join(shlex.quote(argument) for argument in arguments)


def _queue(waves: list[list[Run]], workdir: str, launcher: str) -> list[str]:
    """Runs in order through `launcher` (a shell function taking the clipjax arguments); a run whose dependency
    is not done is skipped."""
    lines = [
        f"SWEEP={shlex.quote(os.path.abspath(workdir))}",
        "failed=()",
        "sweep_run() {  # NAME DEPENDENCIES CLIPJAX_ARGS...",
        "  local name=$1 dependencies=$2 dependency",
        "  shift 2",
        f'  if [[ -f $SWEEP/$name/{SUMMARY_FILE} ]]; then echo "$name: done"; return; fi',
        "  for dependency in $dependencies; do",
        f"    if [[ ! -f $SWEEP/$dependency/{SUMMARY_FILE} ]]; then",
        '      echo "$name: blocked ($dependency is not done)"; failed+=("$name"); return',
        "    fi",
        "  done",
        '  echo "$name: running"',
        '  mkdir -p "$SWEEP/$name"',
        f'  {launcher} "$@" >> "$SWEEP/$name/{LOG_FILE}" 2>&1',
        "  local status=$?",
        f"  if [[ $status -eq {STOPPED} ]]; then  # stopped after saving a checkpoint: so is the queue",
        f'    echo "$name: stopped; run this script again to continue"; exit {STOPPED}',
        '  elif [[ $status -eq 0 ]]; then echo "$name: done"; else',
        f'    echo "$name: failed (exit $status; log: $SWEEP/$name/{LOG_FILE})"; failed+=("$name")',
        "  fi",
        "}",
        # Ctrl-C reaches the run too, which saves and exits 75; the queue then stops with it.
        f"trap 'echo \"stopped; run this script again to continue\"; exit {STOPPED}' INT TERM",
        "",
    ]
    for run in (run for wave in waves for run in wave):
        dependencies = shlex.quote(" ".join(run.dependencies))
        lines.append(f"sweep_run {run.name} {dependencies} {_quoted(clipjax_arguments(run, workdir))}")
    return lines


_REPORT = [
    "",
    'if [[ ${#failed[@]} -gt 0 ]]; then echo "not done: ${failed[*]}"; exit 1; fi',
    'echo "every run is done"',
]


def _shell(waves: list[list[Run]], workdir: str) -> list[str]:
    return [
        "set -uo pipefail",
        'clipjax() { python -m clipjax.main "$@"; }',
        *_queue(waves, workdir, "clipjax"),
        *_REPORT,
    ]


def _tpu(waves: list[list[Run]], workdir: str) -> list[str]:
    return [
        "# Set TPU_NAME, TPU_ZONE and TPU_TYPE (e.g. clipjax-sweep us-central2-b v4-64), and GCSFUSE and the",
        "# other variables launch/tpu_vm.sh reads; KEEP_SLICE=1 keeps the slice after the last run. The workdir",
        "# below must be a writable share mounted at this same path here and on every worker (e.g. Filestore).",
        "set -uo pipefail",
        ': "${TPU_NAME:?set TPU_NAME}" "${TPU_ZONE:?set TPU_ZONE}" "${TPU_TYPE:?set TPU_TYPE}"',
        'tpu_run() { KEEP=1 launch/tpu_vm.sh "$TPU_NAME" "$TPU_ZONE" "$TPU_TYPE" -- "$@"; }',
        *_queue(waves, workdir, "tpu_run"),
        "",
        "if [[ ${KEEP_SLICE:-0} != 1 ]]; then",
        '  gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$TPU_ZONE" --quiet || true',
        "fi",
        *_REPORT,
    ]


def _slurm(waves: list[list[Run]], workdir: str) -> list[str]:
    lines = [
        "# Submits one job array per wave; SBATCH_ARGS adds sbatch options (partition, account, nodes).",
        "set -euo pipefail",
        f"SWEEP={shlex.quote(os.path.abspath(workdir))}",
        'mkdir -p "$SWEEP/slurm"',
        "previous=",
    ]
    for number, wave in enumerate(waves):
        arguments = f"$SWEEP/slurm/wave{number}.args"
        lines.append(f"cat > \"{arguments}\" << 'CLIPJAX_ARGS'")  # one line of arguments per array task
        lines += [_quoted(clipjax_arguments(run, workdir)) for run in wave]
        lines.append("CLIPJAX_ARGS")
        lines += [
            f"previous=$(sbatch --parsable --array=0-{len(wave) - 1} --job-name=clipjax-sweep-{number} \\",
            f'  --output="$SWEEP/slurm/wave{number}-%a-%A.out" --export=ALL,CLIPJAX_ARGS_FILE="{arguments}" \\',
            "  ${previous:+--dependency=afterok:$previous} ${SBATCH_ARGS:-} launch/slurm_gpu.sbatch)",
            f'echo "wave {number}: {len(wave)} runs, job $previous"',
        ]
    return lines
