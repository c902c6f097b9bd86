"""Config validation before anything compiles: each problem is one line naming the key and the fix.

What holds for every task is checked here; what a task declares in its `TaskSpec` (clipjax/tasks/spec.py) is
applied here too (whether it takes config.init, its data kinds, the finetuning settings); the rest of a task's
settings are checked by the task's own `validate`.
"""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from clipjax.config import choice
from clipjax.data.scene_captions import CAPTION_DETAILS
from clipjax.data.transforms import NORMALIZATIONS
from clipjax.errors import ConfigError
from clipjax.evals.setup import CLASSNAME_SOURCES, ZEROSHOT_KINDS
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
from clipjax.tasks import data_kinds, get_task
from clipjax.tasks.spec import TaskSpec
from clipjax.tokenizer import VOCAB_SIZE
from clipjax.train.optim import SCHEDULES


def validate(config: ConfigDict, *, num_devices: int, process_count: int) -> None:
    """Raises ConfigError for the first problem found in `config` for a job on `num_devices` devices."""
    spec = get_task(config.task)
    for key in ("batch_size", "total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "stop_check_every"):
        if config[key] < 1:
            raise ConfigError(f"config.{key}={config[key]} must be at least 1")
    for key in ("eval_every", "keep_every", "max_bad_steps"):
        if config[key] < 0:
            raise ConfigError(f"config.{key}={config[key]} must be 0 (off) or positive")
    if config.preemption_grace_s <= 0:
        raise ConfigError(f"config.preemption_grace_s={config.preemption_grace_s} must be positive")
    if spec.init == "required" and not config.init:
        raise ConfigError(
            f"config.init is required with config.task={spec.name!r}: pass the weights, e.g. --config.init=DIR from "
            "`python -m clipjax.convert` or a pretraining workdir"
        )
    if spec.init == "none" and config.init is not None:
        raise ConfigError(
            f"config.init={config.init!r}: task {spec.name!r} starts from random weights (and resumes from its "
            "workdir); unset config.init"
        )
    _validate_local_paths(config)
    _validate_model(config.model)
    _validate_data(config)
    _validate_eval(config.eval)
    if spec.validate is not None:
        spec.validate(config)
    if spec.data_kinds:
        choice(f"config.data.kind ({spec.label})", config.data.kind, spec.data_kinds)
    if spec.finetunes:
        _validate_finetuning(config, spec)
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
    choice("config.data.kind", data.kind, data_kinds())
    choice("config.data.normalize", data.normalize, NORMALIZATIONS)
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
    scenes = data.synthetic
    choice("config.data.synthetic.caption_detail", scenes.caption_detail, CAPTION_DETAILS)
    probabilities = {"haze": scenes.haze, "noise_wrong_shape": scenes.noise_wrong_shape,
                     "noise_other_scene": scenes.noise_other_scene}  # fmt: skip
    probabilities.update({f"noise_keep[{i}]": p for i, p in enumerate(scenes.noise_keep)})
    for key, value in probabilities.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"config.data.synthetic.{key}={value} must lie in [0, 1]")
    if len(scenes.noise_keep) != 2:
        raise ConfigError(f"config.data.synthetic.noise_keep={tuple(scenes.noise_keep)} must be (main, other)")
    if data.subset_size is not None:
        spec = get_task(config.task)
        if not spec.trains:
            raise ConfigError(
                f"config.data.subset_size={data.subset_size}: task {spec.name!r} reads no training stream to take "
                "a subset of; unset it (a probe takes the first config.probe.train_examples training images)"
            )
        if isinstance(data.subset_size, bool) or not isinstance(data.subset_size, int) or data.subset_size < 1:
            raise ConfigError(
                f"config.data.subset_size={data.subset_size!r} must be a whole number of records, at least 1 "
                "(None: all of them)"
            )
    if isinstance(data.subset_seed, bool) or not isinstance(data.subset_seed, int) or not 0 <= data.subset_seed < 2**32:
        raise ConfigError(f"config.data.subset_seed={data.subset_seed} must lie in 0 .. 2**32 - 1")


def _validate_finetuning(config: ConfigDict, spec: TaskSpec) -> None:
    """What every finetuning task shares: evaluation sizes, layer decay, EMA, an MCi tower's BatchNorms, the
    metric whose best weights are kept."""
    tune = config.finetune
    if tune.eval_batch_size < 1 or (tune.eval_examples is not None and tune.eval_examples < 1):
        raise ConfigError("config.finetune: eval_batch_size and eval_examples (when set) must be at least 1")
    if not 0 < config.optim.layer_decay <= 1:
        raise ConfigError(f"config.optim.layer_decay={config.optim.layer_decay} must lie in (0, 1]")
    if not 0 <= config.optim.ema_decay < 1:
        raise ConfigError(f"config.optim.ema_decay={config.optim.ema_decay} must lie in [0, 1)")
    if spec.trains_batch_norm and is_mci(config.model.name) and config.model.batch_norm != "train":
        raise ConfigError(
            f"config.model.batch_norm={config.model.batch_norm!r}: task {spec.name!r} trains an MCi tower's "
            "BatchNorms with its head's; use 'train'"
        )
    # config.finetune.best_metric, when set, must be one the task's evaluation logs.
    prefixes = ("eval", "eval_ema") if config.optim.ema_decay else ("eval",)
    if tune.best_metric is not None:
        metrics = tuple(f"{prefix}/{name}" for prefix in prefixes for name in spec.metrics)
        choice("config.finetune.best_metric", tune.best_metric, metrics)


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


def _lookup(config: ConfigDict, dotted: str) -> int:
    for part in dotted.split("."):
        config = config[part]
    return config


def _validate_mesh_and_batch(config: ConfigDict, num_devices: int, process_count: int) -> None:
    try:
        sizes = mesh_shape(config.mesh, num_devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}; e.g. --config.mesh.data=-1 --config.mesh.fsdp=1") from None
    layout = " x ".join(f"{axis}={size}" for axis, size in sizes.items())
    keys = ("batch_size", "eval.zeroshot.batch_size", "eval.retrieval.batch_size", *get_task(config.task).batch_keys)
    for key, value in ((key, _lookup(config, key)) for key in keys):
        if value % num_devices or value % process_count:
            multiple = math.lcm(num_devices, process_count)
            raise ConfigError(
                f"config.{key}={value} is not divisible by the data-parallel size {num_devices} (mesh {layout}); "
                f"use a multiple of {multiple}, e.g. --config.{key}={-(-value // multiple) * multiple}"
            )
