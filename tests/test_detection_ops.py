"""Detection ops against independent references: anchors against a loop re-derivation and torchvision's
AnchorGenerator (order included), greedy NMS and per-class NMS against torchvision.ops (invalid boxes, short
and long outputs, a long suppression chain, jit + vmap), RoIAlign against torchvision.ops.roi_align (aligned and
legacy, boxes leaving the map, gradients), and pyramid RoIAlign against torchvision per box on its FPN level."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from clipjax.heads.detection.anchors import (
    ANCHOR_SIZES,
    ASPECT_RATIOS,
    cell_anchors,
    grid_anchors,
    multilevel_anchors,
)
from clipjax.heads.detection.nms import batched_nms, nms
from clipjax.heads.detection.roi_align import assign_levels, multilevel_roi_align, roi_align

# ---------------------------------------------------------------------------------------------------- anchors


def test_cell_anchors_area_ratio_and_order():
    for size in (32.0, 100.0):
        got = cell_anchors(size, (0.5, 1.0, 2.0, 3.0))
        assert got.dtype == np.float32 and got.shape == (4, 4)
        for a, ratio in enumerate((0.5, 1.0, 2.0, 3.0)):
            # Independent form: height = size * sqrt(ratio), width = size / sqrt(ratio), centred at 0.
            h, w = size * math.sqrt(ratio), size / math.sqrt(ratio)
            np.testing.assert_allclose(got[a], [-w / 2, -h / 2, w / 2, h / 2], rtol=1e-6)


def test_grid_anchors_match_a_loop_in_y_x_a_order():
    stride, size, grid = 8, 64.0, (3, 5)
    got = grid_anchors(stride, size, ASPECT_RATIOS, grid)
    expected = []
    for y in range(grid[0]):
        for x in range(grid[1]):
            for ratio in ASPECT_RATIOS:
                h, w = size * math.sqrt(ratio), size / math.sqrt(ratio)
                cx, cy = x * stride, y * stride
                expected.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    assert got.dtype == np.float32 and got.shape == (3 * 5 * 3, 4)
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-6, atol=1e-5)
    # An RPN output [gh, gw, A] flattened lines up: anchor (y, x, a) is centred on (x * stride, y * stride).
    centres = (got[:, :2] + got[:, 2:]).reshape(3, 5, 3, 2) / 2
    np.testing.assert_allclose(centres[2, 4, 1], [32.0, 16.0], atol=1e-5)


def test_multilevel_anchors_match_torchvision_anchor_generator():
    height, width = 128, 192
    strides = sorted(ANCHOR_SIZES)
    grids = {s: (height // s, width // s) for s in strides}
    got = multilevel_anchors(grids)
    assert list(got) == strides

    generator = AnchorGenerator(
        sizes=tuple((ANCHOR_SIZES[s],) for s in strides), aspect_ratios=(ASPECT_RATIOS,) * len(strides)
    )
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    maps = [torch.zeros(1, 1, *grids[s]) for s in strides]
    reference = generator(images, maps)[0].numpy()
    ours = np.concatenate([got[s] for s in strides])
    assert ours.shape == reference.shape
    # torchvision rounds its zero-centred cell anchors to integers; the shifts are integers, so rounding ours
    # must reproduce its anchors exactly, in the same order. Unrounded they differ by at most half a pixel.
    np.testing.assert_array_equal(np.round(ours), reference)
    assert np.abs(ours - reference).max() <= 0.5
    assert np.abs(ours - reference).max() > 0.1  # (ours are not rounded)


def test_multilevel_anchors_missing_size():
    with pytest.raises(ValueError, match="no anchor size"):
        multilevel_anchors({128: (2, 2)})


# -------------------------------------------------------------------------------------------------------- nms


def random_boxes(rng: np.random.Generator, n: int, extent: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """n float32 boxes clustered enough to suppress each other, and distinct float32 scores."""
    centres = rng.uniform(0, extent, (n, 2))
    sizes = rng.uniform(8, 30, (n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores = (rng.permutation(n) / n + rng.uniform(0, 0.5 / n, n)).astype(np.float32)
    assert len(np.unique(scores)) == n
    return boxes, scores


def torch_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, valid: np.ndarray, groups=None) -> np.ndarray:
    """torchvision's kept indices (into all boxes, by descending score) among the valid boxes."""
    where = np.flatnonzero(valid)
    b, s = torch.from_numpy(boxes[where]), torch.from_numpy(scores[where])
    if groups is None:
        kept = torchvision.ops.nms(b, s, threshold)
    else:
        kept = torchvision.ops.batched_nms(b, s, torch.from_numpy(groups[where]), threshold)
    return where[kept.numpy()]


