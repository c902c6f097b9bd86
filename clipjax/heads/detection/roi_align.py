"""RoIAlign (He et al. 2017) on channels-last feature maps, one level or a feature pyramid, as torchvision's.

Each output bin averages sampling_ratio x sampling_ratio bilinear samples at the centres of a regular sub-grid
of the bin (torchvision.ops.roi_align with sampling_ratio > 0). A sample reads its 4 corner pixels with one
gather, vectorised over every roi and sample, so the work does not depend on the rois' sizes and the gradient
w.r.t. the features is the gather's scatter-add.

Memory: the gather yields [R, P*S, P*S, 4, C] values (P = output_size, S = sampling_ratio) before the weighted
sum: for 512 rois, P = 14, S = 2, C = 256 that is 1.6 GB in float32 per image (XLA on CPU materialises it in the
forward and the backward pass; on GPU it may fuse the gather into the sum). Split the rois into chunks (lax.map)
where that is too much.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from clipjax.ops.boxes import box_area


def _axis_corners(coords: jax.Array, size: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """torchvision's bilinear_interpolate along one axis: sample positions `coords` [R, K] float32 on an axis of
    `size` [R] pixels -> (low index, high index, low weight, high weight), each [R, K]; both weights 0 for a
    sample outside [-1, size]. Indices always lie in [0, size - 1]."""
    size_f = size.astype(jnp.float32)[:, None]
    last = (size - 1)[:, None]
    inside = (coords >= -1.0) & (coords <= size_f)
    coords = jnp.maximum(coords, 0.0)  # [-1, 0] reads pixel 0
    low = jnp.floor(coords).astype(jnp.int32)
    at_edge = low >= last  # the last pixel reads itself twice, with all the weight on it
    low = jnp.where(at_edge, last, low)
    high = jnp.where(at_edge, last, low + 1)
    frac = jnp.where(at_edge, 0.0, coords - low.astype(jnp.float32))
    return low, high, jnp.where(inside, 1.0 - frac, 0.0), jnp.where(inside, frac, 0.0)


def _roi_align_flat(
    flat: jax.Array,
    boxes: jax.Array,
    offsets: jax.Array,
    heights: jax.Array,
    widths: jax.Array,
    scales: jax.Array,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> jax.Array:
    """RoIAlign of each box on its own map, the maps concatenated as `flat` [N, C] (row-major, channels last).

    boxes [R, 4] in input pixels; box r reads the map that starts at row `offsets[r]` of `flat`, of
    heights[r] x widths[r] pixels, at spatial_scale scales[r] (all int32 / float32 [R]).
    Returns [R, output_size, output_size, C] in flat's dtype.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be positive (static shapes), got {sampling_ratio}")
    num_rois = boxes.shape[0]
    p, s = output_size, sampling_ratio
    boxes = boxes.astype(jnp.float32)
    scales = scales.astype(jnp.float32)[:, None]
    shift = 0.5 if aligned else 0.0
    start = boxes[:, :2] * scales - shift  # [R, 2] (x, y)
    extent = boxes[:, 2:] * scales - shift - start
    if not aligned:
        extent = jnp.maximum(extent, 1.0)  # legacy RoIAlign: rois at least one pixel wide
    bin_size = extent / p  # [R, 2]
    # Sample k of the P*S along an axis: bin k // S, sub-sample k % S, at the centre of its sub-bin; written as
    # torchvision computes it (start + bin * bin_size + (sub + 0.5) * bin_size / S) to match its rounding.
    k = jnp.arange(p * s)
    bin_index = (k // s).astype(jnp.float32)
    sub_offset = (k % s).astype(jnp.float32) + 0.5
    coords = (
        start[:, None, :]
        + bin_index[None, :, None] * bin_size[:, None, :]
        + sub_offset[None, :, None] * bin_size[:, None, :] / s
    )  # [R, P*S, 2]
    x_low, x_high, wx_low, wx_high = _axis_corners(coords[..., 0], widths)
    y_low, y_high, wy_low, wy_high = _axis_corners(coords[..., 1], heights)

    # Corners (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high) of every (y sample, x sample).
    ys = jnp.stack([y_low, y_low, y_high, y_high], axis=-1)  # [R, P*S, 4]
    xs = jnp.stack([x_low, x_high, x_low, x_high], axis=-1)
    wy = jnp.stack([wy_low, wy_low, wy_high, wy_high], axis=-1)
    wx = jnp.stack([wx_low, wx_high, wx_low, wx_high], axis=-1)
    rows = offsets[:, None, None, None] + ys[:, :, None, :] * widths[:, None, None, None] + xs[:, None, :, :]
    weights = wy[:, :, None, :] * wx[:, None, :, :]  # [R, P*S, P*S, 4]
    values = flat[rows]  # [R, P*S, P*S, 4, C]
    # A multiply and a sum rather than an einsum: XLA can fuse the gather into a reduction, not into a dot.
    samples = jnp.sum(values.astype(jnp.float32) * weights[..., None], axis=-2)
    pooled = samples.reshape(num_rois, p, s, p, s, -1).mean(axis=(2, 4))
    return pooled.astype(flat.dtype)


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = True,
) -> jax.Array:
    """RoIAlign of one feature map: torchvision.ops.roi_align (sampling_ratio > 0) in NHWC.

    Args:
      features: [H, W, C] any float dtype.
      boxes: float [R, 4] (x0, y0, x1, y1) in input pixels.
      output_size: P, the side of the pooled grid.
      spatial_scale: feature pixels per input pixel (1 / stride).
      sampling_ratio: S > 0 samples per bin along each axis.
      aligned: True shifts the boxes by -0.5 feature pixel (pixel centres at half-integers, detectron2's
        ROIAlignV2); False is the legacy op, which also widens rois to at least one feature pixel.

    Returns:
      [R, P, P, C] in features' dtype (computed in float32); 0 where all samples of a bin fall outside
      [-1, H] x [-1, W].
    """
    height, width, channels = features.shape
    num_rois = boxes.shape[0]
    ones = jnp.ones((num_rois,), jnp.int32)
    return _roi_align_flat(
        features.reshape(height * width, channels),
        boxes,
        jnp.zeros((num_rois,), jnp.int32),
        height * ones,
        width * ones,
        jnp.full((num_rois,), spatial_scale, jnp.float32),
        output_size,
        sampling_ratio,
        aligned,
    )


