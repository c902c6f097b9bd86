"""NYUv2 monocular depth metrics (abs_rel, rmse, delta1, ...) as mergeable per-image sums, the Eigen crop, flip test.

Averaging convention (BTS / GLPDepth / MIM-depth): each metric is computed per image over its valid pixels, then
averaged over images (not pooled over all pixels of the split). `depth_metric_sums` therefore returns the SUM over
images of each per-image metric plus the number of images; sums from batches and hosts merge by addition, and
`depth_metrics_from_sums` divides once at the end.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")

# The Eigen crop of BTS / GLPDepth (`eval_mask[45:471, 41:601] = 1`), defined on 480 x 640 NYUv2 frames.
_EIGEN_SIZE = (480, 640)
_EIGEN_ROWS = (45, 471)
_EIGEN_COLS = (41, 601)


def _scaled(bound: int, size: int, reference: int) -> int:
    # Round half up (not Python's half-to-even) so the bounds do not depend on parity.
    return int(math.floor(bound * size / reference + 0.5))


def eigen_crop(height: int, width: int) -> np.ndarray:
    """The Eigen evaluation crop as a mask: rows 45:471, cols 41:601 at 480 x 640.

    For other sizes each bound is scaled by height / 480 (rows) or width / 640 (cols) and rounded half up to an
    int, e.g. 240 x 320 gives rows 23:236 (22.5 -> 23, 235.5 -> 236), cols 21:301 (20.5 -> 21, 300.5 -> 301).

    Args:
      height, width: the size of the depth maps, both >= 1.

    Returns:
      bool numpy [height, width], True inside the crop (a constant under jit).
    """
    if height < 1 or width < 1:
        raise ValueError(f"eigen_crop needs a positive size, got {height} x {width}")
    top, bottom = (_scaled(b, height, _EIGEN_SIZE[0]) for b in _EIGEN_ROWS)
    left, right = (_scaled(b, width, _EIGEN_SIZE[1]) for b in _EIGEN_COLS)
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def depth_metric_sums(
    pred: jax.Array,
    target: jax.Array,
    image_valid: jax.Array,
    *,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    eigen: bool = True,
) -> jax.Array:
    """Per-image depth metrics summed over the images that count, and the number of those images. Jit-able.

    A pixel is valid when min_depth < target < max_depth (and inside `eigen_crop` when `eigen`). As BTS / GLPDepth
    do, pred is first clipped to [min_depth, max_depth] (inf -> max_depth, nan -> min_depth). Per image, over its
    valid pixels p (pred), t (target): abs_rel = mean |p - t| / t, sq_rel = mean (p - t)^2 / t,
    rmse = sqrt(mean (p - t)^2), rmse_log = sqrt(mean (log p - log t)^2), log10 = mean |log10 p - log10 t|,
    delta_k = fraction with max(p / t, t / p) < 1.25^k. An image counts when `image_valid` and it has >= 1 valid
    pixel; the others (batch padding, frames without depth) add nothing.

    Args:
      pred: float [B, H, W] predicted depth in metres, any float dtype (computed in float32).
      target: float [B, H, W] ground-truth depth in metres; missing depth may be 0, inf or nan.
      image_valid: bool [B], False for padding images.
      min_depth, max_depth: the evaluation depth range in metres (NYUv2: 1e-3, 10).
      eigen: restrict to the Eigen crop.

    Returns:
      float32 [len(DEPTH_METRICS) + 1]: the sums in DEPTH_METRICS order, then the image count. Add these across
      batches and hosts (in float64 on the host) and pass the total to `depth_metrics_from_sums`.
    """
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    pred = jnp.where(jnp.isnan(pred), min_depth, jnp.clip(pred, min_depth, max_depth))
    valid = (target > min_depth) & (target < max_depth)  # nan targets compare False: invalid
    if eigen:
        valid = valid & jnp.asarray(eigen_crop(*pred.shape[1:]))[None]
    # Fill invalid pixels with 1 before any division or log so garbage there cannot produce inf / nan.
    p = jnp.where(valid, pred, 1.0)
    t = jnp.where(valid, target, 1.0)
    weights = valid.astype(jnp.float32)
    pixels = jnp.sum(weights, axis=(1, 2))  # [B]

    def image_mean(values: jax.Array) -> jax.Array:
        return jnp.sum(values * weights, axis=(1, 2)) / jnp.maximum(pixels, 1.0)

    diff = p - t
    log_diff = jnp.log(p) - jnp.log(t)
    ratio = jnp.maximum(p / t, t / p)
    per_image = jnp.stack(
        [
            image_mean(jnp.abs(diff) / t),
            image_mean(jnp.square(diff) / t),
            jnp.sqrt(image_mean(jnp.square(diff))),
            jnp.sqrt(image_mean(jnp.square(log_diff))),
            image_mean(jnp.abs(log_diff) / math.log(10.0)),
            *(image_mean((ratio < 1.25**k).astype(jnp.float32)) for k in (1, 2, 3)),
        ],
        axis=-1,
    )  # [B, len(DEPTH_METRICS)]
    counted = image_valid.astype(bool) & (pixels > 0)
    sums = jnp.sum(jnp.where(counted[:, None], per_image, 0.0), axis=0)
    return jnp.concatenate([sums, jnp.sum(counted, dtype=jnp.float32)[None]])


def depth_metrics_from_sums(sums: np.ndarray, prefix: str = "eval") -> dict[str, float]:
    """The mean over images of each metric: {f"{prefix}/{name}": sum / count}.

    Args:
      sums: float [len(DEPTH_METRICS) + 1], the (added-up) output of `depth_metric_sums`.
      prefix: the metric name prefix.

    Returns:
      {prefix/abs_rel, ..., prefix/delta3}: Python floats.
    """
    sums = np.asarray(sums, np.float64)
    if sums.shape != (len(DEPTH_METRICS) + 1,):
        raise ValueError(f"expected {len(DEPTH_METRICS) + 1} sums (metrics then image count), got shape {sums.shape}")
    count = sums[-1]
    if not count > 0:
        raise ValueError(
            "no image had a valid depth pixel (all padding, or no target inside (min_depth, max_depth) and the "
            "crop): the depth metrics are undefined"
        )
    return {f"{prefix}/{name}": float(value / count) for name, value in zip(DEPTH_METRICS, sums[:-1])}


def flip_average(predict: Callable[[jax.Array], jax.Array], images: jax.Array) -> jax.Array:
    """The flip test: the mean of predict(images) and the horizontally flipped-back predict(flipped images).

    Two calls rather than one on a doubled batch, so peak memory stays that of a single forward pass.

    Args:
      predict: images [B, H, W, 3] -> depth [B, H, W] (any float dtype).
      images: [B, H, W, 3], any dtype `predict` accepts.

    Returns:
      float32 [B, H, W] (averaged in float32 so a bfloat16 model does not round the mean).
    """
    direct = predict(images).astype(jnp.float32)
    mirrored = predict(images[:, :, ::-1]).astype(jnp.float32)[:, :, ::-1]
    return 0.5 * (direct + mirrored)
