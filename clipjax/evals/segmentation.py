"""Semantic segmentation evaluation over a whole split: mIoU, mAcc, aAcc from the dataset-level confusion
matrix, with mmsegmentation's inference.

Each image is resized as the test pipeline says (keep the ratio, within `scale`), predicted whole or in
`window`-sized windows `stride` apart (the last window flush with the image's edge, overlaps averaged;
windows are placed per image, so padding never shifts them), optionally averaged with the prediction of the
mirrored image, and its logits are resized bilinearly to the ORIGINAL image size before the argmax: the
labels are scored at the resolution they were drawn at.

Images differ in size, and a compiled function needs fixed shapes: images are grouped by the canvas they
fit in (sides rounded up to `bucket` pixels, at least the window), each group is one sequence of padded
batches, and each canvas compiles once. Labels are padded with the ignore index, so padding never counts.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from PIL import Image

from clipjax.data.images import BadImage
from clipjax.data.transforms import normalize_images, padding_pixel
from clipjax.evals.batches import eval_batches, load_or_stop
from clipjax.evals.segmentation_metrics import confusion_matrix, segmentation_metrics
from clipjax.evals.sliding import window_starts
from clipjax.ops.labels import IGNORE_LABEL
from clipjax.ops.resize import resize_logits
from clipjax.parallel import replicated

INFERENCE_MODES = ("slide", "whole")


def canvas_side(length: int, bucket: int, minimum: int = 1) -> int:
    """`length` rounded up to a multiple of `bucket`, and at least `minimum`."""
    return max(math.ceil(length / bucket) * bucket, minimum)


def _flip_valid(x: jax.Array, width: jax.Array) -> jax.Array:
    """Mirrors the first `width` columns of x [H, W, ...] (the image) and leaves the columns beyond (the
    padding) as they are, so that the mirrored image is padded as the original is."""
    columns = jnp.arange(x.shape[1])
    mirrored = jnp.take(x, jnp.clip(width - 1 - columns, 0, x.shape[1] - 1), axis=1)
    inside = (columns < width).reshape((1, -1) + (1,) * (x.ndim - 2))
    return jnp.where(inside, mirrored, x)


def _replicate_edges(x: jax.Array, height: jax.Array, width: jax.Array) -> jax.Array:
    """x [H, W, K] with rows >= height and columns >= width replaced by the last valid row / column, so a
    bilinear resize of the valid region sees PyTorch's clamped edges instead of the padding."""
    rows = jnp.minimum(jnp.arange(x.shape[0]), height - 1)
    columns = jnp.minimum(jnp.arange(x.shape[1]), width - 1)
    return jnp.take(jnp.take(x, rows, axis=0), columns, axis=1)


