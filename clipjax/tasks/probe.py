"""Linear probes of a frozen image tower (DINOv2's protocol): classification, segmentation or depth from any
checkpoint in minutes, where full finetuning takes 90k-160k iterations.

`config.init` names the weights (a pretraining or MAE workdir, converted open_clip / MobileCLIP / timm / MAE
weights; without it the tower `config.model` describes is probed at random initialisation, the baseline); the
tower is applied once to every image of the training and evaluation splits, without
augmentation (classification: the evaluation crop; segmentation and depth: the fixed views of
clipjax/data/probe_views.py), sharded over the mesh, and the features are cached in <workdir>/features/. A
linear head (clipjax/train/linear_probe.py) is then fitted for every learning rate x weight decay of
`config.probe`, on the training features less a held-out slice that picks the best; the chosen head is scored
on the whole evaluation split with the metrics of the finetuning tasks (top-1 / top-5; mIoU, mAcc, aAcc from the
confusion matrix; the depth metrics, per-image means, without the Eigen crop: the views are central squares).

Writes a step-0 row to metrics.jsonl and <workdir>/probe_results.json (the metrics, the checkpoint, the data,
the probe settings and the whole grid) for studies to collect.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.config import choice
from clipjax.data.classification import CLASSIFICATION_KINDS, classification_source
from clipjax.data.depth import DEPTH_KINDS, depth_source
from clipjax.data.probe_views import depth_view, segmentation_view
from clipjax.data.segmentation import SEGMENTATION_KINDS, segmentation_source
from clipjax.errors import ConfigError
from clipjax.evals.batches import labelled_image_loader
from clipjax.evals.depth_metrics import DEPTH_METRICS
from clipjax.evals.features import FEATURE_KINDS, cached_features, extract_features, feature_function
from clipjax.models.presets import image_tower_dims, is_mci
from clipjax.tasks.spec import TaskSpec
from clipjax.train.linear_probe import PROBE_KINDS, SELECTION, ProbeData, ProbeSpec, score_head, select_head
from clipjax.train.metrics import MetricWriter
from clipjax.train.transfer import frozen_tower, model_config_from_init
from clipjax.train.workdir import prepare_workdir, refuse_a_training_workdir, save_config

RESULTS_FILE = "probe_results.json"
DATA_KINDS = {"classify": CLASSIFICATION_KINDS, "segment": SEGMENTATION_KINDS, "depth": DEPTH_KINDS}


def probe_data(config: ConfigDict, split: str) -> tuple[Any, Any, str, int]:
    """(source, load, target key, outputs) of `split` ("train" or "eval") for config.probe.task."""
    size, task = config.model.image_size, config.probe.task
    if task == "classify":
        source = classification_source(config, split)
        outputs = config.finetune.num_classes or len(source.classes)
        return source, labelled_image_loader(size, config.finetune.eval_crop_ratio), "label", outputs
    if task == "segment":
        source = segmentation_source(config, split)
        load = functools.partial(segmentation_view, size=size, reduce_zero_label=config.data.kind == "ade20k")
        return source, load, "label", len(source.classes)
    return depth_source(config, split), functools.partial(depth_view, size=size), "depth", 1


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> dict[str, Any]:
    """Probes config.init's tower as config.probe says; writes the results into `workdir`."""
    start = time.perf_counter()
    probe = config.probe
    refuse_a_training_workdir(workdir, TASK.name, "probe", "probe")
    config.model, config.data.normalize, origin = model_config_from_init(config)
    prepare_workdir(workdir)
    if jax.process_index() == 0:
        save_config(config, workdir)
        print(f"probing {origin} ({config.model.name}, {config.model.image_size} px): {probe.task}", flush=True)
    tower, variables = frozen_tower(config)
    splits, outputs = {}, 0
    features = None
    for split, count in (("train", probe.train_examples), ("eval", config.finetune.eval_examples)):
        source, load, target_key, classes = probe_data(config, split)
        outputs = outputs or classes  # the training split's
        features = features or feature_function(
            tower, mesh, task=probe.task, kind=probe.features, n_blocks=probe.n_blocks,
            normalize=config.data.normalize, target_key=target_key,
        )  # fmt: skip
        fingerprint = {
            "init": config.init and os.path.abspath(config.init),
            "weights": origin,
            "seed": config.seed,  # the random tower's, without config.init
            "model": config.model.to_dict(),
            "data": {**config.data.to_dict(), "split": split, "examples": count},
            "probe": {"task": probe.task, "features": probe.features, "n_blocks": probe.n_blocks},
        }
        compute = functools.partial(
            extract_features, features, variables, mesh, source, load, batch_size=config.finetune.eval_batch_size,
            num_examples=count, num_threads=config.eval.num_threads,
        )  # fmt: skip
        arrays = cached_features(os.path.join(workdir, "features"), fingerprint, compute)
        splits[split] = ProbeData(arrays["features"], arrays["targets"], arrays.get("extra"))
    features_s = time.perf_counter() - start
    depth = config.depth
    spec = ProbeSpec(probe.task, outputs, max_depth=depth.max_depth, min_depth=depth.min_depth,
                     silog_lambda=depth.silog_lambda)  # fmt: skip
    head, search = select_head(
        splits["train"], spec, lrs=tuple(probe.lrs), weight_decays=tuple(probe.weight_decays),
        holdout=probe.holdout, steps=probe.steps, batch_size=probe.batch_size, seed=config.seed,
    )  # fmt: skip
    metrics = {f"eval/{name}": value for name, value in score_head(head, splits["eval"], spec).items()}
    if jax.process_index() == 0:
        writer = MetricWriter(workdir)
        try:
            writer.write(0, metrics)
        finally:
            writer.close()
        chosen = f"eval/{SELECTION[probe.task]}"
        results = {
            "metric": chosen,
            "value": metrics[chosen],
            "metrics": metrics,
            "checkpoint": {"path": config.init and os.path.abspath(config.init), "source": origin},
            "data": {
                "kind": config.data.kind,
                "path": config.data.path,
                "train_split": config.data.train_split,
                "eval_split": config.data.eval_split,
                "train_examples": len(splits["train"]),
                "eval_examples": len(splits["eval"]),
            },
            "probe": {**probe.to_dict(), **search, "image_size": config.model.image_size},
        }
        with open(os.path.join(workdir, RESULTS_FILE), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"probe head: lr {search['lr']}, weight decay {search['weight_decay']} (held-out "
              f"{SELECTION[probe.task]} {search['holdout_metric']:.4f})", flush=True)  # fmt: skip
    end = time.perf_counter()
    # No training step is compiled: the summary shows where the time went instead.
    timing = {"time/features_s": features_s, "time/head_s": end - start - features_s}
    return {**metrics, **timing, "steps": 0, "wall_time_s": end - start}


