"""Checkpoints with orbax: the train state and the data iterator's position, saved together per step."""

from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp

from clipjax.train.state import TrainState


class Checkpointer:
    """Saves and restores `<directory>/<step>/{state,data}`.

    Saves are asynchronous: `save` returns once the arrays are copied off the devices and the files are
    written in the background. orbax writes each step to a temporary directory and renames it when
    complete, so a save interrupted by a crash is never picked up by `latest_step`.
    """

    def __init__(self, directory: str, *, keep: int) -> None:
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator: grain.DatasetIterator) -> None:
        """Starts saving `state` and the iterator position (read now, synchronously) as `step`."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
            ),
        )

    def restore(self, step: int, abstract_state: Any, data_iterator: grain.DatasetIterator) -> TrainState:
        """Loads `step` into arrays laid out as `abstract_state` says and moves `data_iterator` to its position.

        Args:
          abstract_state: TrainState of jax.ShapeDtypeStruct with `sharding` set; the saved arrays are
            resharded onto it, so the mesh may differ from the one that saved them.
        """
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)
            ),
        )
        return restored["state"]

    def wait(self) -> None:
        """Blocks until the last save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
