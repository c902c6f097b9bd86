"""Anchors for the RPN: detectron2's DefaultAnchorGenerator (offset 0.0), one anchor size per pyramid level.

Anchors are static: numpy float32 arrays computed at trace time from the feature grids' shapes. A level's
anchors are ordered (y, x, a) row-major, so an RPN output [B, gh, gw, A] reshaped to [B, gh * gw * A] lines up
with them anchor by anchor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# Stride of a pyramid level -> the side of its anchors (detectron2's FPN defaults: 32 at P2 ... 512 at P6).
ANCHOR_SIZES = {4: 32.0, 8: 64.0, 16: 128.0, 32: 256.0, 64: 512.0}
# Height / width of the anchors at every location.
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(size: float, aspect_ratios: Sequence[float] = ASPECT_RATIOS) -> np.ndarray:
    """The anchors of one grid cell, centred at 0: one per aspect ratio (height / width), each of area size**2.

    Args:
      size: the side of the square anchor, in input pixels.
      aspect_ratios: height / width of each anchor, in the order the anchors come out.

    Returns:
      float32 [A, 4] (x0, y0, x1, y1), A = len(aspect_ratios), not rounded (detectron2; torchvision rounds).
    """
    anchors = []
    for ratio in aspect_ratios:
        # Double precision first, one cast to float32 at the end: what detectron2 does.
        w = math.sqrt(size * size / ratio)
        h = ratio * w
        anchors.append((-w / 2.0, -h / 2.0, w / 2.0, h / 2.0))
    return np.asarray(anchors, np.float64).reshape(-1, 4).astype(np.float32)


def grid_anchors(stride: int, size: float, aspect_ratios: Sequence[float], grid: tuple[int, int]) -> np.ndarray:
    """Every anchor of one pyramid level: the cell anchors shifted to (x * stride, y * stride) for every cell.

    Args:
      stride: the level's stride in input pixels.
      size: its anchor size (see `cell_anchors`).
      aspect_ratios: height / width of the anchors at each location.
      grid: (gh, gw), the level's feature map height and width.

    Returns:
      float32 [gh * gw * A, 4] (x0, y0, x1, y1), ordered (y, x, a) row-major.
    """
    gh, gw = grid
    base = cell_anchors(size, aspect_ratios)
    # Shifts in float32 and added in float32, as detectron2 does (no rounding of the centres: offset 0.0).
    shift_x = np.arange(gw, dtype=np.float32) * np.float32(stride)
    shift_y = np.arange(gh, dtype=np.float32) * np.float32(stride)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1)  # [gh, gw, 4]
    anchors = shifts[:, :, None, :] + base[None, None, :, :]  # [gh, gw, A, 4]
    return anchors.reshape(-1, 4).astype(np.float32)


def multilevel_anchors(
    grids: Mapping[int, tuple[int, int]],
    sizes: Mapping[int, float] = ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
) -> dict[int, np.ndarray]:
    """The anchors of every pyramid level.

    Args:
      grids: stride -> (gh, gw) of that level's feature map.
      sizes: stride -> anchor size; must cover every stride in `grids`.
      aspect_ratios: height / width of the anchors at each location (the same on every level).

    Returns:
      stride -> float32 [gh * gw * A, 4] (see `grid_anchors`), in the order of `grids`.
    """
    missing = sorted(set(grids) - set(sizes))
    if missing:
        raise ValueError(f"no anchor size for strides {missing} (sizes cover {sorted(sizes)})")
    return {stride: grid_anchors(stride, sizes[stride], aspect_ratios, grid) for stride, grid in grids.items()}