def validate(config: ConfigDict) -> None:
    """The probe's settings: what it predicts, from which features, on which data, and its grid."""
    probe = config.probe
    choice("config.probe.task", probe.task, PROBE_KINDS)
    choice("config.probe.features", probe.features, FEATURE_KINDS)
    choice(f"config.data.kind (probe.task={probe.task!r})", config.data.kind, DATA_KINDS[probe.task])
    if probe.features == "blocks":
        if probe.task != "classify" or is_mci(config.model.name):
            raise ConfigError(
                "config.probe.features='blocks' (the last blocks' CLS and mean patch tokens) is for classifying "
                f"with a ViT; {config.model.name!r} probed for {probe.task!r} uses features='pooled'"
            )
        if not 1 <= probe.n_blocks <= image_tower_dims(config.model)["depth"]:
            raise ConfigError(f"config.probe.n_blocks={probe.n_blocks} must lie in 1 .. the tower's depth")
    if not probe.lrs or min(probe.lrs) <= 0 or not probe.weight_decays or min(probe.weight_decays) < 0:
        raise ConfigError("config.probe: lrs must be positive and weight_decays >= 0, at least one of each")
    if probe.steps < 1 or probe.batch_size < 1 or not 0 < probe.holdout < 1:
        raise ConfigError("config.probe: need steps >= 1, batch_size >= 1 and 0 < holdout < 1")
    if probe.train_examples is not None and probe.train_examples < 2:
        raise ConfigError(f"config.probe.train_examples={probe.train_examples} must be at least 2 (or None)")


TASK = TaskSpec(
    name="probe",
    run=run,
    title="probe",
    validate=validate,
    data_kinds=tuple(dict.fromkeys(k for kinds in DATA_KINDS.values() for k in kinds)),
    init="optional",
    batch_keys=("finetune.eval_batch_size",),
    metrics=("top1", "top5", "miou", "macc", "aacc", *DEPTH_METRICS),
    lower_is_better=("abs_rel", "sq_rel", "rmse", "rmse_log", "log10"),
    trains=False,
)
