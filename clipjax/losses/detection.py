"""Mask R-CNN's losses (detectron2's definitions), on global arrays inside jit.

Every loss takes a mask of the entries that count and a normaliser, so padded and unsampled slots of the
static shapes contribute nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from clipjax.ops.boxes import box_area


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    """Elementwise smooth L1 of x (float32): |x| - beta/2 beyond beta, x^2 / (2 beta) within; L1 for beta 0."""
    ax = jnp.abs(x)
    if beta <= 0:
        return ax
    return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def giou_loss(boxes: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - generalised IoU of matching boxes: [..., 4] x [..., 4] -> [...] float32 (fvcore's giou_loss)."""
    boxes, targets = boxes.astype(jnp.float32), targets.astype(jnp.float32)
    inter_wh = jnp.maximum(
        jnp.minimum(boxes[..., 2:], targets[..., 2:]) - jnp.maximum(boxes[..., :2], targets[..., :2]), 0
    )
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = box_area(boxes) + box_area(targets) - inter
    iou = inter / (union + 1e-7)
    hull_wh = jnp.maximum(boxes[..., 2:], targets[..., 2:]) - jnp.minimum(boxes[..., :2], targets[..., :2])
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return 1.0 - (iou - (hull - union) / (hull + 1e-7))


def rpn_losses(
    logits: jax.Array, deltas: jax.Array, labels: jax.Array, target_deltas: jax.Array, num_samples: int, beta: float
) -> dict[str, jax.Array]:
    """The RPN's objectness (binary cross-entropy on the sampled anchors) and box regression (smooth L1 of the
    positives' deltas), both summed and divided by num_samples x images as detectron2 does.

    Args:
      logits: float [B, A]; deltas: float [B, A, 4]; labels: int32 [B, A] (1 positive, 0 negative, -1 not
        sampled); target_deltas: float32 [B, A, 4].

    Returns:
      {"loss_rpn_cls": [], "loss_rpn_loc": []} float32.
    """
    normaliser = num_samples * logits.shape[0]
    sampled = labels >= 0
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), (labels == 1).astype(jnp.float32))
    loc = smooth_l1(deltas.astype(jnp.float32) - target_deltas, beta).sum(-1)
    return {
        "loss_rpn_cls": jnp.where(sampled, bce, 0.0).sum() / normaliser,
        "loss_rpn_loc": jnp.where(labels == 1, loc, 0.0).sum() / normaliser,
    }


def box_classification_loss(logits: jax.Array, classes: jax.Array, valid: jax.Array) -> jax.Array:
    """Softmax cross-entropy of the box head over K + 1 classes (index K background), averaged over the valid
    slots. logits float [B, S, K + 1], classes int32 [B, S], valid bool [B, S] -> float32 []."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), classes)
    return jnp.where(valid, ce, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def box_regression_loss(per_box: jax.Array, foreground: jax.Array, valid: jax.Array) -> jax.Array:
    """detectron2's box regression normalisation: the foreground boxes' losses (per_box float32 [B, S], smooth
    L1 summed over the 4 deltas or GIoU) summed and divided by the number of valid slots. -> float32 []."""
    return jnp.where(foreground, per_box, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def mask_loss(logits: jax.Array, targets: jax.Array, foreground: jax.Array) -> jax.Array:
    """Per-pixel binary cross-entropy of the foreground RoIs' masks (of their ground truth class), averaged over
    their pixels. logits float [B, F, m, m], targets float32 [B, F, m, m] of 0/1, foreground bool [B, F]."""
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(axis=(-1, -2))
    return jnp.where(foreground, bce, 0.0).sum() / jnp.maximum(foreground.sum(), 1)
