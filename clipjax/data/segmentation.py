"""Semantic segmentation data: ADE20K (SceneParsing, 150 classes) and the synthetic scenes' semantic masks.

ADE20K layout (the ADEChallengeData2016 release): `images/{training,validation}/<stem>.jpg` and
`annotations/{training,validation}/<stem>.png`, labels uint8 with 0 "other" and 1..150 the classes. Records carry
the encoded files so that decoding happens in grain's workers. mmseg's `reduce_zero_label` turns the labels into
0..149 with 255 (IGNORE_LABEL) for "other"; the synthetic scenes' labels are used as they are (0 background is a
class).

Training (`segmentation_train_example`) follows mmseg's ADE20K pipeline: RandomResize (scale (2048, 512) times
r ~ U(0.5, 2), keeping the aspect ratio; image bilinear, label nearest so that no label is ever interpolated),
RandomCrop with cat_max_ratio 0.75, RandomFlip 0.5, PhotoMetricDistortion (image only), then padding to the crop
at the bottom and right, where mmseg's data preprocessor pads: label 255, image `pad_pixel` (the pixel that
normalises to zero, `transforms.padding_pixel`, as mmseg pads the normalised image with 0). An image that does
not decode is skipped as corrupt_image; a label that does not decode, or whose size differs from its image's, as
corrupt_label. Evaluation (`segmentation_eval_example`) resizes the image as mmseg's test Resize and keeps the
label at the original resolution (predictions are resized back to it).
"""

from __future__ import annotations

import functools
import glob
import os
from typing import Any

import cv2
import grain
import numpy as np
from ml_collections import ConfigDict

from clipjax.data import synthetic
from clipjax.data.batching import configured_batches
from clipjax.data.images import BadImage, decode_map, record_image
from clipjax.data.layouts import naming_the_layout
from clipjax.data.skips import skipped
from clipjax.data.transforms import BLACK, padding_pixel
from clipjax.errors import ConfigError
from clipjax.ops.labels import IGNORE_LABEL

SEGMENTATION_KINDS = ("synthetic", "ade20k")
SYNTHETIC_EVAL_EXAMPLES = 200  # held-out scenes when config.finetune.eval_examples is None
ADE20K_DIR = "ADEChallengeData2016"
ADE20K_SPLITS = ("training", "validation")
# The generic split names of config.data's defaults, and the ADE20K directories they stand for.
_GENERIC_SPLITS = {"train": "training", "validation": "validation"}
# mmseg's ADE20K settings: RandomResize's base scale (long, short) and ratio range, RandomCrop's cap on one class.
ADE20K_SCALE = (2048, 512)
RATIO_RANGE = (0.5, 2.0)
CAT_MAX_RATIO = 0.75
CROP_TRIES = 10
# PhotoMetricDistortion: each op applied with probability 1/2; hue in OpenCV's 8-bit HSV, where it spans [0, 180).
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18
_MISSING_NAMED = 3  # images without annotation named in the error

# The 150 SceneParsing classes in label order (label k + 1 in the PNGs, k after reduce_zero_label), as mmseg's
# ADE20KDataset lists them (its "bed " carries a stray trailing space, dropped here).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip


class Ade20kSource:
    """One split of ADE20K's SceneParsing release: `len`, item access, `classes`, `description`.

    `source[i]` is {"image": bytes (the JPEG), "label_png": bytes (uint8 PNG, 0 other, 1..150 classes),
    "name": str (the file stem)}, in the order of the names.

    Args:
      root: the directory holding ADEChallengeData2016, or ADEChallengeData2016 itself.
      split: "training" or "validation" (the release's directory names).

    Attributes:
      classes: the 150 class names, ADE20K_CLASSES.

    Raises:
      ConfigError: a missing root or split directory, no images, or images without an annotation.
    """

    classes = ADE20K_CLASSES

    def __init__(self, root: str, split: str) -> None:
        if not os.path.isdir(root):
            raise ConfigError(f"ADE20K root {root} does not exist (config.data.path)")
        base = os.path.join(root, ADE20K_DIR) if os.path.isdir(os.path.join(root, ADE20K_DIR)) else root
        self.images_dir = os.path.join(base, "images", split)
        self.labels_dir = os.path.join(base, "annotations", split)
        for directory in (self.images_dir, self.labels_dir):
            if not os.path.isdir(directory):
                raise ConfigError(
                    f"ADE20K directory {directory} does not exist: config.data.path must hold {ADE20K_DIR} "
                    f"(or be it) with images/ and annotations/ of the split {split!r} (one of {ADE20K_SPLITS})"
                )
        names = sorted(os.path.basename(p)[: -len(".jpg")] for p in glob.glob(os.path.join(self.images_dir, "*.jpg")))
        if not names:
            raise ConfigError(f"ADE20K directory {self.images_dir} holds no .jpg images")
        # One listing instead of a stat per image: the training split has 20k of them.
        labelled = {os.path.basename(p)[: -len(".png")] for p in glob.glob(os.path.join(self.labels_dir, "*.png"))}
        missing = [name for name in names if name not in labelled]
        if missing:
            shown = ", ".join(missing[:_MISSING_NAMED]) + (", ..." if len(missing) > _MISSING_NAMED else "")
            raise ConfigError(f"{len(missing)} ADE20K images in {self.images_dir} have no annotation PNG: {shown}")
        self.names = names
        self.description = f"ADE20K {split} ({len(names)} images under {base})"

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        with open(os.path.join(self.images_dir, name + ".jpg"), "rb") as f:
            image = f.read()
        with open(os.path.join(self.labels_dir, name + ".png"), "rb") as f:
            label_png = f.read()
        return {"image": image, "label_png": label_png, "name": name}


