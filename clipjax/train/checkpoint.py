"""Checkpoints with orbax: train state, data iterator position and loop bookkeeping, saved together.

`<directory>/<step>/` holds three items:
  state  the TrainState (parameters, optimizer state, step, RNG, skip counters), sharded arrays
  data   this host's grain iterator position (one small JSON file per process)
  loop   JSON: samples seen, the batch size and process count that produced them, the metrics of the
         logging window in progress, and the config of the run that wrote it

Saves are asynchronous and atomic: orbax writes `<step>.orbax-checkpoint-tmp` and renames it when every
file is on disk, so a save interrupted by a crash is never loaded (and is cleaned up on the next start).
The newest `keep` checkpoints are kept, plus every step that is a multiple of `keep_every`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from clipjax.errors import UserError
from clipjax.train.state import TrainState
from clipjax.weights import save_whole_arrays_on_cpu


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


class Checkpointer:
    """Saves and restores `<directory>/<step>/{state,data,loop}`; every failure is a one-line UserError."""

    def __init__(self, directory: str, *, keep: int, keep_every: int = 0) -> None:
        save_whole_arrays_on_cpu()
        # Local paths are made absolute (orbax needs it); URLs such as gs://bucket/run go to orbax as given.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every or None,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=True,
        )
        # Naming every item's handler up front lets a fresh process read one item (the loop JSON, the
        # array metadata) without restoring the others.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
            "loop": ocp.JsonCheckpointHandler(),
        }
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        except OSError as e:
            raise UserError(f"cannot use the checkpoint directory {self.directory}: {_one_line(e)}") from None

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, data_position: dict[str, Any], loop: dict[str, Any]) -> None:
        """Starts saving `step`; `data_position` (a grain iterator's `get_state()` after the step's batch) and
        `loop` are written now, the arrays in the background. An earlier save that failed in the background
        is reported here."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(_Position(data_position)),
            loop=ocp.args.JsonSave(loop),
        )
        try:
            self._manager.save(step, args=args)
        except Exception as e:  # orbax surfaces write errors (ENOSPC, permissions) as assorted types
            raise UserError(
                f"could not write the checkpoint of step {step} to {self.directory}: {_one_line(e)}; "
                "the earlier checkpoints are intact"
            ) from None

    def loop_state(self, step: int) -> dict[str, Any]:
        """The `loop` JSON of checkpoint `step`."""
        return self._manager.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))["loop"]

    def saved_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """{"params/image/proj/kernel": shape, ...} of the arrays in checkpoint `step`."""
        tree = self._manager.item_metadata(step)["state"].tree
        flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return {_path(path): tuple(leaf.shape) for path, leaf in flat}

    def restore(self, step: int, target: Any, data_iterator: grain.DatasetIterator | None) -> TrainState:
        """Loads `step` into arrays laid out as `target` says and, if given, moves `data_iterator` to its
        position.

        Args:
          target: TrainState of jax.ShapeDtypeStruct with `sharding` set; the saved arrays are resharded
            onto it, so the mesh (and the number of devices) may differ from the one that saved them.
        """
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        """Blocks until the last save is on disk; reports its failure if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise UserError(
                f"could not write a checkpoint to {self.directory}: {_one_line(e)}; the earlier checkpoints are intact"
            ) from None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


class _Position:
    """An iterator position as grain's checkpoint handler takes it from iterators of other kinds (bytes from
    `get_state`); the file is the one it writes for its own iterators (the state as indented JSON), so the
    restore into a grain iterator reads it as usual."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def get_state(self) -> bytes:
        return json.dumps(self._state, indent=4).encode()


def _path(path: tuple) -> str:
    return "/".join(str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))) for key in path)


def abstract_shapes(target: Any) -> dict[str, tuple[int, ...]]:
    """The same {path: shape} view of a restore target, for comparison with `Checkpointer.saved_shapes`."""
    flat = jax.tree_util.tree_flatten_with_path(target)[0]
    return {_path(path): tuple(leaf.shape) for path, leaf in flat}
