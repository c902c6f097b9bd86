"""Images alone, for self-supervised pretraining (MAE): the pictures of any dataset kind, captions and labels
ignored, with MAE's augmentation (RandomResizedCrop of config.data.crop_scale, bicubic, and flips)."""

from __future__ import annotations

import functools
from typing import Any

import grain
import numpy as np
from ml_collections import ConfigDict

from clipjax.data import synthetic
from clipjax.data.batching import configured_batches
from clipjax.data.classification import classification_source
from clipjax.data.images import BadImage, center_crop, crop_decode_target, decode_image, random_resized_crop
from clipjax.data.pretrain import pretrain_source
from clipjax.data.skips import skipped
from clipjax.data.webdataset import IMAGE_EXTENSIONS

IMAGE_KINDS = ("synthetic", "webdataset", "tfds", "folder")
SYNTHETIC_EVAL_EXAMPLES = 256  # held-out scenes to evaluate on


def image_source(config: ConfigDict, split: str) -> Any:
    """The records of `config.data` for `split` ("train" or "eval"): the synthetic scenes ("validation"
    scenes for eval), webdataset shards (DataComp's images; with no held-out split, eval reads the training
    records), or TFDS / ImageFolder splits as finetuning reads them.

    Raises:
      ConfigError: data that cannot be found or read.
    """
    if config.data.kind == "synthetic" and split == "eval":
        return synthetic.configured_scenes(config, SYNTHETIC_EVAL_EXAMPLES, "validation")
    if config.data.kind in ("synthetic", "webdataset"):
        return pretrain_source(config)
    return classification_source(config, split)


def record_pixels(record: dict[str, Any]) -> np.ndarray | bytes | None:
    """A record's picture: its "image" (an array, or a file's bytes), or a webdataset sample's image member."""
    if "image" in record:
        return record["image"]
    return next((record[e] for e in IMAGE_EXTENSIONS if e in record), None)


def image_example(
    record: dict[str, Any], rng: np.random.Generator, *, image_size: int, crop_scale: tuple[float, float], flip: bool
) -> dict[str, Any]:
    """{"image": uint8 [image_size, image_size, 3]}: a random resized crop (bicubic) of the record's picture,
    mirrored with probability 1/2 when `flip`; or the skip marker for a missing or undecodable picture."""
    pixels = record_pixels(record)
    if pixels is None:
        return skipped("missing_image")
    if isinstance(pixels, bytes):
        if not pixels:
            return skipped("empty_member")
        try:
            pixels = decode_image(pixels, target=crop_decode_target(image_size, crop_scale))
        except BadImage:
            return skipped("corrupt_image")
    image = random_resized_crop(np.asarray(pixels, np.uint8), image_size, rng, scale=crop_scale, flip=flip)
    return {"image": image}


def image_dataset(
    config: ConfigDict, source: Any, *, process_index: int, process_count: int, start_sample: int = 0
) -> grain.IterDataset:
    """This host's batches {"image": uint8 [b, S, S, 3], "__skipped__"} (see `batching.host_batches`)."""
    transform = functools.partial(
        image_example,
        image_size=config.model.image_size,
        crop_scale=tuple(config.data.crop_scale),
        flip=config.data.flip,
    )
    return configured_batches(
        config,
        source,
        transform,
        process_index=process_index,
        process_count=process_count,
        start_sample=start_sample,
    )


def eval_image(record: dict[str, Any], image_size: int) -> dict[str, np.ndarray]:
    """The evaluation view of a record: its picture's central square at image_size (raises BadImage)."""
    pixels = record_pixels(record)
    if pixels is None:
        raise BadImage("the record holds no image")
    if isinstance(pixels, bytes):
        pixels = decode_image(pixels, target=image_size)
    return {"image": center_crop(np.asarray(pixels, np.uint8), image_size)}
