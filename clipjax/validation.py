"""Config validation before anything compiles: each problem is one line naming the key and the fix."""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from clipjax.config import choice
from clipjax.data.classification import CLASSIFICATION_KINDS
from clipjax.data.depth import DEPTH_KINDS
from clipjax.data.detection import DETECTION_KINDS
from clipjax.data.pipeline import CAPTION_POLICIES, DATA_KINDS
from clipjax.data.segmentation import SEGMENTATION_KINDS
from clipjax.data.transforms import NORMALIZATIONS
from clipjax.errors import ConfigError
from clipjax.evals.coco_metrics import STAT_NAMES
from clipjax.evals.depth_metrics import DEPTH_METRICS
from clipjax.evals.segmentation import INFERENCE_MODES
from clipjax.evals.setup import CLASSNAME_SOURCES, ZEROSHOT_KINDS
from clipjax.heads.classification import POOLS
from clipjax.heads.detection.anchors import ANCHOR_SIZES
from clipjax.heads.detection.boxes import CASCADE_WEIGHTS
from clipjax.heads.detection.mask_rcnn import BOX_LOSSES
from clipjax.heads.segmentation import DECODERS
from clipjax.losses.contrastive import IMPLEMENTATIONS, LOSS_KINDS
from clipjax.models.fp8 import FP8_RECIPES
from clipjax.models.layers import ACTIVATIONS, ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES, attention_implementation
from clipjax.models.presets import (
    DTYPES,
    TEXT_SIZES,
    image_tower_dims,
    image_tower_names,
    is_mci,
    text_tower_dims,
)
from clipjax.models.vit import VIT_LAYOUTS, VIT_STEMS
from clipjax.parallel import mesh_shape
from clipjax.tokenizer import VOCAB_SIZE
from clipjax.train.optim import SCHEDULES

FINETUNING_TASKS = (
    "finetune",
    "depth",
    "segment",
    "detect",
)  # tasks that start from config.init's image tower and add a head


