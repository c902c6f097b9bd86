"""Semantic segmentation finetuning (ADE20K, the synthetic scenes' masks): UperNet on a ViTDet simple feature
pyramid for ViTs, Semantic FPN for MobileCLIP's MCi towers, an auxiliary FCN head.

`config.init` names the weights (converted, pretrained or finetuned); their image tower is copied in with a
report (clipjax/train/transfer.py), the decoder starts fresh unless the weights were finetuned for
segmentation with as many classes. Without `config.init`: random initialisation.

The step: pixel cross-entropy of the decoder's logits (resized to the crop) plus config.segmentation.aux_weight
times the auxiliary head's, over the labelled pixels; drop path in the tower, dropout before the classifiers,
AdamW with layer-wise lr decay (mmseg's recipe: warmup then polynomial decay, config.optim.schedule="poly"),
BatchNorms on the global batch's statistics. Evaluation every `eval_every` steps: mmseg's inference (see
clipjax/evals/segmentation.py), mIoU / mAcc / aAcc from the dataset-level confusion matrix; the per-class
IoU of each evaluation goes to <workdir>/segmentation_eval.jsonl; the best weights (config.finetune.best_metric,
default eval/miou) are kept in <workdir>/best.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.config import choice
from clipjax.data.segmentation import (
    SEGMENTATION_KINDS,
    rescale_size,
    segmentation_dataset,
    segmentation_eval_example,
    segmentation_source,
)
from clipjax.errors import ConfigError
from clipjax.evals.segmentation import INFERENCE_MODES, SegmentationEvaluator, encoded_size
from clipjax.heads.segmentation import DECODERS, Segmenter, build_segmenter
from clipjax.losses.segmentation import segmentation_loss
from clipjax.models.presets import is_mci
from clipjax.tasks.spec import TaskSpec
from clipjax.train.loop import Metrics, train
from clipjax.train.state import TrainState
from clipjax.train.step import training_step
from clipjax.train.transfer import finetuning_task, model_config_from_init, optimizer_and_init


def decoder_for(config: ConfigDict) -> str:
    """config.segmentation.decoder, or the paper's choice for the tower: Semantic FPN for MCi, else UperNet."""
    return config.segmentation.decoder or ("semantic_fpn" if is_mci(config.model.name) else "upernet")


