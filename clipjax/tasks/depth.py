"""Monocular depth finetuning (NYUv2, the synthetic scenes' depth maps) with the MIM-depth head.

`config.init` names the weights (a converted checkpoint, a pretraining or a finetuning workdir); their image
tower is copied into the depth estimator with a report (clipjax/train/transfer.py), the head starts fresh
unless the weights were finetuned for depth already. Without `config.init`: random initialisation.

The step: the scale-invariant log loss (SiLog, lambda config.depth.silog_lambda) on the pixels with ground
truth, drop path in the tower, AdamW with layer-wise learning-rate decay, BatchNorms (head, and an MCi
tower's) on the global batch's statistics. Evaluation every `eval_every` steps: whole images in windows of
the model's size, flip test, Eigen crop, exact per-image averages of rmse, abs_rel, ... over the split;
the best weights (config.finetune.best_metric, default eval/rmse) are kept in <workdir>/best.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.data.depth import DEPTH_KINDS, depth_dataset, depth_source
from clipjax.errors import ConfigError
from clipjax.evals.depth import DepthEvaluator
from clipjax.evals.depth_metrics import DEPTH_METRICS
from clipjax.heads.depth import DepthEstimator, build_depth_estimator
from clipjax.losses.depth import silog_loss
from clipjax.tasks.spec import TaskSpec
from clipjax.train.loop import Metrics, train
from clipjax.train.step import training_step
from clipjax.train.transfer import finetuning_task, model_config_from_init, optimizer_and_init


def make_depth_step(model: DepthEstimator, tx: optax.GradientTransformation, config: ConfigDict):
    """(state, batch) -> (state, metrics): one AdamW step on the SiLog loss of the batch's valid pixels.

    batch: image uint8 [B, S, S, 3], depth float32 [B, S, S] metres (0 where there is no ground truth).
    Drop path draws from the state's rng and step, so a resumed run draws what an uninterrupted one would.
    """
    depth_config = config.depth

    def loss_fn(params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array):
        variables = {"params": params, **model_state}
        pred, updates = model.apply(
            variables, batch["image"], train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        target = batch["depth"]
        valid = (target > depth_config.min_depth) & (target < depth_config.max_depth)
        loss = silog_loss(pred, target, valid, depth_config.silog_lambda)
        return loss, ({**model_state, **updates}, {})

    return training_step(config, tx, loss_fn)


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> Metrics:
    """Finetunes the depth estimator as `config` says, in `workdir` (resuming if it holds checkpoints)."""
    config.model, config.data.normalize, origin = model_config_from_init(config)
    train_source = depth_source(config, "train")
    eval_source = depth_source(config, "eval")
    depth_config = config.depth
    model = build_depth_estimator(config.model, depth_config.max_depth, depth_config.channels, depth_config.num_deconv)
    size = config.model.image_size
    tx, init_state = optimizer_and_init(config, model)
    if jax.process_index() == 0:
        print(f"depth finetuning of {config.model.name} on {size} px crops from {origin}", flush=True)

    evaluator = DepthEvaluator(
        model,
        mesh,
        eval_source,
        normalize=config.data.normalize,
        window=size,
        stride=depth_config.eval_stride,
        batch_size=config.finetune.eval_batch_size,
        num_examples=config.finetune.eval_examples,
        num_threads=config.eval.num_threads,
        flip_test=depth_config.flip_test,
        eigen=depth_config.eigen_crop,
        min_depth=depth_config.min_depth,
        max_depth=depth_config.max_depth,
    )
    task = finetuning_task(
        config,
        workdir,
        TASK,
        init_state=init_state,
        train_step=make_depth_step(model, tx, config),
        make_dataset=depth_dataset,
        train_source=train_source,
        evaluate=evaluator,
    )
    return train(config, workdir, mesh, task)


def validate(config: ConfigDict) -> None:
    """Depth's settings: the depth range, the loss, the head, the evaluation windows."""
    depth = config.depth
    if not 0 < depth.min_depth < depth.max_depth:
        raise ConfigError(f"config.depth: need 0 < min_depth < max_depth, got {depth.min_depth} and {depth.max_depth}")
    if not 0 <= depth.silog_lambda <= 1:
        raise ConfigError(f"config.depth.silog_lambda={depth.silog_lambda} must lie in [0, 1]")
    if depth.channels < 1 or depth.num_deconv < 0 or depth.eval_stride < 1:
        raise ConfigError("config.depth: need channels >= 1, num_deconv >= 0 and eval_stride >= 1")


TASK = TaskSpec(
    name="depth",
    run=run,
    title="depth",
    validate=validate,
    data_kinds=DEPTH_KINDS,
    finetunes=True,
    metrics=DEPTH_METRICS,
    best_metric="eval/rmse",
    lower_is_better=("abs_rel", "sq_rel", "rmse", "rmse_log", "log10"),  # errors; the delta accuracies are not
    trains_batch_norm=True,
)