def validate(config: ConfigDict, *, num_devices: int, process_count: int, tasks: tuple[str, ...]) -> None:
    """Raises ConfigError for the first problem found in `config` for a job on `num_devices` devices."""
    choice("config.task", config.task, tasks)
    for key in ("batch_size", "total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "stop_check_every"):
        if config[key] < 1:
            raise ConfigError(f"config.{key}={config[key]} must be at least 1")
    for key in ("eval_every", "keep_every", "max_bad_steps"):
        if config[key] < 0:
            raise ConfigError(f"config.{key}={config[key]} must be 0 (off) or positive")
    if config.preemption_grace_s <= 0:
        raise ConfigError(f"config.preemption_grace_s={config.preemption_grace_s} must be positive")
    if config.task == "evaluate" and not config.init:
        raise ConfigError(
            "config.init is required with config.task='evaluate': pass the weights, e.g. --config.init=DIR from "
            "`python -m clipjax.convert` or a pretraining workdir"
        )
    if config.task == "pretrain" and config.init is not None:
        raise ConfigError(
            f"config.init={config.init!r}: task {config.task!r} starts from random weights (and resumes from its "
            "workdir); unset config.init"
        )
    _validate_local_paths(config)
    _validate_model(config.model)
    _validate_data(config)
    _validate_eval(config.eval)
    if config.task in FINETUNING_TASKS:
        _validate_finetuning(config)
        if config.task == "finetune":
            _validate_classification(config)
        elif config.task == "depth":
            _validate_depth(config)
        elif config.task == "detect":
            _validate_detection(config)
        else:
            _validate_segmentation(config)
    elif config.optim.layer_decay != 1 or config.optim.ema_decay != 0:
        raise ConfigError(
            f"config.optim.layer_decay / ema_decay are finetuning settings; task {config.task!r} needs 1.0 / 0.0"
        )
    _validate_mesh_and_batch(config, num_devices, process_count)
    optim = config.optim
    choice("config.optim.schedule", optim.schedule, SCHEDULES)
    if optim.poly_power <= 0:
        raise ConfigError(f"config.optim.poly_power={optim.poly_power} must be positive")
    if optim.lr <= 0 or optim.warmup_steps < 0 or not 0 <= optim.min_lr_ratio <= 1 or optim.weight_decay < 0:
        raise ConfigError("config.optim: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1 and weight_decay >= 0")
    if isinstance(optim.no_decay, str) or not all(isinstance(name, str) for name in optim.no_decay):
        raise ConfigError(
            f"config.optim.no_decay={optim.no_decay!r} must be a tuple of parameter names, e.g. ('pos_embed',)"
        )


def _validate_local_paths(config: ConfigDict) -> None:
    """Data, weights and evaluation sets are read with local file APIs (positioned reads into shards, directory
    listings): a bucket URL would match nothing. Checkpoints and the compilation cache may be URLs."""
    paths = {
        "config.data.path": config.data.path,
        "config.data.synthetic_path": config.data.synthetic_path,
        "config.init": config.init,
        "config.eval.zeroshot.path": config.eval.zeroshot.path,
        "config.eval.retrieval.path": config.eval.retrieval.path,
    }
    for key, value in paths.items():
        if isinstance(value, str) and "://" in value:
            also = (
                ", or pass the run's workdir: its config.json names the checkpoint_dir, which is read from the bucket"
                if key == "config.init"
                else ""
            )
            raise ConfigError(
                f"{key}={value!r} is read through the file system: mount the bucket (e.g. gcsfuse; launch/tpu_vm.sh "
                f"does with GCSFUSE=BUCKET) and pass the mounted path{also}"
            )


def _validate_model(model: ConfigDict) -> None:
    if model.name not in image_tower_names():
        raise ConfigError(
            f"config.model.name={model.name!r} is not a known model; choose one of {', '.join(image_tower_names())}"
        )
    choice("config.model.text.name", model.text.name, TEXT_SIZES)
    choice("config.model.act", model.act, ACTIVATIONS)
    choice("config.model.dtype", model.dtype, DTYPES)
    choice("config.model.remat", model.remat, ("none", *REMAT_POLICIES))
    choice("config.model.attention", model.attention, ATTENTION_IMPLEMENTATIONS)
    choice("config.model.fp8_matmuls", model.get("fp8_matmuls", "none"), FP8_RECIPES)
    history = model.get("fp8_amax_history", 0)
    if not isinstance(history, int) or isinstance(history, bool) or history < 0:
        raise ConfigError(
            f"config.model.fp8_amax_history={history!r} must be a non-negative integer (0: current scaling)"
        )
    choice("config.model.image.pool", model.image.pool, ("cls", "mean"))
    choice("config.model.image.stem", model.image.stem, VIT_STEMS)
    choice("config.model.image.layout", model.image.layout, VIT_LAYOUTS)
    choice("config.model.batch_norm", model.batch_norm, ("train", "frozen"))
    # MCi encoders are convolutional: no ViT dims, and every stride-2 stage needs an even size.
    towers = [("text", text_tower_dims(model))] + ([] if is_mci(model.name) else [("image", image_tower_dims(model))])
    for tower, dims in towers:
        for key, value in dims.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"config.model.{tower}.{key}={value!r} must be a positive integer")
        if dims["width"] % dims["heads"]:
            raise ConfigError(
                f"config.model.{tower}.width={dims['width']} is not divisible by heads={dims['heads']}; "
                f"set config.model.{tower}.heads to a divisor of the width"
            )
        try:
            attention_implementation(model.attention, DTYPES[model.dtype], dims["width"] // dims["heads"])
        except ValueError as e:
            raise ConfigError(f"config.model.attention={model.attention!r} ({tower} tower): {e}") from None
    patch = 32 if is_mci(model.name) else image_tower_dims(model)["patch_size"]
    if model.image.stem == "conv" and (patch < 4 or patch & (patch - 1)):
        raise ConfigError(
            f"config.model.image.stem='conv' needs a power-of-two patch size >= 4, got {patch}; "
            "set config.model.image.patch_size=16 or config.model.image.stem='patch'"
        )
    if model.image.stem == "mci" and patch != 16:
        raise ConfigError(
            f"config.model.image.stem='mci' (MobileCLIP-B's stem) makes 16x16 patches, got patch size {patch}"
        )
    if model.image_size % patch:
        what = f"{model.name}'s total stride" if is_mci(model.name) else "the patch size"
        raise ConfigError(
            f"config.model.image_size={model.image_size} is not divisible by {what} {patch}; use a multiple of {patch}"
        )
    if model.text.vocab_size < VOCAB_SIZE:
        raise ConfigError(
            f"config.model.text.vocab_size={model.text.vocab_size} is smaller than the CLIP tokenizer's {VOCAB_SIZE}"
        )
    if model.text.context_length < 2:
        raise ConfigError(f"config.model.text.context_length={model.text.context_length} must be at least 2")


def _validate_data(config: ConfigDict) -> None:
    data = config.data
    choice("config.data.kind", data.kind, DATA_KINDS)
    choice("config.data.captions", data.captions, CAPTION_POLICIES)
    choice("config.data.normalize", data.normalize, NORMALIZATIONS)
    choice("config.loss.impl", config.loss.impl, IMPLEMENTATIONS)
    choice("config.loss.kind", config.loss.kind, LOSS_KINDS)
    if config.loss.block_size < 1:
        raise ConfigError(f"config.loss.block_size={config.loss.block_size} must be at least 1")
    if config.loss.kind == "siglip" and config.model.logit_bias_init is None:
        raise ConfigError(
            "config.loss.kind='siglip' needs a logit bias: set config.model.logit_bias_init=-10 "
            "(and config.model.temperature_init=0.1, SigLIP's initial scale of 10)"
        )
    if not 0.0 <= data.synthetic_prob <= 1.0:
        raise ConfigError(f"config.data.synthetic_prob={data.synthetic_prob} must lie in [0, 1]")
    if data.prefetch_to_device < 0:
        raise ConfigError(f"config.data.prefetch_to_device={data.prefetch_to_device} must be 0 (off) or more batches")
    if len(data.crop_scale) != 2 or not 0 < data.crop_scale[0] <= data.crop_scale[1] <= 1:
        raise ConfigError(
            f"config.data.crop_scale={tuple(data.crop_scale)} must be (low, high) with 0 < low <= high <= 1"
        )
    if data.kind != "synthetic" and not data.path:
        raise ConfigError(
            f"config.data.path is required with config.data.kind={data.kind!r}; "
            "pass e.g. --config.data.path=/data/shards/{00000..00099}.tar"
        )
    if config.task == "pretrain" and data.kind == "webdataset" and data.captions != "real" and not data.synthetic_path:
        raise ConfigError(
            f"config.data.captions={data.captions!r} needs synthetic captions: pass the DataCompDR shards, e.g. "
            "--config.data.synthetic_path=/data/datacompdr/{00000..00099}.tar, or use --config.data.captions=real"
        )
    if config.task == "pretrain":
        _validate_distillation(config)


def _validate_distillation(config: ConfigDict) -> None:
    loss, data = config.loss, config.data
    if not 0.0 <= loss.distill_weight <= 1.0:
        raise ConfigError(f"config.loss.distill_weight={loss.distill_weight} must lie in [0, 1] (0: no distillation)")
    if loss.distill_weight == 0:
        return
    if loss.kind != "clip":
        raise ConfigError(f"config.loss.distill_weight needs config.loss.kind='clip', not {loss.kind!r}")
    if data.kind != "webdataset" or not data.synthetic_path:
        raise ConfigError(
            "config.loss.distill_weight > 0 reads the teacher embeddings stored in DataCompDR shards: set "
            "config.data.kind='webdataset' and config.data.synthetic_path=/data/datacompdr/{00000..00099}.tar"
        )
    if data.flip:
        raise ConfigError(
            "config.data.flip must be False with distillation: the stored augmentation is replayed as the "
            "teacher saw it"
        )
    dims = tuple(loss.teacher_dims)
    if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(f"config.loss.teacher_dims={dims} must be the positive widths of the teacher's members")
    if not loss.teacher_scale > 0:
        raise ConfigError(f"config.loss.teacher_scale={loss.teacher_scale} must be positive")


def _validate_finetuning(config: ConfigDict) -> None:
    """What every finetuning task shares: evaluation sizes, layer decay, EMA."""
    tune = config.finetune
    if tune.eval_batch_size < 1 or (tune.eval_examples is not None and tune.eval_examples < 1):
        raise ConfigError("config.finetune: eval_batch_size and eval_examples (when set) must be at least 1")
    if not 0 < config.optim.layer_decay <= 1:
        raise ConfigError(f"config.optim.layer_decay={config.optim.layer_decay} must lie in (0, 1]")
    if not 0 <= config.optim.ema_decay < 1:
        raise ConfigError(f"config.optim.ema_decay={config.optim.ema_decay} must lie in [0, 1)")


def _best_metric(config: ConfigDict, names: tuple[str, ...]) -> None:
    """config.finetune.best_metric, when set, must be one the task's evaluation logs."""
    prefixes = ("eval", "eval_ema") if config.optim.ema_decay else ("eval",)
    if config.finetune.best_metric is not None:
        metrics = tuple(f"{prefix}/{name}" for prefix in prefixes for name in names)
        choice("config.finetune.best_metric", config.finetune.best_metric, metrics)


def _validate_classification(config: ConfigDict) -> None:
    tune = config.finetune
    choice("config.data.kind (finetuning)", config.data.kind, CLASSIFICATION_KINDS)
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
    _best_metric(config, ("top1", "top5"))


def _validate_depth(config: ConfigDict) -> None:
    depth = config.depth
    choice("config.data.kind (depth)", config.data.kind, DEPTH_KINDS)
    if not 0 < depth.min_depth < depth.max_depth:
        raise ConfigError(f"config.depth: need 0 < min_depth < max_depth, got {depth.min_depth} and {depth.max_depth}")
    if not 0 <= depth.silog_lambda <= 1:
        raise ConfigError(f"config.depth.silog_lambda={depth.silog_lambda} must lie in [0, 1]")
    if depth.channels < 1 or depth.num_deconv < 0 or depth.eval_stride < 1:
        raise ConfigError("config.depth: need channels >= 1, num_deconv >= 0 and eval_stride >= 1")
    if is_mci(config.model.name) and config.model.batch_norm != "train":
        # The head's BatchNorms train on batch statistics, and an MCi tower's follow the same switch.
        raise ConfigError(
            f"config.model.batch_norm={config.model.batch_norm!r}: depth finetuning trains an MCi tower's "
            "BatchNorms with the head's; use 'train'"
        )
    _best_metric(config, DEPTH_METRICS)


def _validate_segmentation(config: ConfigDict) -> None:
    seg = config.segmentation
    choice("config.data.kind (segmentation)", config.data.kind, SEGMENTATION_KINDS)
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
    if is_mci(config.model.name) and config.model.batch_norm != "train":
        raise ConfigError(
            f"config.model.batch_norm={config.model.batch_norm!r}: segmentation trains an MCi tower's BatchNorms "
            "with the decoder's; use 'train'"
        )
    _best_metric(config, ("miou", "macc", "aacc"))


def _validate_detection(config: ConfigDict) -> None:
    det = config.detection
    choice("config.data.kind (detection)", config.data.kind, DETECTION_KINDS)
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
    if is_mci(config.model.name) and config.model.batch_norm != "train":
        raise ConfigError(
            f"config.model.batch_norm={config.model.batch_norm!r}: detection trains an MCi tower's BatchNorms "
            "with the heads'; use 'train'"
        )
    _best_metric(config, tuple(f"{kind}_{m}" for kind in ("box", "mask") for m in STAT_NAMES))


def _validate_eval(evaluation: ConfigDict) -> None:
    zeroshot = evaluation.zeroshot
    choice("config.eval.zeroshot.kind", zeroshot.kind, ZEROSHOT_KINDS)
    choice("config.eval.zeroshot.classnames", zeroshot.classnames, CLASSNAME_SOURCES)
    if zeroshot.kind in ("tfds", "folder") and not zeroshot.path:
        example = "~/tensorflow_datasets" if zeroshot.kind == "tfds" else "/data/imagenet/val"
        raise ConfigError(
            f"config.eval.zeroshot.path is required with config.eval.zeroshot.kind={zeroshot.kind!r}; "
            f"pass e.g. --config.eval.zeroshot.path={example}"
        )
    if zeroshot.num_examples is not None and zeroshot.num_examples < 1:
        raise ConfigError(
            f"config.eval.zeroshot.num_examples={zeroshot.num_examples} must be positive, or None for all"
        )
    if evaluation.num_threads < 1:
        raise ConfigError(f"config.eval.num_threads={evaluation.num_threads} must be at least 1")


def _validate_mesh_and_batch(config: ConfigDict, num_devices: int, process_count: int) -> None:
    try:
        sizes = mesh_shape(config.mesh, num_devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}; e.g. --config.mesh.data=-1 --config.mesh.fsdp=1") from None
    layout = " x ".join(f"{axis}={size}" for axis, size in sizes.items())
    for key, value in (
        ("batch_size", config.batch_size),
        ("eval.zeroshot.batch_size", config.eval.zeroshot.batch_size),
        ("eval.retrieval.batch_size", config.eval.retrieval.batch_size),
    ):
        if value % num_devices or value % process_count:
            multiple = math.lcm(num_devices, process_count)
            raise ConfigError(
                f"config.{key}={value} is not divisible by the data-parallel size {num_devices} (mesh {layout}); "
                f"use a multiple of {multiple}, e.g. --config.{key}={-(-value // multiple) * multiple}"
            )
