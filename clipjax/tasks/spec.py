"""What a task declares about itself: one `TaskSpec` in the task's own module (`TASK = TaskSpec(...)`).

`clipjax.tasks` collects the specs of its modules (and any registered from elsewhere with
`clipjax.tasks.register`); the command line dispatches on `config.task` through them, the generic validation
applies what they declare (the init rule, the data kinds, the finetuning settings), the finetuning code reads
their best metric, its direction and the head-keeping rule, and the loop their checkpoint keys. Nothing outside
a task's module lists the task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jax.sharding import Mesh
from ml_collections import ConfigDict

INIT_RULES = ("none", "optional", "required")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task: how it runs and what the rest of clipjax needs to know about it.

    name: the value of `config.task` that selects it.
    run: (config, workdir, mesh) -> summary metrics (floats by name, plus "steps", "wall_time_s" and, where a
      step is compiled, "compile_time_s"); a training task builds a `clipjax.train.loop.Task` and returns
      `train(...)`.
    title: what error lines call it, e.g. "detection" in "config.data.kind (detection)=...".
    validate: config -> None, raising a one-line ConfigError for a setting the task cannot run with; called
      after the generic checks of the model, the data and the evaluation settings and before the data kind is
      checked against `data_kinds` (so a task may explain a wrong kind in its own words).
    data_kinds: the `config.data.kind` values it trains on; () for a task that reads no training data.
    init: whether it takes `config.init`: "none" (random start; it resumes from its workdir), "optional"
      (a random start without it) or "required".
    finetunes: it copies config.init's image tower into a model of its own with a new head, so the
      finetuning settings apply (config.finetune's evaluation sizes, layer-wise lr decay, EMA).
    metrics: the names (after "eval/") its evaluation logs, from which config.finetune.best_metric is chosen.
    best_metric: the metric whose best value's weights are kept when config.finetune.best_metric is unset
      (required of a finetuning task).
    lower_is_better: the metrics of `metrics` for which a smaller value is the better one (errors).
    checkpoint_keys: config keys, beyond task, seed and model, that its checkpoints depend on: a resumed run
      must not change them (e.g. pretraining's "loss.kind"); `run` hands them to the loop's Task
      (`finetuning_task` does for finetuning tasks).
    trains_batch_norm: its head's BatchNorms train on batch statistics, so an MCi tower's must too
      (config.model.batch_norm="train").
    batch_keys: config keys of global batch sizes it uses besides `batch_size` (e.g. an evaluation's), which
      must divide over the devices and hosts as `batch_size` does.
    trains: it runs the train loop over a stream of training batches (config.batch_size, config.total_steps,
      config.data.subset_size apply); False for a task that only reads data (evaluation, probes, analyses).
    """

    name: str
    run: Callable[[ConfigDict, str, Mesh], dict[str, Any]]
    title: str = ""
    validate: Callable[[ConfigDict], None] | None = None
    data_kinds: tuple[str, ...] = ()
    init: str = "optional"
    finetunes: bool = False
    metrics: tuple[str, ...] = ()
    best_metric: str | None = None
    lower_is_better: tuple[str, ...] = ()
    checkpoint_keys: tuple[str, ...] = ()
    trains_batch_norm: bool = False
    batch_keys: tuple[str, ...] = ()
    trains: bool = True

    def __post_init__(self) -> None:
        if self.init not in INIT_RULES:
            raise ValueError(f"TaskSpec {self.name!r}: init={self.init!r} is not one of {INIT_RULES}")
        if not set(self.lower_is_better) <= set(self.metrics):
            raise ValueError(f"TaskSpec {self.name!r}: lower_is_better names metrics it does not log")
        if self.finetunes and self.best_metric is None:
            raise ValueError(f"TaskSpec {self.name!r}: a finetuning task names the best_metric whose weights it keeps")
        if self.best_metric is not None and self.best_metric.partition("/")[2] not in self.metrics:
            raise ValueError(f"TaskSpec {self.name!r}: best_metric {self.best_metric!r} is not among its metrics")

    @property
    def label(self) -> str:
        return self.title or self.name

    def smaller_is_better(self, metric: str) -> bool:
        """Whether a smaller value of `metric` ("eval/rmse", "eval_ema/rmse", "rmse") is the better one."""
        return metric.rsplit("/", 1)[-1] in self.lower_is_better

    def keeps_head(self, saved: dict[str, Any], outputs: int | None = None) -> bool:
        """Whether a finetuning from weights with metadata `saved` (clipjax.weights.read_metadata) also takes
        their head: the one rule of every task, that the weights were finetuned for this task with as many
        outputs (classes; None for a task without classes)."""
        return saved.get("task") == self.name and saved.get("num_classes") == outputs
