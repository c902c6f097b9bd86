"""The workdir a run writes (config.json, metrics, logs): making it, proving it writable, keeping configs."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from ml_collections import ConfigDict

from clipjax.errors import ConfigError, UserError


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir and proves it writable, or raises a one-line UserError."""
    probe = os.path.join(workdir, f".clipjax-write-test.{jax.process_index()}")  # hosts may share the workdir
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def save_config(config: ConfigDict, workdir: str) -> None:
    """Writes config.json atomically; a different config.json from an earlier run is kept as config.N.json."""
    path = os.path.join(workdir, "config.json")
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
        n = 1
        while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
            n += 1
        os.replace(path, os.path.join(workdir, f"config.{n}.json"))
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


SUMMARY_FILE = "summary.json"


def save_summary(workdir: str, task: str, summary: dict[str, Any], arguments: list[str]) -> None:
    """Writes `<workdir>/summary.json` atomically: {"task": str, "arguments": the command line's arguments,
    "summary": the task's final metrics and "steps", "wall_time_s" (floats / ints by name)}. It is written when
    a run finishes, and only then: a sweep takes it to mean the run is done, if it was run with the arguments
    the sweep would give it (clipjax/sweep/runs.py)."""
    path = os.path.join(workdir, SUMMARY_FILE)
    values = {key: value.item() if hasattr(value, "item") else value for key, value in summary.items()}
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"task": task, "arguments": list(arguments), "summary": values}, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def refuse_a_training_workdir(
    workdir: str, task: str = "evaluate", what: str = "evaluation", subdirectory: str = "eval"
) -> None:
    """For a task that writes step-0 rows only (`task`, called `what` in the message): raises a one-line
    ConfigError if `workdir` holds another task's run, whose metrics rows after step 0 would be moved aside and
    config.json renamed (e.g. `--workdir` given the same directory as `config.init`); it suggests
    `workdir/subdirectory` instead."""
    saved = os.path.join(workdir, "config.json")
    if not os.path.isfile(saved):
        return
    with open(saved, encoding="utf-8") as f:
        found = json.load(f).get("task")
    if found != task:
        raise ConfigError(
            f"workdir {workdir} holds a {found!r} run; write the {what} to another directory, e.g. "
            f"{os.path.join(workdir, subdirectory)}"
        )
