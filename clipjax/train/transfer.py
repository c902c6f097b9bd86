"""What every finetuning task shares: the model config of the weights it starts from, loading their image
tower into a fresh train state (with a report), and keeping the best weights seen by evaluation.

Classification (clipjax/tasks/finetune.py) and dense tasks (depth, segmentation, detection) build a model
whose image tower is the submodule "image", so a CLIP checkpoint's tower lands at params["image"] and the
task's head starts fresh (or comes along from a checkpoint finetuned for the same task and outputs).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from clipjax.config import merge_onto_defaults
from clipjax.errors import ConfigError
from clipjax.models.presets import build_image_tower
from clipjax.train.loop import Metrics, Task
from clipjax.train.optim import make_optimizer
from clipjax.train.state import TrainState
from clipjax.train.transplant import transplant
from clipjax.weights import METADATA_FILE, read_metadata, read_saved_variables, replace_saved

# Model keys a finetuning run may set differently from the pretrained weights: how the same tower is computed
# and regularised, and the input resolution (ViT position embeddings are resized to it).
FINETUNE_MODEL_KEYS = (
    "image_size",
    "dtype",
    "remat",
    "attention",
    "fp8_matmuls",
    "fp8_amax_history",
    "drop_path",
    "batch_norm",
    "scan",
)


class FinetuningSpec(Protocol):
    """What a finetuning task declares that this module uses (clipjax.tasks.spec.TaskSpec has it)."""

    name: str
    best_metric: str | None
    checkpoint_keys: tuple[str, ...]

    def smaller_is_better(self, metric: str) -> bool: ...

    def keeps_head(self, saved: dict[str, Any], outputs: int | None = None) -> bool: ...


def model_config_from_init(config: ConfigDict) -> tuple[ConfigDict, str, str]:
    """(config.model, normalisation, description) for the run: the architecture of `config.init`'s
    weights with this config's FINETUNE_MODEL_KEYS, or `config.model` itself for a random start."""
    if config.init is None:
        return config.model, config.data.normalize, "random initialisation"
    saved = read_metadata(config.init)
    model = merge_onto_defaults(ConfigDict({"model": saved["model"]})).model
    for key in FINETUNE_MODEL_KEYS:
        model[key] = config.model[key]
    return model, saved["normalize"], saved["source"]


def frozen_tower(config: ConfigDict) -> tuple[Any, dict[str, Any]]:
    """For probes and analyses, which train nothing: (the image tower `config.model` describes, its variables
    from config.init, or random ones seeded by config.seed without it: a probe's baseline), with the load
    report printed.

    Raises:
      ConfigError: weights that hold no image tower this model has.
    """
    tower = build_image_tower(config.model)
    size = config.model.image_size

    def fresh() -> dict[str, Any]:
        return jax.jit(tower.init)(jax.random.PRNGKey(config.seed), jnp.zeros((1, size, size, 3)))

    if config.init is None:
        return tower, fresh()
    # Shapes only: compiling the initialiser costs seconds, and loaded weights replace every array it makes.
    shapes = jax.eval_shape(tower.init, jax.random.PRNGKey(config.seed), jnp.zeros((1, size, size, 3)))
    target = {collection: {"image": tree} for collection, tree in shapes.items()}
    loaded, report = transplant(target, read_saved_variables(config.init))
    if jax.process_index() == 0:
        print(report.summary(config.init), flush=True)
    variables = {collection: tree["image"] for collection, tree in loaded.items()}
    if report.initialised:  # arrays the weights lack keep the initialiser's values (the report names them)
        variables = jax.tree.map(
            lambda kept, new: new if isinstance(kept, jax.ShapeDtypeStruct) else kept, variables, fresh()
        )
    return tower, variables


def pretrained_loader(config: ConfigDict, workdir: str, keep_head: bool = False) -> Callable[[TrainState], TrainState]:
    """TrainState -> TrainState that copies `config.init`'s image tower into a fresh state, for
    `Task.after_init`; with `keep_head` also every other top-level sub-tree the weights have (the head of a
    model finetuned for the same task and outputs).

    The report of what was loaded, resized, skipped and newly initialised is printed and written to
    <workdir>/init_report.json. The EMA, when kept, starts from the loaded weights. Identity without
    `config.init`.
    """

    def load(state: TrainState) -> TrainState:
        if config.init is None:
            return state
        also = tuple(name for name in state.params if name != "image") if keep_head else ()
        loaded, report = transplant(state.variables, read_saved_variables(config.init), also=also)
        placed = jax.tree.map(
            lambda new, old: jax.device_put(new, old.sharding) if isinstance(new, np.ndarray) else new,
            loaded,
            state.variables,
        )
        params = placed.pop("params")
        if jax.process_index() == 0:
            print(report.summary(config.init), flush=True)
            with open(os.path.join(workdir, "init_report.json"), "w", encoding="utf-8") as f:
                json.dump({"source": config.init, **report.__dict__}, f, indent=2)
        ema = jax.tree.map(jnp.copy, params) if state.ema_params is not None else None
        return state.replace(params=params, model_state=placed, ema_params=ema)

    return load