class SyntheticSegmentation(synthetic.SyntheticScenes):
    """SyntheticScenes whose "semantic" masks are the labels: class 0 background, 1 + i CATEGORIES[i]."""

    classes = ["background", *synthetic.CATEGORIES]


def decode_label_png(data: bytes) -> np.ndarray:
    """An 8-bit single-channel PNG of class ids to its values.

    Args:
      data: the file's bytes.

    Returns:
      uint8 [H, W], the stored values unchanged.

    Raises:
      BadImage: empty, corrupt or truncated data, or an image that is not 8-bit single-channel (a colour or
        palette-expanded PNG holds colours, not class ids).
    """
    return decode_map(data, np.uint8, "label map")


def ade_labels(raw: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label: ADE20K's 0 ("other") -> IGNORE_LABEL, class k -> k - 1.

    Args:
      raw: uint8 [H, W] labels as stored (0 other, 1..150).

    Returns:
      uint8 [H, W]: 0..149, 255 ignored.
    """
    # uint8 arithmetic wraps 0 to 255; a stored 255 (none in ADE20K) would land on 254, and mmseg keeps it 255.
    reduced = np.asarray(raw, np.uint8) - np.uint8(1)
    reduced[reduced == IGNORE_LABEL - 1] = IGNORE_LABEL
    return reduced


def label_of(record: dict[str, Any], shape: tuple[int, ...], reduce_zero_label: bool) -> np.ndarray:
    """uint8 [H, W]: the record's labels ("label_png" decoded, or the synthetic "semantic"), reduced on request.

    Raises:
      BadImage: a label map that does not decode, or whose size differs from the image's `shape` [H, W].
    """
    if "label_png" in record:
        label = decode_label_png(record["label_png"])
    else:
        label = np.asarray(record["semantic"]).astype(np.uint8)
    if label.shape != tuple(shape):
        raise BadImage(f"label map of {label.shape} pixels for an image of {tuple(shape)}")
    return ade_labels(label) if reduce_zero_label else label


def rescale_size(height: int, width: int, scale: tuple[int, int] | float) -> tuple[int, int]:
    """mmcv's `rescale_size` with keep_ratio: the size after rescaling by one factor for both sides.

    Args:
      height, width: the image's size.
      scale: (long, short) bounds, giving the factor min(long / long side, short / short side) (the largest
        that keeps both sides within them), or the factor itself.

    Returns:
      (new height, new width), each side times the factor rounded half up.
    """
    if isinstance(scale, tuple):
        factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    else:
        factor = float(scale)
    return int(height * factor + 0.5), int(width * factor + 0.5)


def random_resize(
    image: np.ndarray, label: np.ndarray | None, scale: tuple[int, int] | None, ratio: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """mmcv's RandomResize (keep_ratio) for one drawn `ratio`: the target scale is `scale` times the ratio,
    truncated to whole pixels as mmcv does, or with `scale` None the image's own size times the ratio.

    Args:
      image: uint8 [H, W, 3], resized bilinearly.
      label: uint8 [H, W] or None, resized to the same size by nearest neighbour: never interpolated.
      scale: (long, short) base scale, or None.
      ratio: the factor drawn from the ratio range.

    Returns:
      (uint8 [h, w, 3], uint8 [h, w] or None), (h, w) = rescale_size(H, W, target).
    """
    target = ratio if scale is None else (int(scale[0] * ratio), int(scale[1] * ratio))
    height, width = rescale_size(*image.shape[:2], target)
    if (height, width) == image.shape[:2]:
        return image, label
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


def choose_crop(
    label: np.ndarray, crop_size: int, rng: np.random.Generator, cat_max_ratio: float = CAT_MAX_RATIO
) -> tuple[int, int]:
    """mmseg's RandomCrop window: up to CROP_TRIES random windows until one holds more than one class and its
    most frequent class covers less than `cat_max_ratio` of its labelled (not IGNORE_LABEL) pixels; else the
    last one tried. A side shorter than the crop gets offset 0 (it is not cropped). cat_max_ratio >= 1 takes
    the first window.

    Args:
      label: uint8 [H, W] labels, IGNORE_LABEL not counted.

    Returns:
      (top, left) of the crop_size x crop_size window (clipped to the label's size).
    """
    height, width = label.shape
    for _ in range(CROP_TRIES):
        top = int(rng.integers(0, max(height - crop_size, 0) + 1))
        left = int(rng.integers(0, max(width - crop_size, 0) + 1))
        if cat_max_ratio >= 1.0:
            break
        # A histogram over 256 values instead of mmseg's np.unique: no sort of the crop's pixels per try.
        counts = np.bincount(label[top : top + crop_size, left : left + crop_size].ravel(), minlength=256)
        counts = counts[:IGNORE_LABEL][counts[:IGNORE_LABEL] > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return top, left


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """values * alpha + beta in float, clipped to [0, 255] and truncated to uint8, as mmseg's `convert`."""
    return np.clip(values.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion of uint8 [H, W, 3] RGB pixels: brightness (+ U(-32, 32)), then contrast
    (* U(0.5, 1.5)) either first or last at random, saturation (S * U(0.5, 1.5)) and hue (H + an integer in
    [-18, 18], modulo 180) in OpenCV's 8-bit HSV; each op applied with probability 1/2.

    mmseg works on BGR pixels; brightness and contrast treat channels alike and the HSV conversion here is from
    RGB, so the result is the same. Its hue shift is numpy's randint(-18, 18), which never draws +18; the shift
    here is symmetric.

    Returns:
      uint8 [H, W, 3].
    """
    image = np.asarray(image, np.uint8)
    if rng.random() < 0.5:
        image = _convert(image, beta=rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
    contrast_last = rng.random() < 0.5
    if not contrast_last and rng.random() < 0.5:
        image = _convert(image, alpha=rng.uniform(*CONTRAST_RANGE))
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*SATURATION_RANGE))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        shift = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1))
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + shift) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if contrast_last and rng.random() < 0.5:
        image = _convert(image, alpha=rng.uniform(*CONTRAST_RANGE))
    return image


def segmentation_train_example(
    record: dict[str, Any],
    rng: np.random.Generator,
    *,
    crop_size: int,
    scale: tuple[int, int] | None,
    ratio_range: tuple[float, float] = RATIO_RANGE,
    cat_max_ratio: float = CAT_MAX_RATIO,
    flip: bool,
    photometric: bool,
    reduce_zero_label: bool,
    pad_pixel: tuple[int, int, int] = BLACK,
) -> dict[str, Any]:
    """One augmented training pair from an ADE20K record ({"image": bytes, "label_png": bytes}) or a synthetic
    scene ({"image": uint8 [S, S, 3], "semantic": int32 [S, S]}), or the skip marker (corrupt_image,
    corrupt_label).

    mmseg's order: labels reduced (with `reduce_zero_label`), `random_resize` by r ~ U(ratio_range),
    `choose_crop`, a left-right flip of both with probability 1/2 (with `flip`), `photometric_distortion` of the
    image (with `photometric`), and padding to crop_size at the bottom and right (image pad_pixel, label IGNORE_LABEL).

    Args:
      scale: the (long, short) base scale (ADE20K (2048, 512)), or None for the image's own size.

    Returns:
      image  uint8 [crop_size, crop_size, 3]
      label  uint8 [crop_size, crop_size]  class ids, IGNORE_LABEL ignored
    """
    try:
        image = record_image(record)
    except BadImage:
        return skipped("corrupt_image")
    try:
        label = label_of(record, image.shape[:2], reduce_zero_label)
    except BadImage:
        return skipped("corrupt_label")
    image, label = random_resize(image, label, scale, rng.uniform(*ratio_range))
    top, left = choose_crop(label, crop_size, rng, cat_max_ratio)
    image = image[top : top + crop_size, left : left + crop_size]
    label = label[top : top + crop_size, left : left + crop_size]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    image = np.ascontiguousarray(image)  # cv2 needs contiguous pixels; the padding copy below needs none
    if photometric:
        image = photometric_distortion(image, rng)
    height, width = label.shape
    out_image = np.full((crop_size, crop_size, 3), pad_pixel, np.uint8)
    out_label = np.full((crop_size, crop_size), IGNORE_LABEL, np.uint8)
    out_image[:height, :width] = image
    out_label[:height, :width] = label
    return {"image": out_image, "label": out_label}


def segmentation_eval_example(
    record: dict[str, Any], *, scale: tuple[int, int] | None, reduce_zero_label: bool
) -> dict[str, np.ndarray]:
    """An ADE20K or synthetic record as mmseg's test pipeline sees it: the image resized by Resize(scale,
    keep_ratio=True) (bilinear; not at all with `scale` None), the label at the original resolution.

    Returns:
      image  uint8 [h, w, 3], (h, w) = rescale_size(H, W, scale)
      label  uint8 [H, W]  class ids, IGNORE_LABEL ignored

    Raises:
      BadImage: an image or label map that does not decode, or whose sizes differ.
    """
    image = record_image(record)
    label = label_of(record, image.shape[:2], reduce_zero_label)
    if scale is not None:
        image, _ = random_resize(image, None, tuple(scale), 1.0)
    return {"image": image, "label": label}


def segmentation_source(config: ConfigDict, split: str) -> Any:
    """The segmentation source of `config.data` for `split` ("train" or "eval"): `len`, item access and
    `classes` (the class names in label order) for `segmentation_train_example` / `segmentation_eval_example`.

    Synthetic scenes: "validation" scenes for eval, config.finetune.eval_examples of them (default 200); classes
    background and synthetic.CATEGORIES. ADE20K: config.data.path, the directory config.data.train_split /
    eval_split ("training" / "validation"; the generic defaults "train" / "validation" stand for them).

    Raises:
      ConfigError: a kind without segmentation labels, or data that cannot be found.
    """
    data = config.data
    if data.kind == "synthetic":
        return synthetic.finetuning_scenes(config, split, SYNTHETIC_EVAL_EXAMPLES, SyntheticSegmentation)
    if data.kind == "ade20k":
        if not data.path:
            raise ConfigError(
                "config.data.kind='ade20k' needs config.data.path (the directory of ADEChallengeData2016)"
            )
        name = data.train_split if split == "train" else data.eval_split
        with naming_the_layout(data.path, data.kind):
            return Ade20kSource(data.path, _GENERIC_SPLITS.get(name, name))
    raise ConfigError(
        f"config.data.kind={data.kind!r} holds no segmentation labels; segmentation finetuning reads "
        f"{', '.join(repr(k) for k in SEGMENTATION_KINDS)}"
    )


def segmentation_dataset(
    config: ConfigDict, source: Any, *, process_index: int, process_count: int, start_sample: int = 0
) -> grain.IterDataset:
    """This host's augmented segmentation batches {"image": uint8 [b, S, S, 3], "label": uint8 [b, S, S],
    "__skipped__"} with S = config.model.image_size (see `batching.host_batches`); ADE20K is resized around
    config.segmentation.scale and its labels reduced, the synthetic scenes around their own size; padding is
    the pixel that config.data.normalize maps to zero."""
    # Keys config.segmentation lacks take mmseg's ADE20K values.
    settings = config.get("segmentation") or ConfigDict()
    ade20k = config.data.kind == "ade20k"
    transform = functools.partial(
        segmentation_train_example,
        crop_size=config.model.image_size,
        scale=tuple(settings.get("scale", ADE20K_SCALE)) if ade20k else None,
        ratio_range=tuple(settings.get("ratio_range", RATIO_RANGE)),
        cat_max_ratio=settings.get("cat_max_ratio", CAT_MAX_RATIO),
        flip=config.data.flip,
        photometric=settings.get("photometric", True),
        reduce_zero_label=ade20k,
        pad_pixel=padding_pixel(config.data.normalize),
    )
    return configured_batches(
        config, source, transform, process_index=process_index, process_count=process_count, start_sample=start_sample
    )