def check_outputs(indices, keep, expected: np.ndarray, max_output: int) -> None:
    indices, keep = np.asarray(indices), np.asarray(keep)
    assert indices.dtype == np.int32 and keep.dtype == bool
    assert indices.shape == keep.shape == (max_output,)
    count = min(max_output, len(expected))
    np.testing.assert_array_equal(keep, np.arange(max_output) < count)
    np.testing.assert_array_equal(indices[:count], expected[:count])
    assert (indices[count:] == 0).all()


@pytest.mark.parametrize("threshold", [0.3, 0.6])
@pytest.mark.parametrize("invalid_fraction", [0.0, 0.3])
def test_nms_matches_torchvision(threshold, invalid_fraction):
    rng = np.random.default_rng(int(threshold * 10 + invalid_fraction * 100))
    boxes, scores = random_boxes(rng, 80, extent=40.0)
    valid = rng.uniform(size=80) >= invalid_fraction
    expected = torch_nms(boxes, scores, threshold, valid)
    assert 5 < len(expected) < valid.sum()  # some suppression happens, and the short output below truncates
    for max_output in (5, 100):  # fewer than kept; more than the boxes themselves
        indices, keep = nms(jnp.asarray(boxes), jnp.asarray(scores), threshold, max_output, jnp.asarray(valid))
        check_outputs(indices, keep, expected, max_output)


def test_nms_invalid_boxes_neither_kept_nor_suppress():
    # Box 0 (highest score) would suppress box 1; with box 0 invalid, box 1 survives.
    boxes = jnp.asarray([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], jnp.float32)
    scores = jnp.asarray([0.9, 0.8, 0.7])
    indices, keep = nms(boxes, scores, 0.5, 3, jnp.asarray([False, True, True]))
    check_outputs(indices, keep, np.array([1, 2]), 3)
    indices, keep = nms(boxes, scores, 0.5, 3)
    check_outputs(indices, keep, np.array([0, 2]), 3)


def test_nms_long_suppression_chain():
    # Boxes sliding right, each overlapping the next (IoU 0.67) but not the one after (IoU 0.43), scores falling:
    # greedy keeps every other box, which the fixed-point iteration only reaches after ~n iterations.
    n = 40
    x = np.arange(n, dtype=np.float32) * 2.0
    boxes = np.stack([x, np.zeros(n), x + 10.0, np.full(n, 10.0)], axis=1).astype(np.float32)
    scores = np.linspace(1.0, 0.1, n).astype(np.float32)
    # Shuffle the input order so the sort is exercised too.
    perm = np.random.default_rng(0).permutation(n)
    boxes, scores = boxes[perm], scores[perm]
    expected = torch_nms(boxes, scores, 0.5, np.ones(n, bool))
    assert len(expected) == n // 2
    indices, keep = nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5, n)
    check_outputs(indices, keep, expected, n)