def make_segment_step(model: Segmenter, tx: optax.GradientTransformation, config: ConfigDict):
    """(state, batch) -> (state, metrics): one AdamW step on the decoder's (+ auxiliary) cross-entropy.

    batch: image uint8 [B, S, S, 3], label uint8 [B, S, S] (255: ignored). Drop path and dropout draw from
    the state's rng and step, so a resumed run draws what an uninterrupted one would.
    """
    seg = config.segmentation

    def loss_fn(params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array):
        variables = {"params": params, **model_state}
        out, updates = model.apply(
            variables, batch["image"], train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        labels = batch["label"].astype(jnp.int32)
        loss = segmentation_loss(out["logits"], labels, label_smoothing=seg.label_smoothing)
        parts = {"train/decode_loss": loss}
        if "aux" in out:
            aux = segmentation_loss(out["aux"], labels, label_smoothing=seg.label_smoothing)
            parts["train/aux_loss"] = aux
            loss = loss + seg.aux_weight * aux
        return loss, ({**model_state, **updates}, parts)

    return training_step(config, tx, loss_fn)


def example_sizes(record: dict[str, Any], scale: tuple[int, int] | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """((h, w) of the image as the evaluation resizes it, (H, W) of its label), from the header alone."""
    image = record["image"]
    size = encoded_size(image) if isinstance(image, bytes) else tuple(image.shape[:2])
    return (rescale_size(*size, scale) if scale is not None else size), size


class PerClassLog:
    """`on_evaluated` companion: appends each evaluation's metrics and per-class IoU / Acc to a JSONL file
    (host 0). The per-class figures are the last evaluation's: the EMA weights' when an EMA is kept."""

    def __init__(self, path: str, evaluator: SegmentationEvaluator) -> None:
        self.path, self.evaluator = path, evaluator

    def __call__(self, step: int, metrics: Metrics) -> None:
        if jax.process_index() == 0:
            row = {"step": step, **{k: float(v) for k, v in metrics.items()}, **self.evaluator.last_details}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> Metrics:
    """Finetunes the segmenter as `config` says, in `workdir` (resuming if it holds checkpoints)."""
    config.model, config.data.normalize, origin = model_config_from_init(config)
    train_source = segmentation_source(config, "train")
    eval_source = segmentation_source(config, "eval")
    seg = config.segmentation
    num_classes = len(train_source.classes)
    decoder = decoder_for(config)
    model = build_segmenter(config.model, num_classes, decoder, aux=seg.aux_weight > 0, channels=seg.channels)
    size = config.model.image_size
    tx, init_state = optimizer_and_init(config, model)
    if jax.process_index() == 0:
        print(f"segmentation ({decoder}, {num_classes} classes) on {config.model.name} at {size} px from {origin}")

    scale = tuple(seg.scale) if config.data.kind == "ade20k" else None
    evaluator = SegmentationEvaluator(
        model,
        mesh,
        eval_source,
        functools.partial(segmentation_eval_example, scale=scale, reduce_zero_label=config.data.kind == "ade20k"),
        functools.partial(example_sizes, scale=scale),
        normalize=config.data.normalize,
        num_classes=num_classes,
        mode=seg.mode,
        window=size,
        stride=seg.eval_stride,
        flip=seg.flip_test,
        batch_size=config.finetune.eval_batch_size,
        num_examples=config.finetune.eval_examples,
        num_threads=config.eval.num_threads,
        bucket=seg.eval_bucket,
        class_names=list(eval_source.classes),
    )
    task = finetuning_task(
        config,
        workdir,
        TASK,
        init_state=init_state,
        train_step=make_segment_step(model, tx, config),
        make_dataset=segmentation_dataset,
        train_source=train_source,
        evaluate=evaluator,
        outputs=num_classes,
    )
    log = PerClassLog(os.path.join(workdir, "segmentation_eval.jsonl"), evaluator)
    keep_best = task.on_evaluated

    def on_evaluated(step: int, state: TrainState, metrics: Metrics) -> None:
        keep_best(step, state, metrics)
        log(step, metrics)

    task.on_evaluated = on_evaluated
    return train(config, workdir, mesh, task)


def validate(config: ConfigDict) -> None:
    """Segmentation's settings: the decoder, the training pipeline, the inference."""
    seg = config.segmentation
    if seg.decoder is not None:
        choice("config.segmentation.decoder", seg.decoder, DECODERS)
    choice("config.segmentation.mode", seg.mode, INFERENCE_MODES)
    if config.model.image_size % 32:
        raise ConfigError(f"config.model.image_size={config.model.image_size}: segmentation needs a multiple of 32")
    if seg.mode == "whole" and not is_mci(config.model.name):
        raise ConfigError(
            "config.segmentation.mode='whole' needs a tower that takes any image size (MCi); a ViT's position "
            "embeddings fix its input, so use mode='slide'"
        )
    if seg.aux_weight < 0 or not 0 <= seg.label_smoothing < 1 or not 0 < seg.cat_max_ratio <= 1:
        raise ConfigError("config.segmentation: need aux_weight >= 0, 0 <= label_smoothing < 1, 0 < cat_max_ratio <= 1")
    if not 0 < seg.ratio_range[0] <= seg.ratio_range[1] or seg.eval_stride < 1 or seg.eval_bucket < 1:
        raise ConfigError(
            "config.segmentation: need 0 < ratio_range[0] <= ratio_range[1], eval_stride >= 1, eval_bucket >= 1"
        )
    if seg.eval_bucket % 32:
        raise ConfigError(
            f"config.segmentation.eval_bucket={seg.eval_bucket} must be a multiple of 32 (the towers' stride)"
        )


TASK = TaskSpec(
    name="segment",
    run=run,
    title="segmentation",
    validate=validate,
    data_kinds=SEGMENTATION_KINDS,
    finetunes=True,
    metrics=("miou", "macc", "aacc"),
    best_metric="eval/miou",
    trains_batch_norm=True,
)
