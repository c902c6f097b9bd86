"""Representation analyses of saved image towers (task "analyze"), which train nothing.

`config.analyze.kind="attention_distance"` (clipjax/evals/attention_distance.py): the mean attention distance
of every head of every block of each checkpoint in `config.analyze.inits` (pretraining or MAE workdirs,
converted open_clip / MobileCLIP / timm weights; `config.init` alone works for one) over the first
`config.analyze.num_images` evaluation images (ImageNet val as TFDS or an ImageFolder, or the synthetic scenes),
at the evaluation crop, in each checkpoint's own resolution and normalisation.

Writes <workdir>/attention_distance.json (per checkpoint: [layers, heads] means for both variants, the
across-head standard deviation per layer, the grid, the uniform-attention reference), attention_distance.png
(the paper's Fig. 3) and a step-0 row of summary numbers to metrics.jsonl.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.config import choice
from clipjax.data.classification import CLASSIFICATION_KINDS, classification_source
from clipjax.errors import ConfigError
from clipjax.evals.attention_distance import VARIANTS, measure_attention_distance
from clipjax.evals.attention_plot import plot_attention_distances
from clipjax.evals.batches import labelled_image_loader
from clipjax.tasks.spec import TaskSpec
from clipjax.train.metrics import MetricWriter
from clipjax.train.transfer import frozen_tower, model_config_from_init
from clipjax.train.workdir import prepare_workdir, refuse_a_training_workdir, save_config
from clipjax.weights import read_metadata

ANALYSES = ("attention_distance",)
RESULTS_FILE, PICTURE_FILE = "attention_distance.json", "attention_distance.png"
DEFINITION = (
    "mean over images and query patches of sum_j a_ij d_ij, d_ij the pixel distance between the centres of "
    "patches i and j; non-patch tokens (CLS) dropped as queries and keys; renormalised: the patch keys' weights "
    "divided by their sum; unrenormalised: as they are"
)


def checkpoints(config: ConfigDict) -> tuple[str, ...]:
    """The weights to analyse: config.analyze.inits, or config.init alone."""
    return tuple(config.analyze.inits) or ((config.init,) if config.init else ())


def labels(inits: tuple[str, ...]) -> list[str]:
    """Short panel names: each path's last component, the whole path where two would share one."""
    names = [os.path.basename(os.path.normpath(path)) for path in inits]
    return [name if names.count(name) == 1 else path for name, path in zip(names, inits)]


def checkpoint_config(config: ConfigDict, init: str) -> tuple[ConfigDict, str]:
    """(a copy of `config` for analysing `init`: its architecture, resolution and normalisation, and as many
    held-out synthetic scenes as images asked for; the weights' description)."""
    one = copy.deepcopy(config)
    one.init = init
    one.model, one.data.normalize, origin = model_config_from_init(one)
    one.model.image_size = read_metadata(init)["model"]["image_size"]  # the resolution it was trained at
    if one.data.kind == "synthetic":
        one.finetune.eval_examples = one.analyze.num_images
    return one, origin


def analyse_one(config: ConfigDict, init: str, mesh: Mesh) -> dict[str, Any]:
    """One checkpoint's attention distances, with where they came from."""
    one, origin = checkpoint_config(config, init)
    if jax.process_index() == 0:
        print(f"attention distance of {origin} ({one.model.name}, {one.model.image_size} px)", flush=True)
    tower, variables = frozen_tower(one)
    measured = measure_attention_distance(
        tower, variables, mesh, classification_source(one, "eval"),
        labelled_image_loader(one.model.image_size, one.finetune.eval_crop_ratio),
        image_size=one.model.image_size, normalize=one.data.normalize, batch_size=one.analyze.batch_size,
        num_examples=one.analyze.num_images, num_threads=one.eval.num_threads,
    )  # fmt: skip
    result = {
        "init": os.path.abspath(init),
        "source": origin,
        "model": one.model.name,
        "image_size": one.model.image_size,
        **{key: measured[key] for key in ("images", "grid", "patch_px", "uniform")},
    }
    for variant in VARIANTS:
        distances = measured[variant]
        result[variant] = {"mean": distances.tolist(), "across_head_std": distances.std(axis=1).tolist()}
    return result


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> dict[str, Any]:
    """Analyses every checkpoint as config.analyze says; writes the results into `workdir`."""
    start = time.perf_counter()
    refuse_a_training_workdir(workdir, TASK.name, "analysis", "analysis")
    prepare_workdir(workdir)
    if jax.process_index() == 0:
        save_config(config, workdir)
    inits = checkpoints(config)
    results = [analyse_one(config, init, mesh) for init in inits]
    summary = {}
    for label, result in zip(labels(inits), results):
        distances = np.asarray(result["renormalised"]["mean"])
        summary[f"attention_distance/{label}/mean_px"] = float(distances.mean())
        summary[f"attention_distance/{label}/last_block_mean_px"] = float(distances[-1].mean())
        summary[f"attention_distance/{label}/last_block_head_std_px"] = float(distances[-1].std())
    if jax.process_index() == 0:
        data = {"kind": config.data.kind, "path": config.data.path, "split": config.data.eval_split}
        with open(os.path.join(workdir, RESULTS_FILE), "w", encoding="utf-8") as f:
            json.dump({"definition": DEFINITION, "data": data, "checkpoints": results}, f, indent=2)
        panels = [
            {"label": label, "uniform": result["uniform"], **{v: result[v]["mean"] for v in VARIANTS}}
            for label, result in zip(labels(inits), results)
        ]
        plot_attention_distances(panels, os.path.join(workdir, PICTURE_FILE))
        writer = MetricWriter(workdir)
        try:
            writer.write(0, summary)
        finally:
            writer.close()
    return {**summary, "steps": 0, "wall_time_s": time.perf_counter() - start}


def validate(config: ConfigDict) -> None:
    """The analysis, its checkpoints and its image count."""
    analyze = config.analyze
    choice("config.analyze.kind", analyze.kind, ANALYSES)
    if not checkpoints(config):
        raise ConfigError(
            "config.analyze.inits is empty: name the weights to analyse, e.g. "
            '--config.analyze.inits=\'("runs/demo", "runs/demo_real")\' (or --config.init=DIR for one)'
        )
    if analyze.inits and config.init:
        raise ConfigError("config.init and config.analyze.inits are both set: name the weights in one of them")
    if any("://" in path for path in checkpoints(config)):
        raise ConfigError("config.analyze.inits: copy bucket weights to a local or mounted directory first")
    if analyze.num_images < 1:
        raise ConfigError(f"config.analyze.num_images={analyze.num_images} must be at least 1")


TASK = TaskSpec(
    name="analyze",
    run=run,
    title="analysis",
    validate=validate,
    data_kinds=CLASSIFICATION_KINDS,
    init="optional",
    batch_keys=("analyze.batch_size",),
    trains=False,
)
