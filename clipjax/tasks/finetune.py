"""Finetuning a classifier on a pretrained image tower (ImageNet-1k and the synthetic scenes' classes).

`config.init` names the weights (a converted checkpoint or a pretraining / finetuning workdir); its image
tower is copied into the classifier and a report says what was loaded, resized, skipped and newly
initialised (printed, and written to <workdir>/init_report.json). Without `config.init` the classifier
starts from random weights: the supervised-from-scratch baseline. The architecture comes from the weights
(only image_size, dtype, remat, attention, drop_path and batch_norm are taken from `config.model`), as does
the image normalisation.

The step: mixup / cutmix with label smoothing on the device, soft-target cross-entropy, drop path, AdamW
with layer-wise learning-rate decay, an optional EMA of the weights. Evaluation: exact top-1 / top-5 over
the evaluation split every `eval_every` steps (and of the EMA weights, as eval_ema/...); the weights with
the best `config.finetune.best_metric` so far are kept in <workdir>/best (a `config.init` directory).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.config import choice
from clipjax.data.classification import CLASSIFICATION_KINDS, classification_source, finetune_dataset
from clipjax.data.mixup import mix_batch
from clipjax.errors import ConfigError
from clipjax.evals.batches import labelled_image_loader
from clipjax.evals.classification import ClassificationEvaluator
from clipjax.heads.classification import POOLS, ImageClassifier, build_classifier
from clipjax.losses.classification import soft_cross_entropy
from clipjax.tasks.spec import TaskSpec
from clipjax.train.loop import Metrics, train
from clipjax.train.step import apply_model, training_step
from clipjax.train.transfer import finetuning_task, model_config_from_init, optimizer_and_init


def make_finetune_step(model: ImageClassifier, tx: optax.GradientTransformation, config: ConfigDict, num_classes: int):
    """(state, batch) -> (state, metrics): one AdamW step on the mixed batch's soft-target cross-entropy.

    batch: image uint8 [B, S, S, 3], label int32 [B]. Randomness (mixing, drop path) derives from the state's
    rng and step, so a resumed run draws what an uninterrupted one would.
    """
    tune = config.finetune
    train_batch_norm = config.model.batch_norm == "train"

    def loss_fn(params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array):
        mix_rng, drop_rng = jax.random.split(rng)
        images, targets = mix_batch(
            mix_rng,
            batch["image"],
            batch["label"],
            num_classes,
            mixup_alpha=tune.mixup_alpha,
            cutmix_alpha=tune.cutmix_alpha,
            switch_prob=tune.mix_switch_prob,
            prob=tune.mix_prob,
            label_smoothing=tune.label_smoothing,
        )
        logits, model_state = apply_model(
            model,
            {"params": params, **model_state},
            images,
            update_batch_stats=train_batch_norm,
            rngs={"dropout": drop_rng},
        )
        return soft_cross_entropy(logits, targets), (model_state, {})

    return training_step(config, tx, loss_fn)


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> Metrics:
    """Finetunes the classifier as `config` says, in `workdir` (resuming if it holds checkpoints)."""
    config.model, config.data.normalize, origin = model_config_from_init(config)
    train_source = classification_source(config, "train")
    eval_source = classification_source(config, "eval")
    tune = config.finetune
    num_classes = tune.num_classes or len(train_source.classes)
    if not num_classes:
        raise ConfigError("config.finetune.num_classes is unset and the training data names no classes")
    model = build_classifier(config.model, num_classes, tune.pool, tune.head_init_std)
    size = config.model.image_size
    tx, init_state = optimizer_and_init(config, model)
    if jax.process_index() == 0:
        print(f"finetuning {config.model.name} at {size} px for {num_classes} classes from {origin}", flush=True)

    evaluator = ClassificationEvaluator(
        model,
        mesh,
        eval_source,
        labelled_image_loader(size, tune.eval_crop_ratio),
        normalize=config.data.normalize,
        batch_size=tune.eval_batch_size,
        num_examples=tune.eval_examples,
        num_threads=config.eval.num_threads,
    )
    task = finetuning_task(
        config,
        workdir,
        TASK,
        init_state=init_state,
        train_step=make_finetune_step(model, tx, config, num_classes),
        make_dataset=finetune_dataset,
        train_source=train_source,
        evaluate=evaluator,
        outputs=num_classes,  # a classifier finetuned for as many classes hands over its head too
    )
    return train(config, workdir, mesh, task)


def validate(config: ConfigDict) -> None:
    """Classification's settings: pooling, mixing, augmentation, the evaluation crop."""
    tune = config.finetune
    choice("config.finetune.pool", tune.pool, POOLS)
    if tune.num_classes is not None and tune.num_classes < 1:
        raise ConfigError(f"config.finetune.num_classes={tune.num_classes} must be at least 1 (or None)")
    for key in ("mixup_alpha", "cutmix_alpha", "randaugment_ops", "randaugment_magnitude_std", "head_init_std"):
        if tune[key] < 0:
            raise ConfigError(f"config.finetune.{key}={tune[key]} must be >= 0")
    for key in ("mix_switch_prob", "mix_prob", "random_erasing"):
        if not 0 <= tune[key] <= 1:
            raise ConfigError(f"config.finetune.{key}={tune[key]} must lie in [0, 1]")
    if not 0 <= tune.label_smoothing < 1:
        raise ConfigError(f"config.finetune.label_smoothing={tune.label_smoothing} must lie in [0, 1)")
    if not 0 <= tune.randaugment_magnitude <= 10:
        raise ConfigError(f"config.finetune.randaugment_magnitude={tune.randaugment_magnitude} must lie in [0, 10]")
    if not 0 < tune.eval_crop_ratio <= 1:
        raise ConfigError(f"config.finetune.eval_crop_ratio={tune.eval_crop_ratio} must lie in (0, 1]")


TASK = TaskSpec(
    name="finetune",
    run=run,
    title="finetuning",
    validate=validate,
    data_kinds=CLASSIFICATION_KINDS,
    finetunes=True,
    metrics=("top1", "top5"),
    best_metric="eval/top1",
)
