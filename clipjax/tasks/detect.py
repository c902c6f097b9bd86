"""Instance detection and segmentation finetuning (COCO 2017, the synthetic scenes' instances): Mask R-CNN or
Cascade Mask R-CNN on a ViTDet simple feature pyramid with window attention for ViTs, on an FPN for MobileCLIP's
MCi towers (clipjax/heads/detection/mask_rcnn.py).

`config.init` names the weights (converted, pretrained or finetuned); their image tower is copied in with a
report (clipjax/train/transfer.py), the detector's heads start fresh unless the weights were finetuned for
detection with as many classes. Without `config.init`: random initialisation.

The step: the RPN's and every box stage's losses and the mask loss, summed (detectron2's weights, all 1); drop
path in the tower; AdamW with layer-wise lr decay and detectron2's multi-step schedule (config.optim.schedule
"step"). Evaluation every `eval_every` steps over the evaluation split: box and mask AP (+ AP50, AP75, small /
medium / large) from pycocotools; the results of the last evaluation go to <workdir>/coco_results.json, the best
weights (config.finetune.best_metric, default eval/box_ap) to <workdir>/best.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.config import choice
from clipjax.data.detection import (
    DETECTION_KINDS,
    category_ids,
    detection_dataset,
    detection_eval_example,
    detection_ground_truth,
    detection_source,
)
from clipjax.data.transforms import normalize_images, padding_pixel
from clipjax.errors import ConfigError
from clipjax.evals.coco_metrics import STAT_NAMES
from clipjax.evals.detection import DetectionEvaluator
from clipjax.heads.detection.anchors import ANCHOR_SIZES
from clipjax.heads.detection.boxes import CASCADE_WEIGHTS
from clipjax.heads.detection.mask_rcnn import BOX_LOSSES, MaskRCNN, build_detector
from clipjax.models.presets import image_tower_dims, is_mci
from clipjax.tasks.spec import TaskSpec
from clipjax.train.loop import Metrics, train
from clipjax.train.step import training_step
from clipjax.train.transfer import finetuning_task, model_config_from_init, optimizer_and_init

TARGET_KEYS = ("boxes", "classes", "masks")


def make_detect_step(model: MaskRCNN, tx: optax.GradientTransformation, config: ConfigDict):
    """(state, batch) -> (state, metrics): one AdamW step on the detector's summed losses, each also logged.

    batch: image uint8 [B, S, S, 3], image_size int32 [B, 2], boxes float32 [B, N, 4], classes int32 [B, N]
    (-1 padding), masks uint8 [B, N, m, m]. Drop path and the target sampling draw from the state's rng and
    step, so a resumed run draws what an uninterrupted one would.
    """

    def loss_fn(params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array):
        dropout, sampling = jax.random.split(rng)
        losses, updates = model.apply(
            {"params": params, **model_state},
            batch["image"],
            batch["image_size"],
            {key: batch[key] for key in TARGET_KEYS},
            train=True,
            rngs={"dropout": dropout, "sampling": sampling},
            mutable=["batch_stats"],
        )
        loss = sum(losses.values())
        return loss, ({**model_state, **updates}, {f"train/{k}": v for k, v in losses.items()})

    return training_step(config, tx, loss_fn)


def make_predict(model: MaskRCNN, normalize: str):
    """(variables, evaluation batch) -> the detector's detections for the batch's images (see MaskRCNN)."""

    def predict(variables: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        images = normalize_images(batch["image"], normalize)
        return model.apply(variables, images, batch["image_size"])

    return predict


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> Metrics:
    """Finetunes the detector as `config` says, in `workdir` (resuming if it holds checkpoints)."""
    config.model, config.data.normalize, origin = model_config_from_init(config)
    train_source = detection_source(config, "train")
    eval_source = detection_source(config, "eval")
    num_classes = len(train_source.classes)
    model = build_detector(config.model, num_classes, config.detection)
    tx, init_state = optimizer_and_init(config, model)
    kind = "Cascade Mask R-CNN" if model.settings.cascade else "Mask R-CNN"
    if jax.process_index() == 0:
        print(f"{kind} ({num_classes} classes) on {config.model.name} at {config.model.image_size} px from {origin}")

    evaluator = DetectionEvaluator(
        make_predict(model, config.data.normalize),
        mesh,
        eval_source,
        functools.partial(
            detection_eval_example,
            image_size=config.model.image_size,
            pad_pixel=padding_pixel(config.data.normalize),
        ),
        ground_truth=detection_ground_truth(eval_source, config.finetune.eval_examples),
        category_ids=category_ids(eval_source),
        batch_size=config.finetune.eval_batch_size,
        num_examples=config.finetune.eval_examples,
        num_threads=config.eval.num_threads,
        results_path=os.path.join(workdir, "coco_results.json"),
    )
    task = finetuning_task(
        config,
        workdir,
        TASK,
        init_state=init_state,
        train_step=make_detect_step(model, tx, config),
        make_dataset=detection_dataset,
        train_source=train_source,
        evaluate=evaluator,
        outputs=num_classes,
    )
    return train(config, workdir, mesh, task)


def validate(config: ConfigDict) -> None:
    """Detection's settings: the pyramid, the anchors, the box stages, sampling and inference."""
    det = config.detection
    choice("config.detection.box_loss", det.box_loss, BOX_LOSSES)
    if config.model.image_size % 64:
        raise ConfigError(f"config.model.image_size={config.model.image_size}: detection needs a multiple of 64")
    if len(det.anchor_sizes) != len(ANCHOR_SIZES) or min(det.anchor_sizes) <= 0:
        raise ConfigError(
            f"config.detection.anchor_sizes={tuple(det.anchor_sizes)}: one positive size per pyramid stride "
            f"{tuple(ANCHOR_SIZES)}"
        )
    ious = tuple(det.stage_ious)
    if not 0 < len(ious) <= len(CASCADE_WEIGHTS) or list(ious) != sorted(ious) or not all(0 < t < 1 for t in ious):
        raise ConfigError(
            f"config.detection.stage_ious={ious}: 1 to {len(CASCADE_WEIGHTS)} increasing IoU thresholds in (0, 1)"
        )
    blocks = () if det.global_blocks is None or is_mci(config.model.name) else tuple(det.global_blocks)
    if det.window_size < 0 or any(not 0 <= b < image_tower_dims(config.model)["depth"] for b in blocks):
        raise ConfigError(
            f"config.detection: window_size={det.window_size} must be >= 0 and global_blocks={tuple(det.global_blocks)}"
            " indices of the tower's blocks"
        )
    depth = 0 if is_mci(config.model.name) else image_tower_dims(config.model)["depth"]
    if config.model.scan and det.window_size and len(set(blocks)) < depth:
        raise ConfigError(
            f"config.model.scan=True cannot step ViTDet's windowed and global blocks as one (detection.window_size="
            f"{det.window_size}); set config.model.scan=False"
        )
    for key in ("rpn_samples", "roi_samples", "detections_per_image", "pre_nms_candidates", "max_instances"):
        if det[key] < 1:
            raise ConfigError(f"config.detection.{key}={det[key]} must be at least 1")
    for key in ("rpn_positive_fraction", "roi_positive_fraction", "rpn_nms", "nms_threshold"):
        if not 0 < det[key] <= 1:
            raise ConfigError(f"config.detection.{key}={det[key]} must lie in (0, 1]")
    if not 0 < det.scale_range[0] <= det.scale_range[1]:
        raise ConfigError(f"config.detection.scale_range={tuple(det.scale_range)}: need 0 < low <= high")


TASK = TaskSpec(
    name="detect",
    run=run,
    title="detection",
    validate=validate,
    data_kinds=DETECTION_KINDS,
    finetunes=True,
    metrics=tuple(f"{kind}_{stat}" for kind in ("box", "mask") for stat in STAT_NAMES),
    best_metric="eval/box_ap",
    trains_batch_norm=True,
)