def test_nms_and_batched_nms_under_jit_and_vmap():
    rng = np.random.default_rng(7)
    batch, n, max_output, threshold = 3, 50, 24, 0.5
    data = [random_boxes(rng, n) for _ in range(batch)]
    boxes = np.stack([b for b, _ in data])
    scores = np.stack([s for _, s in data])
    valid = rng.uniform(size=(batch, n)) > 0.2
    groups = rng.integers(0, 4, (batch, n)).astype(np.int32)

    run = jax.jit(jax.vmap(functools.partial(nms, iou_threshold=threshold, max_output=max_output)))
    indices, keep = run(boxes, scores, valid=valid)
    for i in range(batch):
        check_outputs(indices[i], keep[i], torch_nms(boxes[i], scores[i], threshold, valid[i]), max_output)

    run = jax.jit(jax.vmap(functools.partial(batched_nms, iou_threshold=threshold, max_output=max_output)))
    indices, keep = run(boxes, scores, groups, valid=valid)
    for i in range(batch):
        expected = torch_nms(boxes[i], scores[i], threshold, valid[i], groups[i])
        # Per-class NMS keeps more than plain NMS (boxes of other classes do not suppress).
        assert len(expected) > len(torch_nms(boxes[i], scores[i], threshold, valid[i]))
        check_outputs(indices[i], keep[i], expected, max_output)


def test_batched_nms_matches_torchvision_with_negative_coordinates():
    rng = np.random.default_rng(3)
    boxes, scores = random_boxes(rng, 60)
    boxes = boxes - 30.0  # torchvision's offset trick assumes coordinates > -1; ours does not care
    groups = rng.integers(0, 3, 60).astype(np.int32)
    valid = rng.uniform(size=60) > 0.1
    expected = []
    for g in range(3):  # oracle: plain torchvision NMS per group, merged by score
        expected.extend(torch_nms(boxes, scores, 0.4, valid & (groups == g)))
    expected = np.asarray(sorted(expected, key=lambda i: -scores[i]))
    indices, keep = batched_nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(groups), 0.4, 64, valid)
    check_outputs(indices, keep, expected, 64)


# -------------------------------------------------------------------------------------------------- roi_align


def torch_roi_align(features: np.ndarray, boxes: np.ndarray, size: int, scale: float, ratio: int, aligned: bool):
    """torchvision.ops.roi_align of features [H, W, C] -> [R, P, P, C]."""
    x = torch.from_numpy(features).permute(2, 0, 1)[None]
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], dim=1)
    out = torchvision.ops.roi_align(x, rois, size, scale, ratio, aligned)
    return out.permute(0, 2, 3, 1)


def roi_boxes(rng: np.random.Generator, image: float) -> np.ndarray:
    """Boxes of many sizes, some leaving the image on every side, some tiny, one degenerate."""
    centres = rng.uniform(-0.2 * image, 1.2 * image, (24, 2))
    sizes = np.exp(rng.uniform(np.log(0.5), np.log(image), (24, 2)))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    fixed = [[0, 0, image, image], [image - 1, image - 1, image + 3, image + 3], [-5, -5, 1, 1], [5, 5, 5, 5]]
    return np.concatenate([boxes, fixed]).astype(np.float32)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize(("scale", "ratio", "size"), [(0.25, 2, 7), (0.5, 1, 4), (1 / 8, 3, 5)])
def test_roi_align_matches_torchvision(aligned, scale, ratio, size):
    rng = np.random.default_rng(ratio * 10 + size)
    features = rng.normal(size=(11, 13, 3)).astype(np.float32)
    boxes = roi_boxes(rng, 12 / scale)
    got = roi_align(jnp.asarray(features), jnp.asarray(boxes), size, scale, ratio, aligned)
    expected = torch_roi_align(features, boxes, size, scale, ratio, aligned).numpy()
    assert got.shape == expected.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_roi_align_gradient_matches_torch_autograd():
    rng = np.random.default_rng(11)
    features = rng.normal(size=(9, 10, 2)).astype(np.float32)
    boxes = roi_boxes(rng, 40.0)
    cotangent = rng.normal(size=(len(boxes), 5, 5, 2)).astype(np.float32)

    def loss(f):
        return jnp.sum(roi_align(f, jnp.asarray(boxes), 5, 0.25, 2, True) * cotangent)

    got = jax.jit(jax.grad(loss))(jnp.asarray(features))
    x = torch.from_numpy(features).requires_grad_(True)
    xt = x.permute(2, 0, 1)[None]
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], dim=1)
    out = torchvision.ops.roi_align(xt, rois, 5, 0.25, 2, True).permute(0, 2, 3, 1)
    (out * torch.from_numpy(cotangent)).sum().backward()
    assert np.abs(x.grad.numpy()).max() > 0
    np.testing.assert_allclose(np.asarray(got), x.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_roi_align_keeps_low_precision_dtype():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(8, 8, 4)).astype(np.float32)
    boxes = jnp.asarray(roi_boxes(rng, 32.0))
    full = roi_align(jnp.asarray(features), boxes, 3, 0.25, 2)
    half = roi_align(jnp.asarray(features, jnp.bfloat16), boxes, 3, 0.25, 2)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(full), atol=0.05)


