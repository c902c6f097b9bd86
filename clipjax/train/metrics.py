"""Metric output: metrics.jsonl (one JSON object a line, always with "step") and TensorBoard events.

Only process 0 writes, so a multi-host job logs once.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from typing import Any

import jax


def _tensorboard_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch whenever it is installed,
    only to accept torch tensors (clipjax logs floats and numpy images), and that took 2 s of every start."""
    if "torch" in sys.modules:
        return importlib.import_module("tensorboardX").SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects of a missing torch
    try:
        return importlib.import_module("tensorboardX").SummaryWriter
    finally:
        del sys.modules["torch"]  # torch imports normally afterwards


SummaryWriter = _tensorboard_writer_class()

METRICS_FILE = "metrics.jsonl"
DISCARDED_FILE = "metrics.discarded.jsonl"


class MetricWriter:
    """Appends rows to `<workdir>/metrics.jsonl` and scalars to TensorBoard event files in `<workdir>`.

    When a run resumes from the checkpoint of step `resume_step` (0: it starts over), rows logged after
    that step by the interrupted run (and a last line torn by a crash) are moved to metrics.discarded.jsonl (kept, not
    lost), so metrics.jsonl reads as one uninterrupted run.
    """

    def __init__(self, workdir: str, *, resume_step: int = 0) -> None:
        self.enabled = jax.process_index() == 0
        self._path = os.path.join(workdir, METRICS_FILE)
        if not self.enabled:
            return
        if os.path.exists(self._path):  # also when starting over: rows of a run with no checkpoint are stale
            self._move_rows_after(resume_step)
        self._jsonl = open(self._path, "a", encoding="utf-8")
        self._tensorboard = SummaryWriter(logdir=workdir, flush_secs=30)

    def _move_rows_after(self, step: int) -> None:
        with open(self._path, encoding="utf-8") as f:
            rows = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
        keep = [row for row in rows if _step_of(row) <= step]
        later = [row for row in rows if _step_of(row) > step]
        if not later:
            return
        with open(os.path.join(os.path.dirname(self._path), DISCARDED_FILE), "a", encoding="utf-8") as f:
            f.writelines(later)
        tmp = self._path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, self._path)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Writes one row: `{"step": step, **metrics}`; values must be numbers."""
        if not self.enabled or not metrics:
            return
        row = {"step": int(step), **{key: float(value) for key, value in metrics.items()}}
        # JSON has no NaN/Infinity; write them as strings so every line stays valid JSON.
        safe = {key: value if math.isfinite(value) else str(value) for key, value in row.items()}
        self._jsonl.write(json.dumps(safe) + "\n")
        self._jsonl.flush()
        for key, value in row.items():
            # TensorBoard cannot plot NaN (e.g. COCO's AP of a size bucket without objects) and warns on each;
            # metrics.jsonl keeps the value.
            if key != "step" and math.isfinite(value):
                self._tensorboard.add_scalar(key, value, global_step=int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; a line torn by a crash mid-write counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError):
        return float("inf")


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of `<workdir>/metrics.jsonl`, in order."""
    with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