def predict_canvas(
    predict: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    sizes: jax.Array,
    *,
    mode: str,
    window: int,
    stride: int,
) -> jax.Array:
    """Logits over each image's canvas, averaged over its windows.

    Args:
      predict: images [N, S, S, 3] -> logits [N, S/r, S/r, K] (any stride r; resized to S bilinearly).
      images: [B, Hc, Wc, 3] float, each image in its top-left [h, w] corner, normalised padding beyond.
      sizes: int32 [B, 2], each image's (h, w).
      mode: "whole" (predict the canvas at once; the model must accept its size) or "slide".
      window, stride: the windows' side and step (slide).

    Returns:
      float32 [B, Hc, Wc, K]; only each image's [h, w] corner is meaningful.
    """
    batch, height, width = images.shape[:3]
    if mode == "whole":
        return resize_logits(predict(images), (height, width))
    # Static window counts for the canvas; each image uses the first `count(its size)` of them (mmseg's
    # placement for that size), the rest are computed but weigh nothing.
    rows = len(window_starts(height, window, stride))
    cols = len(window_starts(width, window, stride))

    def starts(length: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
        used = jnp.maximum(length - window + stride - 1, 0) // stride + 1
        index = jnp.arange(count)
        return jnp.clip(jnp.minimum(index * stride, length - window), 0, None), (index < used).astype(jnp.float32)

    def crops(image: jax.Array, size: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        (y0, wy), (x0, wx) = starts(size[0], rows), starts(size[1], cols)
        ys, xs = (a.reshape(-1) for a in jnp.meshgrid(y0, x0, indexing="ij"))
        weights = (wy[:, None] * wx[None, :]).reshape(-1)
        cut = jax.vmap(lambda y, x: lax.dynamic_slice(image, (y, x, 0), (window, window, image.shape[-1])))
        return cut(ys, xs), ys, xs, weights

    windows, ys, xs, weights = jax.vmap(crops)(images, sizes)  # [B, n, window, window, 3]
    n = rows * cols
    logits = predict(windows.reshape(batch * n, window, window, images.shape[-1]))
    logits = resize_logits(logits, (window, window)).reshape(batch, n, window, window, -1)

    def accumulate(image_logits: jax.Array, ys: jax.Array, xs: jax.Array, weights: jax.Array) -> jax.Array:
        total = jnp.zeros((height, width, image_logits.shape[-1]), jnp.float32)
        count = jnp.zeros((height, width, 1), jnp.float32)
        for j in range(n):
            at = (ys[j], xs[j], 0)
            block = lax.dynamic_slice(total, at, (window, window, total.shape[-1])) + weights[j] * image_logits[j]
            total = lax.dynamic_update_slice(total, block, at)
            seen = lax.dynamic_slice(count, at, (window, window, 1)) + weights[j]
            count = lax.dynamic_update_slice(count, seen, at)
        return total / jnp.maximum(count, 1.0)

    return jax.vmap(accumulate)(logits, ys, xs, weights)


def logits_at_label_size(logits: jax.Array, sizes: jax.Array, label_sizes: jax.Array, label_shape: tuple) -> jax.Array:
    """Each image's [h, w] logits resized bilinearly (half-pixel centres, clamped edges: PyTorch's
    align_corners=False) to its label's (H, W), in the top-left corner of a [Lh, Lw] label canvas.

    Args: logits float32 [B, Hc, Wc, K]; sizes, label_sizes int32 [B, 2]; label_shape (Lh, Lw).
    Returns: float32 [B, Lh, Lw, K] (beyond (H, W): values of no meaning, where the labels are ignored).
    """

    def one(x: jax.Array, size: jax.Array, label_size: jax.Array) -> jax.Array:
        x = _replicate_edges(x, size[0], size[1])
        scale = label_size.astype(jnp.float32) / size.astype(jnp.float32)
        shape = (*label_shape, x.shape[-1])
        return jax.image.scale_and_translate(
            x, shape, (0, 1), scale, jnp.zeros(2, jnp.float32), method="linear", antialias=False
        )

    return jax.vmap(one)(logits, sizes, label_sizes)


class SegmentationEvaluator:
    """`evaluator(variables, prefix="eval") -> {prefix/miou, prefix/macc, prefix/aacc}` over the first
    `num_examples` images of `source`; `last_details` then holds the per-class IoU / Acc (for the JSON
    results).

    Args:
      model: normalised images [B, S, S, 3] -> {"logits": [B, S/r, S/r, K], ...} (e.g. `Segmenter`).
      source: records with `load(record) -> {"image": uint8 [h, w, 3] (resized for the test), "label":
        uint8 [H, W] (original size)}`.
      mode, window, stride, flip: the inference (see the module docstring).
      bucket: canvas sides are rounded up to multiples of this (fewer compilations, more padding).
    """

    def __init__(
        self,
        model: nn.Module,
        mesh: Mesh,
        source: Any,
        load: Callable[[Any], dict[str, np.ndarray]],
        size_of: Callable[[Any], tuple[tuple[int, int], tuple[int, int]]],
        *,
        normalize: str,
        num_classes: int,
        mode: str,
        window: int,
        stride: int,
        flip: bool,
        batch_size: int,
        num_examples: int | None = None,
        num_threads: int = 8,
        bucket: int = 128,
        class_names: list[str] | None = None,
    ) -> None:
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference mode {mode!r} is not one of {INFERENCE_MODES}")
        self._mesh, self._source, self._load, self._size_of = mesh, source, load, size_of
        self._batch_size, self._num_examples, self._num_threads = batch_size, num_examples, num_threads
        self._bucket, self._window, self._num_classes = bucket, window, num_classes
        self._class_names, self._groups = class_names, None
        self._pad_pixel = padding_pixel(normalize)
        self.last_details: dict[str, Any] = {}

        def confusion(variables: Any, batch: dict[str, jax.Array]) -> jax.Array:
            images = normalize_images(batch["image"], normalize)

            def predict(x: jax.Array) -> jax.Array:
                return model.apply(variables, x)["logits"]

            inference = dict(mode=mode, window=window, stride=stride)
            canvas = predict_canvas(predict, images, batch["size"], **inference)
            if flip:
                mirrored = jax.vmap(_flip_valid)(images, batch["size"][:, 1])
                flipped = predict_canvas(predict, mirrored, batch["size"], **inference)
                canvas = (canvas + jax.vmap(_flip_valid)(flipped, batch["size"][:, 1])) / 2
            logits = logits_at_label_size(canvas, batch["size"], batch["label_size"], batch["label"].shape[1:3])
            pred = jnp.argmax(logits, axis=-1)
            return confusion_matrix(pred, batch["label"], num_classes, valid=batch["valid"])

        self._confusion = jax.jit(confusion, out_shardings=replicated(mesh))

    def _grouped(self) -> dict[tuple[int, int, int, int], list[int]]:
        """Example indices by (canvas height, canvas width, label canvas height, label canvas width)."""
        if self._groups is None:
            total = len(self._source) if self._num_examples is None else min(self._num_examples, len(self._source))
            groups: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)
            for index in range(total):
                (h, w), (lh, lw) = self._size_of(self._source[index])
                b, s = self._bucket, self._window
                key = (canvas_side(h, b, s), canvas_side(w, b, s), canvas_side(lh, b), canvas_side(lw, b))
                groups[key].append(index)
            self._groups = dict(sorted(groups.items()))
        return self._groups

    def __call__(self, variables: Any, prefix: str = "eval") -> dict[str, float]:
        total = np.zeros((self._num_classes, self._num_classes), np.int64)
        for (ch, cw, lh, lw), indices in self._grouped().items():
            subset = _Subset(self._source, indices)
            batches = eval_batches(
                subset,
                _padded(self._load, (ch, cw), (lh, lw), self._pad_pixel),
                self._mesh,
                batch_size=self._batch_size,
                num_threads=self._num_threads,
            )
            for batch in batches:
                total += np.asarray(self._confusion(variables, batch), np.int64)
        metrics, self.last_details = segmentation_metrics(total, prefix, self._class_names)
        return metrics


class _Subset:
    """The records of `source` at `indices`, in that order."""

    def __init__(self, source: Any, indices: list[int]) -> None:
        self._source, self._indices = source, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> Any:
        return self._source[self._indices[i]]


def _padded(
    load: Callable[[Any], dict[str, np.ndarray]],
    canvas: tuple[int, int],
    label_canvas: tuple[int, int],
    pad_pixel: tuple[int, int, int],
) -> Callable[[Any], dict[str, np.ndarray]]:
    """`load` with the image placed in a `canvas` filled with `pad_pixel` and the label in an ignore-filled
    `label_canvas`, their true sizes beside them ("size", "label_size": int32 [2])."""

    def padded(record: Any) -> dict[str, np.ndarray]:
        example = load_or_stop(load, record)
        image, label = example["image"], example["label"]
        out_image = np.full((*canvas, 3), pad_pixel, np.uint8)
        out_image[: image.shape[0], : image.shape[1]] = image
        out_label = np.full(label_canvas, IGNORE_LABEL, np.uint8)
        out_label[: label.shape[0], : label.shape[1]] = label
        return {
            "image": out_image,
            "label": out_label,
            "size": np.asarray(image.shape[:2], np.int32),
            "label_size": np.asarray(label.shape[:2], np.int32),
        }

    return padded


def encoded_size(data: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image from its header alone."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.height, image.width
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