def detectron2_levels(boxes: np.ndarray, low: int, high: int, canonical: float, level: int) -> np.ndarray:
    """assign_boxes_to_levels in float64 numpy."""
    box = boxes.astype(np.float64)
    area = np.maximum(box[:, 2] - box[:, 0], 0) * np.maximum(box[:, 3] - box[:, 1], 0)
    return np.clip(np.floor(level + np.log2(np.sqrt(area) / canonical + 1e-8)), low, high).astype(np.int32)


def test_assign_levels():
    sides = np.array([224, 223, 112, 111.9, 448, 447, 896, 2000, 10, 56, 1e-3, 0.0], np.float32)
    boxes = np.stack([np.full_like(sides, 5.0), np.full_like(sides, 7.0), 5.0 + sides, 7.0 + sides], axis=1)
    got = np.asarray(assign_levels(jnp.asarray(boxes), 2, 5))
    # FPN's rule by hand: 224 -> P4, halving / doubling the side moves one level, clipped to P2..P5.
    np.testing.assert_array_equal(got, [4, 3, 3, 2, 5, 4, 5, 5, 2, 2, 2, 2])
    rng = np.random.default_rng(5)
    random = roi_boxes(rng, 800.0)
    np.testing.assert_array_equal(
        np.asarray(assign_levels(jnp.asarray(random).reshape(2, -1, 4), 2, 6, 100.0, 3)).reshape(-1),
        detectron2_levels(random, 2, 6, 100.0, 3),
    )
    assert got.dtype == np.int32


def test_multilevel_roi_align_matches_torchvision_per_level():
    rng = np.random.default_rng(9)
    batch, image, channels, size, ratio = 2, 64, 3, 4, 2
    strides = (4, 8, 16, 32)
    maps = {s: rng.normal(size=(batch, image // s, image // s, channels)).astype(np.float32) for s in strides}
    # Small canonical box so boxes inside a 64-pixel image spread over all four levels.
    canonical, canonical_level = 32.0, 4
    sides = np.array([[5, 9, 12, 20, 30, 40, 50, 60, 90, 14]] * batch, np.float32) * rng.uniform(0.9, 1.1, (batch, 1))
    corners = rng.uniform(-8, 40, (batch, sides.shape[1], 2))
    boxes = np.concatenate([corners, corners + sides[..., None]], axis=-1).astype(np.float32)

    got = multilevel_roi_align(
        {s: jnp.asarray(m) for s, m in maps.items()}, jnp.asarray(boxes), size, ratio, canonical, canonical_level
    )
    assert got.shape == (batch, boxes.shape[1], size, size, channels)
    used = set()
    for b in range(batch):
        levels = detectron2_levels(boxes[b], 2, 5, canonical, canonical_level)
        for r, level in enumerate(levels):
            used.add(int(level))
            stride = 2**level
            expected = torch_roi_align(maps[stride][b], boxes[b, r : r + 1], size, 1 / stride, ratio, True)
            np.testing.assert_allclose(np.asarray(got[b, r]), expected[0].numpy(), rtol=1e-5, atol=1e-5)
    assert used == {2, 3, 4, 5}


def test_multilevel_roi_align_rejects_gapped_strides():
    maps = {4: jnp.zeros((1, 8, 8, 1)), 16: jnp.zeros((1, 2, 2, 1))}
    with pytest.raises(ValueError, match="consecutive powers of 2"):
        multilevel_roi_align(maps, jnp.zeros((1, 1, 4)), 2, 2)