def assign_levels(
    boxes: jax.Array,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> jax.Array:
    """The pyramid level each box is pooled from: detectron2's assign_boxes_to_levels (FPN paper, eq. 1).

    level = floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8)), clipped to
    [min_level, max_level]; a level is log2 of its stride (a 224-pixel box goes to stride 16).

    Args:
      boxes: float [..., 4] (x0, y0, x1, y1) in input pixels; degenerate boxes (area 0) go to min_level.
      min_level, max_level: the pyramid's lowest and highest levels.

    Returns:
      int32 [...].
    """
    size = jnp.sqrt(box_area(boxes.astype(jnp.float32)))
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_box_size + 1e-8))
    return jnp.clip(level, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(
    features: Mapping[int, jax.Array],
    boxes: jax.Array,
    output_size: int,
    sampling_ratio: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> jax.Array:
    """RoIAlign on a feature pyramid (detectron2's ROIPooler, ROIAlignV2): each box pooled from one level only.

    Every level is flattened into one [B, sum(H_s * W_s), C] array; each box gathers from its own level's
    slice of it (offset, size and 1 / stride chosen per box), so the cost is that of one roi_align, whatever
    the number of levels.

    Args:
      features: stride -> [B, H_s, W_s, C], strides consecutive powers of 2 (e.g. 4, 8, 16, 32), one dtype and
        channel count.
      boxes: float [B, R, 4] (x0, y0, x1, y1) in input pixels.
      output_size: P, the side of the pooled grid.
      sampling_ratio: S > 0 samples per bin along each axis.
      canonical_box_size, canonical_level: see `assign_levels`.

    Returns:
      [B, R, P, P, C] in the features' dtype, aligned=True, spatial_scale = 1 / (the box's level's stride).
    """
    strides = sorted(features)
    levels = [int(round(math.log2(stride))) for stride in strides]
    if any(2**level != stride for level, stride in zip(levels, strides)) or levels != list(
        range(levels[0], levels[-1] + 1)
    ):
        raise ValueError(f"strides must be consecutive powers of 2, got {strides}")
    maps = [features[stride] for stride in strides]
    batch = maps[0].shape[0]
    channels = maps[0].shape[-1]
    sizes = [(m.shape[1], m.shape[2]) for m in maps]
    starts, total = [], 0
    for h, w in sizes:
        starts.append(total)
        total += h * w
    flat = jnp.concatenate([m.reshape(batch, -1, channels) for m in maps], axis=1)  # [B, sum(H*W), C]

    # Per-level tables, indexed by each box's level - min_level.
    index = assign_levels(boxes, levels[0], levels[-1], canonical_box_size, canonical_level) - levels[0]
    offsets = jnp.asarray(starts, jnp.int32)[index]
    heights = jnp.asarray([h for h, _ in sizes], jnp.int32)[index]
    widths = jnp.asarray([w for _, w in sizes], jnp.int32)[index]
    scales = jnp.asarray([1.0 / stride for stride in strides], jnp.float32)[index]

    def one_image(*args: jax.Array) -> jax.Array:
        return _roi_align_flat(*args, output_size, sampling_ratio, True)

    return jax.vmap(one_image)(flat, boxes, offsets, heights, widths, scales)
