"""Joining JAX's multi-host runtime: explicit flags, SLURM, or a Cloud TPU pod slice.

Every process of a job runs the same command; after `initialize`, `jax.devices()` lists the devices of all
hosts and a `jax.jit` over a mesh of them runs as one program. Must run before anything touches JAX's
backends (the device count, an array).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from clipjax.errors import ConfigError

# Flags of `python -m clipjax.main` that `initialize` consumes; all three or none.
FLAGS = ("coordinator_address", "num_processes", "process_id")


# Set to 1 by launch/tpu_vm.sh: a Cloud TPU VM slice keeps its workers' addresses in the VM metadata, not in the
# environment, so only the launcher knows the process is one of several; JAX then finds its peers itself.
OPT_IN = "CLIPJAX_DISTRIBUTED"


def detect_cluster() -> str | None:
    """Which cluster this process runs in: "slurm" (a task of a SLURM job step of several tasks), "tpu" (a
    worker of a multi-host TPU slice: GKE's or Multislice's environment, or CLIPJAX_DISTRIBUTED=1 on Cloud TPU
    VMs) or None."""
    # Only srun sets SLURM_STEP_NUM_TASKS: a single process in an allocation of several tasks (SLURM_NTASKS)
    # must not wait for peers that will never start.
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
        return "slurm"
    if os.environ.get(OPT_IN) == "1":
        return "tpu"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def initialize(flags: dict[str, str]) -> str:
    """Starts the multi-host runtime when the job has several processes; returns how ("flags", "slurm",
    "tpu" or "single").

    Args:
      flags: the values of FLAGS given on the command line (none, or all three).

    Raises:
      ConfigError: some but not all of the flags, or values that are not a host:port and integers.
    """
    if flags:
        missing = [name for name in FLAGS if name not in flags]
        if missing:
            raise ConfigError(f"--{' --'.join(missing)} missing: pass all of --{', --'.join(FLAGS)}, or none")
        try:
            num_processes, process_id = int(flags["num_processes"]), int(flags["process_id"])
        except ValueError:
            raise ConfigError("--num_processes and --process_id must be integers") from None
        if ":" not in flags["coordinator_address"] or not 0 <= process_id < num_processes:
            raise ConfigError(
                f"--coordinator_address={flags['coordinator_address']} --process_id={process_id} "
                f"--num_processes={num_processes}: need HOST:PORT and 0 <= process_id < num_processes"
            )
        jax.distributed.initialize(flags["coordinator_address"], num_processes, process_id)
        return "flags"
    cluster = detect_cluster()
    if cluster is None:
        return "single"
    jax.distributed.initialize()  # JAX reads SLURM's environment or the TPU metadata itself
    return cluster


def any_host(flag: bool) -> bool:
    """True on every host if `flag` is true on any (e.g. a stop request that reached one host first)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def sum_over_hosts(values: np.ndarray) -> np.ndarray:
    """Elementwise sum of a same-shaped numpy array over all hosts (every host gets the result)."""
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def same_on_every_host(values: np.ndarray) -> bool:
    """True on every host if `values` (a small integer array of the same shape everywhere) is equal on all."""
    if jax.process_count() == 1:
        return True
    gathered = np.asarray(multihost_utils.process_allgather(values))
    return bool(np.all(gathered == gathered[:1]))
