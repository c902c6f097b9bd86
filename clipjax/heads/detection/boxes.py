"""Box arithmetic shared by the RPN, the RoI heads, their targets and inference.

Boxes are float32 (x0, y0, x1, y1) in pixels of the network's input, continuous coordinates as detectron2
uses them: width = x1 - x0 (no +1), a box covering pixel columns 0..9 is (0, ., 10, .). Every function works
on any leading batch dimensions and inside jit.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from clipjax.ops.boxes import box_area

# detectron2's Box2BoxTransform scale_clamp: no box grows more than 1000/16 times its anchor in one decode.
SCALE_CLAMP = math.log(1000.0 / 16)
# Box coder weights (wx, wy, ww, wh): the RPN's, the RoI box head's, and the three Cascade stages'.
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CASCADE_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


def pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Intersection over union of every pair: a [..., N, 4], b [..., M, 4] -> [..., N, M] float32, 0 where the
    union is empty (two degenerate boxes), as torchvision's box_iou except for that 0/0."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    top_left = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def encode_boxes(boxes: jax.Array, anchors: jax.Array, weights: tuple[float, ...] = RPN_WEIGHTS) -> jax.Array:
    """detectron2's Box2BoxTransform.get_deltas: the deltas (dx, dy, dw, dh) that take `anchors` to `boxes`.

    Args:
      boxes, anchors: float [..., 4] (broadcasting); deltas of empty anchors are finite but meaningless.
      weights: (wx, wy, ww, wh) multiplying the deltas.

    Returns:
      float32 [..., 4].
    """
    boxes, anchors = boxes.astype(jnp.float32), anchors.astype(jnp.float32)
    wx, wy, ww, wh = weights
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    # Empty anchors (padding, a box clipped away) give finite deltas, masked out by the callers: an inf here
    # would turn into NaN gradients through the loss's where.
    aw, ah = jnp.maximum(aw, 1e-6), jnp.maximum(ah, 1e-6)
    bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    bx, by = boxes[..., 0] + 0.5 * bw, boxes[..., 1] + 0.5 * bh
    # Padding and degenerate boxes would give log(0): their deltas are masked out by the callers.
    bw, bh = jnp.maximum(bw, 1e-6), jnp.maximum(bh, 1e-6)
    return jnp.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * jnp.log(bw / aw), wh * jnp.log(bh / ah)], axis=-1)


def decode_boxes(deltas: jax.Array, anchors: jax.Array, weights: tuple[float, ...] = RPN_WEIGHTS) -> jax.Array:
    """detectron2's Box2BoxTransform.apply_deltas: the boxes `deltas` [..., 4] make of `anchors` [..., 4]
    (broadcasting), dw and dh clamped at SCALE_CLAMP. Returns float32 [..., 4]."""
    deltas, anchors = deltas.astype(jnp.float32), anchors.astype(jnp.float32)
    wx, wy, ww, wh = weights
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, SCALE_CLAMP)
    dh = jnp.minimum(deltas[..., 3] / wh, SCALE_CLAMP)
    cx, cy = dx * aw + ax, dy * ah + ay
    w, h = jnp.exp(dw) * aw, jnp.exp(dh) * ah
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def clip_boxes(boxes: jax.Array, size: jax.Array) -> jax.Array:
    """Boxes [..., N, 4] clipped to an image of `size` [..., 2] = (height, width) (one per leading index)."""
    size = jnp.asarray(size, jnp.float32)
    height, width = size[..., 0, None], size[..., 1, None]
    x = jnp.clip(boxes[..., 0::2], 0.0, width[..., None])
    y = jnp.clip(boxes[..., 1::2], 0.0, height[..., None])
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def nonempty(boxes: jax.Array, threshold: float = 0.0) -> jax.Array:
    """bool [...]: boxes [..., 4] whose width and height both exceed `threshold`."""
    return (boxes[..., 2] - boxes[..., 0] > threshold) & (boxes[..., 3] - boxes[..., 1] > threshold)
