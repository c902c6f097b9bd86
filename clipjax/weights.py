"""Saved weights: the converted-checkpoint format, and finding a training run's newest parameters.

A converted checkpoint (written by `python -m clipjax.convert`, or kept as a finetuning's `best/`) is a
directory holding `params/` (an orbax checkpoint of the model's variables: {"params": ..., and e.g.
"batch_stats": ...}) and `clipjax_init.json` ({"model": config.model, "normalize": ..., "source": ...,
"towers": ["image", "text"] or ["image"], and e.g. "task", "num_classes", "step", "metric", "value"}). A
training workdir holds `config.json`, whose `checkpoint_dir` (or else `<workdir>/checkpoints`) holds
`<step>/state`; the checkpoint directory itself is accepted too. The newest checkpoint's parameters (and
other model variables) are read without the optimizer state.

This module stands on its own (orbax and clipjax.errors): the converters write through it and the tasks read
through it, without either depending on the training code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from orbax.checkpoint import type_handlers

from clipjax.errors import ConfigError, UserError

METADATA_FILE = "clipjax_init.json"


def save_converted(
    directory: str,
    variables: Any,
    model: ConfigDict,
    normalize: str,
    source: str,
    towers: tuple[str, ...] = ("image", "text"),
) -> None:
    """Writes `variables` ({"params": tree of arrays, ...}) and what they are to `directory` (which must not
    hold converted variables yet).

    Raises:
      UserError: `directory` already holds converted parameters (never overwritten) or is unwritable.
    """
    target = os.path.join(os.path.abspath(directory), "params")
    if os.path.exists(target):
        raise UserError(f"{directory} already holds converted parameters; choose a new --workdir")
    save_whole_arrays_on_cpu()
    try:
        os.makedirs(directory, exist_ok=True)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(target, variables)
        metadata = {"model": model.to_dict(), "normalize": normalize, "source": source, "towers": list(towers)}
        with open(os.path.join(directory, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
    except OSError as e:
        raise UserError(f"cannot write converted parameters to {directory}: {e.strerror or e}") from None


def read_metadata(directory: str) -> dict[str, Any]:
    """{"model": config.model as a dict, "normalize": "clip" | "none", "source": str, "towers": [...]} of an
    init directory: a converted checkpoint, a training workdir or a training run's checkpoint directory.

    Raises:
      ConfigError: `directory` is none of these, or the run it names has no complete checkpoint.
    """
    converted = os.path.join(directory, METADATA_FILE)
    if os.path.isfile(converted):
        with open(converted, encoding="utf-8") as f:
            return json.load(f)
    run = training_run(directory)
    return {
        "model": run.config["model"],
        "normalize": run.config["data"]["normalize"],
        "source": f"{directory} step {run.step}",
    }


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """A training run's newest complete checkpoint: its directory of steps (local or a URL orbax reads),
    the step, and the run's config (a dict)."""

    checkpoints: str
    step: int
    config: dict[str, Any]

    @property
    def state_path(self) -> str:
        return os.path.join(self.checkpoints, str(self.step), "state")


def training_run(directory: str) -> TrainingRun:
    """The run `directory` names: a workdir (its config.json says where the checkpoints went:
    `config.checkpoint_dir`, e.g. gs://..., or <workdir>/checkpoints), or a checkpoint directory itself (the
    run's config is read from the newest checkpoint). Steps are found by orbax, so a save still in progress
    or cut short is never taken.

    Raises:
      ConfigError: no complete checkpoint in the directory the run names, or not a run at all.
    """
    config_file = os.path.join(directory, "config.json")
    config = None
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        checkpoints = config.get("checkpoint_dir") or os.path.join(directory, "checkpoints")
    else:
        checkpoints = directory
    if "://" not in checkpoints:
        checkpoints = os.path.abspath(checkpoints)
    step = _latest_step(checkpoints)
    if step is None:
        where = ""
        if config is not None:
            relative = "" if os.path.isabs(config.get("checkpoint_dir") or "/") else ", a relative path read from here"
            where = f"; its config.json names {checkpoints}{relative}"
        raise ConfigError(
            f"config.init={directory!r} is neither a converted checkpoint ({METADATA_FILE}) nor a training workdir "
            f"or checkpoint directory with a complete checkpoint{where}; convert one with `python -m clipjax.convert` "
            "or point at a pretraining --workdir"
        )
    if config is None:
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
            config = checkpointer.restore(os.path.join(checkpoints, str(step), "loop"))["config"]
    return TrainingRun(checkpoints, step, config)


