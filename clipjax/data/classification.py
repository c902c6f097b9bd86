"""Labelled images for finetuning: sources (synthetic scenes, TFDS, ImageFolder) and the training transform.

The training transform runs in grain's workers (`config.data.num_workers`): decode, RandomResizedCrop, flip,
RandAugment, random erasing, all on uint8 pixels; normalisation, mixup and cutmix happen on the device in
the step. Evaluation decodes, resizes to image_size / eval_crop_ratio and centre-crops (evals/batches.py).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import grain
import numpy as np
from ml_collections import ConfigDict

from clipjax.data import synthetic
from clipjax.data.augment import rand_augment, random_erasing
from clipjax.data.batching import configured_batches
from clipjax.data.images import BadImage, decode_image, random_resized_crop
from clipjax.data.labelled import ImageFolderSource, TfdsSource
from clipjax.data.layouts import naming_the_layout
from clipjax.data.skips import skipped
from clipjax.data.transforms import normalization_stats
from clipjax.errors import ConfigError

CLASSIFICATION_KINDS = ("synthetic", "tfds", "folder")
SYNTHETIC_EVAL_EXAMPLES = 1000  # held-out scenes when config.finetune.eval_examples is None


def classification_source(config: ConfigDict, split: str) -> Any:
    """The labelled source of `config.data` for `split` ("train" or "eval"); it has `len`, item access
    (records {"image": bytes or uint8 [S, S, 3], "label": int, ...}) and `classes` (names in label order).

    Synthetic scenes: the label is the category of the largest object ("validation" scenes for eval).
    TFDS: `config.data.path` is the data_dir of `config.data.dataset`, splits data.train_split / eval_split.
    ImageFolder: `config.data.path/<split name>/<class>/<image>` with the same split names.

    Raises:
      ConfigError: a kind without labels, or data that cannot be found.
    """
    data = config.data
    name = data.train_split if split == "train" else data.eval_split
    if data.kind == "synthetic":
        source = synthetic.finetuning_scenes(config, split, SYNTHETIC_EVAL_EXAMPLES)
        source.classes = list(synthetic.CATEGORIES)
        return source
    if not data.path:
        raise ConfigError(f"config.data.kind={data.kind!r} needs config.data.path")
    with naming_the_layout(data.path, data.kind):
        if data.kind == "tfds":
            return TfdsSource(data.path, data.dataset, name)
        if data.kind == "folder":
            return ImageFolderSource(os.path.join(data.path, name))
    raise ConfigError(
        f"config.data.kind={data.kind!r} holds no labels; finetuning reads "
        f"{', '.join(repr(k) for k in CLASSIFICATION_KINDS)}"
    )


def train_example(
    record: dict[str, Any],
    rng: np.random.Generator,
    *,
    image_size: int,
    crop_scale: tuple[float, float],
    flip: bool,
    randaugment: tuple[int, float, float],
    erasing: float,
    erasing_stats: tuple[tuple[float, ...], tuple[float, ...]],
) -> dict[str, Any]:
    """One augmented training example: {"image": uint8 [image_size, image_size, 3], "label": int32 []}, or
    the skip marker for an image that does not decode (counted as data/skipped_corrupt_image)."""
    image = record["image"]
    if isinstance(image, bytes):
        try:
            image = decode_image(image)
        except BadImage:
            return skipped("corrupt_image")
    image = random_resized_crop(np.asarray(image, np.uint8), image_size, rng, scale=crop_scale, flip=flip)
    ops, magnitude, magnitude_std = randaugment
    if ops:
        image = rand_augment(image, rng, num_ops=ops, magnitude=magnitude, magnitude_std=magnitude_std)
    if erasing:
        image = random_erasing(image, rng, probability=erasing, mean=erasing_stats[0], std=erasing_stats[1])
    return {"image": image, "label": np.int32(record["label"])}


def finetune_dataset(
    config: ConfigDict, source: Any, *, process_index: int, process_count: int, start_sample: int = 0
) -> grain.IterDataset:
    """This host's augmented training batches {"image": uint8 [b, S, S, 3], "label": int32 [b], "__skipped__"}
    (see `batching.host_batches`: shuffled every epoch, checkpointable, decoded in grain workers)."""
    tune = config.finetune
    # Random erasing fills with noise that is standard normal after the model's normalisation.
    stats = normalization_stats(config.data.normalize)
    transform = functools.partial(
        train_example,
        image_size=config.model.image_size,
        crop_scale=tuple(config.data.crop_scale),
        flip=config.data.flip,
        randaugment=(tune.randaugment_ops, tune.randaugment_magnitude, tune.randaugment_magnitude_std),
        erasing=tune.random_erasing,
        erasing_stats=stats,
    )
    return configured_batches(
        config, source, transform, process_index=process_index, process_count=process_count, start_sample=start_sample
    )
