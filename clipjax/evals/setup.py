"""The evaluations `config.eval` asks for, built once per run and called with the model's current variables
({"params": ..., other collections})."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Callable

import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.data import synthetic
from clipjax.data.labelled import ImageFolderSource, TfdsSource
from clipjax.data.layouts import naming_the_layout
from clipjax.data.transforms import normalize_images
from clipjax.errors import ConfigError
from clipjax.evals.batches import labelled_image_loader
from clipjax.evals.encode import Encoders
from clipjax.evals.retrieval import RetrievalEvaluator, RetrievalSplit
from clipjax.evals.zeroshot import ZeroShotEvaluator
from clipjax.models.clip import CLIP

ZEROSHOT_KINDS = ("synthetic", "tfds", "folder", "none")
# The names (after "eval/") of what `make_evaluator` can log.
ZEROSHOT_AND_RETRIEVAL_METRICS = ("zeroshot_top1", "zeroshot_top5") + tuple(
    f"retrieval_{direction}_r{k}" for direction in ("i2t", "t2i") for k in (1, 5, 10)
)
CLASSNAME_SOURCES = ("imagenet", "source")
SYNTHETIC_ZEROSHOT_EXAMPLES = 1000  # held-out scenes when config.eval.zeroshot.num_examples is None

Evaluate = Callable[[Any], dict[str, float]]


@functools.cache
def imagenet_prompts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(1000 ImageNet class names in label order, 80 prompt templates): OpenAI's zero-shot lists, shipped
    as package data (clipjax/assets/imagenet_zeroshot.json)."""
    with (resources.files("clipjax") / "assets" / "imagenet_zeroshot.json").open(encoding="utf-8") as f:
        lists = json.load(f)
    return tuple(lists["classnames"]), tuple(lists["templates"])


def make_evaluator(model: CLIP, mesh: Mesh, config: ConfigDict) -> Evaluate:
    """variables -> every configured evaluation's metrics, merged (zero-shot, then retrieval).

    Raises:
      ConfigError: evaluation data that cannot be found or read, before training starts.
    """
    encoders = Encoders(model, mesh, functools.partial(normalize_images, mode=config.data.normalize))
    evaluators: list[Evaluate] = []
    zeroshot = config.eval.zeroshot
    context_length = config.model.text.context_length
    if zeroshot.kind != "none":
        source, load, classnames, templates, num_examples = _zeroshot_data(config)
        evaluators.append(
            ZeroShotEvaluator(
                encoders,
                source,
                load,
                classnames,
                templates,
                batch_size=zeroshot.batch_size,
                context_length=context_length,
                num_examples=num_examples,
                num_threads=config.eval.num_threads,
            )
        )
    if config.eval.retrieval.path:
        evaluators.append(
            RetrievalEvaluator(
                encoders,
                RetrievalSplit(config.eval.retrieval.path),
                image_size=config.model.image_size,
                batch_size=config.eval.retrieval.batch_size,
                context_length=context_length,
                num_threads=config.eval.num_threads,
            )
        )

    def evaluate(variables: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for evaluator in evaluators:
            metrics.update(evaluator(variables))
        return metrics

    return evaluate


def _zeroshot_data(config: ConfigDict):
    """(source, load, classnames, templates, num_examples) for config.eval.zeroshot."""
    zeroshot = config.eval.zeroshot
    if zeroshot.kind == "synthetic":
        scenes = synthetic.configured_scenes(config, zeroshot.num_examples or SYNTHETIC_ZEROSHOT_EXAMPLES, "validation")
        load = lambda record: {"image": record["image"], "label": np.asarray(record["label"], np.int32)}
        return scenes, load, synthetic.CATEGORIES, synthetic.ZEROSHOT_TEMPLATES, None
    with naming_the_layout(zeroshot.path, zeroshot.kind, "config.eval.zeroshot.kind", accepted=ZEROSHOT_KINDS):
        if zeroshot.kind == "tfds":
            source = TfdsSource(zeroshot.path, zeroshot.dataset, zeroshot.split)
        else:
            source = ImageFolderSource(zeroshot.path)
    imagenet_names, templates = imagenet_prompts()
    if zeroshot.classnames == "imagenet":
        classnames = imagenet_names
        if source.classes and len(source.classes) != len(classnames):
            raise ConfigError(
                f"config.eval.zeroshot: {source.description} has {len(source.classes)} classes, not the "
                f"{len(classnames)} ImageNet classes; set --config.eval.zeroshot.classnames=source"
            )
    else:
        if not source.classes:
            raise ConfigError(f"config.eval.zeroshot.classnames='source': {source.description} has no class-name list")
        classnames = tuple(name.replace("_", " ") for name in source.classes)
    return source, labelled_image_loader(config.model.image_size), classnames, templates, zeroshot.num_examples