def load_variables(directory: str, target: Any) -> dict[str, Any]:
    """The model variables saved in `directory` ({"params": ..., other collections}), laid out as `target`
    (the same tree as jax.ShapeDtypeStruct with `sharding` set) says."""
    if os.path.isfile(os.path.join(directory, METADATA_FILE)):
        with ocp.PyTreeCheckpointer() as checkpointer:
            return checkpointer.restore(
                os.path.join(os.path.abspath(directory), "params"),
                args=ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
            )
    # A training checkpoint's state holds the same variables as params + model_state, beside optimizer state.
    wanted = {"params": target["params"], "model_state": {k: v for k, v in target.items() if k != "params"}}
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            training_run(directory).state_path,
            args=ocp.args.PyTreeRestore(
                wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True
            ),
        )
    return {"params": restored["params"], **restored.get("model_state", {})}


def _latest_step(checkpoints: str) -> int | None:
    """The newest finalized step in a directory of orbax steps (None if there is none, or no directory)."""
    try:
        found = ocp.path.step.latest_step_metadata(checkpoints, ocp.path.step.standard_name_format())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Exception as e:  # a bucket without its file system package, permissions: one line, not a traceback
        text = str(e).strip().splitlines()
        reason = text[0] if text else type(e).__name__
        raise ConfigError(f"cannot list the checkpoints in {checkpoints}: {reason}") from None
    return None if found is None else found.step


def read_saved_variables(directory: str) -> dict[str, Any]:
    """Every model variable saved in `directory` (a converted checkpoint or a training workdir's newest
    checkpoint) as host numpy arrays, {"params": ..., other collections}, without reading optimizer state.

    Raises:
      ConfigError: `directory` holds neither (see `training_run`).
    """
    if os.path.isfile(os.path.join(directory, METADATA_FILE)):
        path, collections = os.path.join(os.path.abspath(directory), "params"), None
    else:
        path, collections = training_run(directory).state_path, ("params", "model_state")
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        wanted = {key: value for key, value in tree.items() if collections is None or key in collections}
        wanted = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        restored = checkpointer.restore(
            path, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)
        )
    if collections is None:
        return dict(restored)
    return {"params": restored["params"], **(restored.get("model_state") or {})}


def replace_saved(directory: str, variables: Any, model: ConfigDict, normalize: str, source: str, **extra: Any) -> None:
    """Writes `variables` as a converted-style checkpoint at `directory`, replacing what was there only once
    the new one is complete (written beside it, then swapped in), so a crash leaves one whole copy.

    A crash between the two renames leaves `directory`.old only: the next call moves it back first.
    `extra` entries (e.g. step, metric, value, num_classes) are stored in its metadata; the towers are
    recorded as ["image"] so that `config.init` can start a later finetuning from it.
    """
    directory = os.path.abspath(directory)
    fresh, stale = directory + ".new", directory + ".old"
    primary = jax.process_index() == 0  # every host writes its shards; one moves the files

    def barrier(name: str) -> None:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"clipjax replace_saved {name}")

    if primary:
        if not os.path.exists(directory) and os.path.exists(stale):
            os.replace(stale, directory)  # a crash between the two renames below: the old copy is the whole one
        for leftover in (fresh, stale):
            if os.path.exists(leftover):
                shutil.rmtree(leftover)
    barrier("cleared")
    save_converted(fresh, variables, model, normalize, source, towers=("image",))
    if primary:
        metadata_path = os.path.join(fresh, METADATA_FILE)
        with open(metadata_path, encoding="utf-8") as f:
            metadata = json.load(f)
        with open(metadata_path, "w", encoding="utf-8") as f:
            json.dump({**metadata, **extra}, f, indent=2, sort_keys=True)
        if os.path.exists(directory):
            os.replace(directory, stale)
        os.replace(fresh, directory)
        if os.path.exists(stale):
            shutil.rmtree(stale)
    barrier("replaced")


def save_whole_arrays_on_cpu() -> None:
    """On the CPU backend, makes orbax write each array from one replica instead of slicing its write across
    the replicas; other backends keep orbax's default. Call before saving.

    Replica-parallel saving slices a replicated array on the device so that each replica transfers a part,
    which compiles a slice program for every array shape and offset (12 s of a 4-step segmentation
    finetuning on a 2-core machine) and gains nothing where the devices' memory is the host's.
    """
    if jax.default_backend() != "cpu":
        return
    # orbax has no public switch for it: the registered handler's flag is turned off, which keeps the rest of
    # its setup (the array metadata store above all). Should orbax rename the flag, saving stays correct,
    # only slower on the CPU.
    handler = type_handlers.get_type_handler(jax.Array)
    if hasattr(handler, "_use_replica_parallel"):
        handler._use_replica_parallel = False
