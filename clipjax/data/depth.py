"""Monocular depth data: NYUv2 as BTS / GLPDepth distribute it and the synthetic scenes' depth maps.

NYUv2 layout: a split file (`nyu_train.txt`, `nyu_test.txt`) with one line per pair
`<rgb path> <depth path> [<focal>]`, paths relative to the dataset root (BTS's train file starts them with
"/"), depth PNGs uint16 millimetres with 0 where the sensor has no reading. Records carry the encoded files
so that decoding happens in grain's workers.

Training (`depth_train_example`) cuts the same crop_size x crop_size window from image and depth, pixel
for pixel, so depth is never resampled and an invalid pixel (0) can never leak into its neighbours; flips
both; jitters the image's photometry only. A depth map that does not decode, or whose size differs from
its image's, is skipped as corrupt_depth (an image that does not decode as corrupt_image).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import grain
import numpy as np
from ml_collections import ConfigDict

from clipjax.data import synthetic
from clipjax.data.batching import configured_batches
from clipjax.data.images import BadImage, decode_map, record_image
from clipjax.data.layouts import naming_the_layout
from clipjax.data.skips import skipped
from clipjax.errors import ConfigError

DEPTH_KINDS = ("synthetic", "nyu")
SYNTHETIC_EVAL_EXAMPLES = 200  # held-out scenes when config.finetune.eval_examples is None
MILLIMETRES_PER_METRE = np.float32(1000.0)
# Photometric jitter of BTS / GLPDepth: applied with this probability, factors drawn uniformly from these ranges.
PHOTOMETRIC_PROB = 0.5
GAMMA_RANGE = (0.9, 1.1)
BRIGHTNESS_RANGE = (0.75, 1.25)
COLOUR_RANGE = (0.9, 1.1)


class NyuDepthSource:
    """NYUv2 pairs listed in a BTS-style split file: `len`, item access, `description`.

    `source[i]` is {"image": bytes (the encoded RGB file), "depth_png": bytes (uint16 PNG, millimetres),
    "focal": float (pixels; NaN when the line has none), "name": str (the RGB path as listed)}.

    Args:
      root: the dataset root; the split file's paths are relative to it (a leading "/" is tolerated).
      split_file: the split file, looked up in `root` when relative.

    Attributes:
      skipped_missing_depth: lines whose depth entry is "None" (BTS's train file has some), left out.

    Raises:
      ConfigError: a missing root or split file, a malformed line (file and line number named), no pairs,
        or a first pair whose files are absent (a root one level off).
    """

    def __init__(self, root: str, split_file: str) -> None:
        if not os.path.isdir(root):
            raise ConfigError(f"NYUv2 root {root} does not exist (config.data.path)")
        path = split_file if os.path.isabs(split_file) else os.path.join(root, split_file)
        if not os.path.isfile(path):
            raise ConfigError(f"NYUv2 split file {path} does not exist (config.data.train_split / eval_split)")
        self.root = root
        self.skipped_missing_depth = 0
        self._pairs: list[tuple[str, str, float]] = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                pair = _parse_line(fields, path, number, line)
                if pair is None:
                    self.skipped_missing_depth += 1
                else:
                    self._pairs.append(pair)
        if not self._pairs:
            raise ConfigError(f"NYUv2 split file {path} lists no image-depth pairs")
        # Checking every file would cost a stat per pair at start-up; the first catches a wrong root.
        for relative in self._pairs[0][:2]:
            if not os.path.isfile(os.path.join(root, relative)):
                raise ConfigError(f"{path} lists {relative}, which is not under the NYUv2 root {root}")
        self.description = (
            f"NYUv2 {os.path.basename(path)} ({len(self._pairs)} pairs under {root}, "
            f"{self.skipped_missing_depth} without depth left out)"
        )

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb, depth, focal = self._pairs[index]
        with open(os.path.join(self.root, rgb), "rb") as f:
            image = f.read()
        with open(os.path.join(self.root, depth), "rb") as f:
            depth_png = f.read()
        return {"image": image, "depth_png": depth_png, "focal": focal, "name": rgb}


def _parse_line(fields: list[str], path: str, number: int, line: str) -> tuple[str, str, float] | None:
    """(rgb, depth, focal) of one split-file line with paths made relative; None for a "None" depth."""
    focal = float("nan")
    if len(fields) == 3:
        try:
            focal = float(fields[2])
        except ValueError:
            fields = []  # reported as malformed below
    if len(fields) not in (2, 3):
        raise ConfigError(f"{path} line {number}: expected '<rgb path> <depth path> [<focal>]', got {line.strip()!r}")
    if fields[1] == "None":
        return None
    # BTS's train file writes "/kitchen_0028a/rgb_00045.jpg": relative despite the slash.
    return fields[0].lstrip("/"), fields[1].lstrip("/"), focal


def decode_depth_png(data: bytes) -> np.ndarray:
    """A 16-bit single-channel PNG of millimetres to metres.

    Args:
      data: the file's bytes.

    Returns:
      float32 [H, W] metres; 0 where the PNG holds 0 (no reading).

    Raises:
      BadImage: empty, corrupt or truncated data, or an image that is not 16-bit single-channel (an 8-bit
        depth PNG would be silently wrong by a factor of 1000 or so).
    """
    return decode_map(data, np.uint16, "depth map").astype(np.float32) / MILLIMETRES_PER_METRE


def depth_of(record: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """float32 [H, W] metres: the record's depth, decoded from "depth_png" when present.

    Raises:
      BadImage: a depth map that does not decode, or whose size differs from the image's `shape` [H, W].
    """
    depth = decode_depth_png(record["depth_png"]) if "depth_png" in record else np.asarray(record["depth"], np.float32)
    if depth.shape != tuple(shape):
        raise BadImage(f"depth map of {depth.shape[:2]} pixels for an image of {tuple(shape)}")
    return depth


def _window(size: int, crop: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """(source, destination) slices of one axis: a random crop when size >= crop, else a random placement
    of the whole axis inside the zero-padded crop."""
    offset = int(rng.integers(0, abs(size - crop) + 1))
    if size >= crop:
        return slice(offset, offset + crop), slice(0, crop)
    return slice(0, size), slice(offset, offset + size)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BTS / GLPDepth's colour augmentation of uint8 [H, W, 3] pixels: gamma, brightness and per-channel
    colour factors applied in float on [0, 1], clipped and rounded back.

    Returns:
      uint8 [H, W, 3].
    """
    gamma = rng.uniform(*GAMMA_RANGE)
    brightness = rng.uniform(*BRIGHTNESS_RANGE)
    colours = rng.uniform(*COLOUR_RANGE, size=3)
    scale = (brightness * colours).astype(np.float32)
    values = np.power(image.astype(np.float32) / 255.0, np.float32(gamma)) * scale
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def depth_train_example(
    record: dict[str, Any], rng: np.random.Generator, *, crop_size: int, flip: bool, photometric: bool
) -> dict[str, Any]:
    """One augmented training pair from an NYU record ({"image": bytes, "depth_png": bytes}) or a synthetic
    scene ({"image": uint8 [S, S, 3], "depth": float32 [S, S]}), or the skip marker (corrupt_image,
    corrupt_depth).

    A crop_size x crop_size window, the same for both, cut without resampling; a side shorter than the crop
    is placed at a random offset and padded with 0 (image black, depth invalid). With `flip`, both mirror
    left-right with probability 1/2; with `photometric`, the image alone is jittered with probability 1/2.

    Returns:
      image  uint8 [crop_size, crop_size, 3]
      depth  float32 [crop_size, crop_size]  metres, 0 invalid
    """
    try:
        image = record_image(record)
    except BadImage:
        return skipped("corrupt_image")
    try:
        depth = depth_of(record, image.shape[:2])
    except BadImage:
        return skipped("corrupt_depth")
    (rows, out_rows), (cols, out_cols) = (_window(n, crop_size, rng) for n in depth.shape)
    out_image = np.zeros((crop_size, crop_size, 3), np.uint8)
    out_depth = np.zeros((crop_size, crop_size), np.float32)
    out_image[out_rows, out_cols] = image[rows, cols]
    out_depth[out_rows, out_cols] = depth[rows, cols]
    if flip and rng.random() < 0.5:
        out_image, out_depth = np.ascontiguousarray(out_image[:, ::-1]), np.ascontiguousarray(out_depth[:, ::-1])
    if photometric and rng.random() < PHOTOMETRIC_PROB:
        out_image = photometric_jitter(out_image, rng)
    return {"image": out_image, "depth": out_depth}


def depth_eval_example(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """The whole pair of an NYU or synthetic record, uncropped (the metric applies the Eigen crop).

    Returns:
      image  uint8 [H, W, 3]
      depth  float32 [H, W]  metres, 0 invalid

    Raises:
      BadImage: an image or depth map that does not decode, or whose sizes differ.
    """
    image = record_image(record)
    return {"image": image, "depth": depth_of(record, image.shape[:2])}


def depth_source(config: ConfigDict, split: str) -> Any:
    """The depth source of `config.data` for `split` ("train" or "eval"): `len` and item access to records
    `depth_train_example` and `depth_eval_example` read.

    Synthetic scenes: "validation" scenes for eval, config.finetune.eval_examples of them (default 200).
    NYUv2: root config.data.path, split files config.data.train_split / eval_split (e.g. nyu_train.txt).

    Raises:
      ConfigError: a kind without depth, or data that cannot be found.
    """
    data = config.data
    if data.kind == "synthetic":
        return synthetic.finetuning_scenes(config, split, SYNTHETIC_EVAL_EXAMPLES)
    if data.kind == "nyu":
        if not data.path:
            raise ConfigError("config.data.kind='nyu' needs config.data.path (the NYUv2 root)")
        with naming_the_layout(data.path, data.kind):
            return NyuDepthSource(data.path, data.train_split if split == "train" else data.eval_split)
    raise ConfigError(
        f"config.data.kind={data.kind!r} holds no depth; depth finetuning reads "
        f"{', '.join(repr(k) for k in DEPTH_KINDS)}"
    )


def depth_dataset(
    config: ConfigDict, source: Any, *, process_index: int, process_count: int, start_sample: int = 0
) -> grain.IterDataset:
    """This host's augmented depth batches {"image": uint8 [b, S, S, 3], "depth": float32 [b, S, S],
    "__skipped__"} with S = config.model.image_size (see `batching.host_batches`)."""
    transform = functools.partial(
        depth_train_example,
        crop_size=config.model.image_size,
        flip=config.data.flip,
        photometric=config.depth.photometric,
    )
    return configured_batches(
        config, source, transform, process_index=process_index, process_count=process_count, start_sample=start_sample
    )