class BestWeights:
    """`on_evaluated` hook: keeps the weights of the best evaluation so far in <workdir>/best, a directory
    `config.init` accepts; its metadata records the step, the metric and its value (read back on resume),
    and `extra` (e.g. num_classes, task). The EMA weights are kept when the metric is an eval_ema/ one; with
    `lower_is_better` (errors such as rmse) the smallest value is the best."""

    def __init__(
        self, workdir: str, metric: str, model: ConfigDict, normalize: str, lower_is_better: bool = False, **extra: Any
    ) -> None:
        self.directory = os.path.join(workdir, "best")
        self.metric, self.model, self.normalize, self.extra = metric, model, normalize, extra
        self.sign = -1.0 if lower_is_better else 1.0  # compare sign * value, larger is better
        self.best = -np.inf
        saved = os.path.join(self.directory, METADATA_FILE)
        if not os.path.exists(self.directory):  # a crash between replace_saved's renames left only the old copy
            saved = os.path.join(self.directory + ".old", METADATA_FILE)
        if os.path.isfile(saved):
            with open(saved, encoding="utf-8") as f:
                value = json.load(f).get("value")
            if value is not None:
                self.best = self.sign * value

    def __call__(self, step: int, state: TrainState, metrics: Metrics) -> None:
        if self.metric not in metrics:
            raise ConfigError(
                f"config.finetune.best_metric={self.metric!r} is not among the evaluation's metrics "
                f"({', '.join(sorted(metrics))})"
            )
        value = float(metrics[self.metric])
        if not np.isfinite(value) or self.sign * value <= self.best:
            return
        self.best = self.sign * value
        variables = state.ema_variables if self.metric.startswith("eval_ema/") else state.variables
        replace_saved(
            self.directory,
            variables,
            self.model,
            self.normalize,
            source=f"finetuned, step {step}, {self.metric} {value:.4f}",
            step=step,
            metric=self.metric,
            value=value,
            **self.extra,
        )


def optimizer_and_init(config: ConfigDict, model: nn.Module) -> tuple[optax.GradientTransformation, Callable]:
    """(AdamW with `config.optim`'s layer-wise decay over `model`'s parameters, rng -> fresh TrainState for
    `Task.init_state`, with an EMA when config.optim.ema_decay > 0). `model` takes images [1, S, S, 3]."""
    size = config.model.image_size
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    tx = make_optimizer(config.optim, config.total_steps, abstract["params"])

    def init_state(rng: jax.Array) -> TrainState:
        params_rng, state_rng = jax.random.split(rng)
        variables = model.init(params_rng, jnp.zeros((1, size, size, 3)))
        return TrainState.create(variables, tx, state_rng, ema=config.optim.ema_decay > 0)

    return tx, init_state


def finetuning_task(
    config: ConfigDict,
    workdir: str,
    spec: FinetuningSpec,
    *,
    init_state: Callable[[jax.Array], TrainState],
    train_step: Callable,
    make_dataset: Callable,
    train_source: Any,
    evaluate: Callable[[Any], Metrics],
    outputs: int | None = None,
) -> Task:
    """The loop's Task for a finetuning run of the task `spec` declares.

    Batches come from `make_dataset(config, train_source, process_index=, process_count=, start_sample=)`;
    config.init's tower is loaded into the fresh state, with its head too where `spec.keeps_head` says so
    (weights finetuned for the same task with as many `outputs`, e.g. classes); the weights with the best
    config.finetune.best_metric (default: the spec's) are kept in <workdir>/best, their metadata naming the
    task and the outputs.
    """
    best_metric = config.finetune.best_metric or spec.best_metric
    keep_head = config.init is not None and spec.keeps_head(read_metadata(config.init), outputs)
    extra = {"task": spec.name} if outputs is None else {"task": spec.name, "num_classes": outputs}
    best = BestWeights(
        workdir,
        best_metric,
        config.model,
        config.data.normalize,
        lower_is_better=spec.smaller_is_better(best_metric),
        **extra,
    )
    return Task(
        init_state=init_state,
        train_step=train_step,
        dataset=lambda start_sample: make_dataset(
            config,
            train_source,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_sample=start_sample,
        ),
        evaluate=evaluate,
        examples_per_step=config.batch_size,
        throughput_key="train/images_per_s",
        after_init=pretrained_loader(config, workdir, keep_head),
        on_evaluated=best,
        checkpoint_keys=spec.checkpoint_keys,
    )
