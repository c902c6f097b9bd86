"""Training targets of the RPN and the RoI heads: matching boxes to ground truth, balanced random sampling,
and mask targets, all for one image with static shapes (vmap them over the batch).

Ground truth arrives padded: boxes [G, 4], classes int32 [G] with -1 on padding rows. Matching follows
detectron2's Matcher; sampling its subsample_labels (a uniformly random subset of the positives, up to a
fraction of the samples, then of the negatives), drawn with random priorities and top_k so the shapes are
static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipjax.heads.detection.boxes import encode_boxes, pairwise_iou
from clipjax.heads.detection.roi_align import roi_align

IGNORE, NEGATIVE, POSITIVE = -1, 0, 1


def match(
    iou: jax.Array, gt_valid: jax.Array, thresholds: tuple[float, ...], labels: tuple[int, ...], low_quality: bool
) -> tuple[jax.Array, jax.Array]:
    """detectron2's Matcher: each candidate's best ground truth and its label by that IoU.

    Args:
      iou: float32 [G, M], ground truth x candidates.
      gt_valid: bool [G], False on padding rows (never matched).
      thresholds: increasing IoU cut points t_1 < ... (len(labels) - 1 of them): IoU in [t_i, t_i+1) gets
        labels[i], below t_1 labels[0].
      labels: IGNORE / NEGATIVE / POSITIVE per interval.
      low_quality: also label POSITIVE every candidate whose IoU with some ground truth equals that ground
        truth's highest IoU (all ties), so that each ground truth has a positive (the RPN's rule).

    Returns:
      (matched ground truth index int32 [M] (0 when there is none: check the label), label int32 [M]).
      Without valid ground truth every candidate gets labels[0].
    """
    iou = jnp.where(gt_valid[:, None], iou, -1.0)
    best = iou.max(axis=0)
    matched = jnp.argmax(iou, axis=0).astype(jnp.int32)
    label = jnp.full(best.shape, labels[0], jnp.int32)
    for threshold, value in zip(thresholds, labels[1:]):
        label = jnp.where(best >= threshold, value, label)
    if low_quality:
        highest = iou.max(axis=1, keepdims=True)
        # A ground truth that overlaps nothing would otherwise make every zero-IoU candidate positive.
        ties = (iou == highest) & gt_valid[:, None] & (highest > 0)
        label = jnp.where(ties.any(axis=0), POSITIVE, label)
    label = jnp.where(gt_valid.any(), label, labels[0])
    return matched, label


def sample_priorities(label: jax.Array, num_samples: int, positive_fraction: float, rng: jax.Array) -> jax.Array:
    """detectron2's subsample_labels as priorities: float32 [M], in [2, 3) for the sampled positives, in [1, 2)
    for the sampled negatives, -1 for the rest.

    At most int(num_samples * positive_fraction) positives are drawn uniformly among the POSITIVE labels, then
    num_samples minus that many negatives among the NEGATIVE ones; IGNORE is never drawn.

    Args:
      label: int32 [M] of IGNORE / NEGATIVE / POSITIVE.
      rng: a PRNG key.
    """
    noise = jax.random.uniform(rng, label.shape)
    max_positive = int(num_samples * positive_fraction)
    positive, negative = label == POSITIVE, label == NEGATIVE
    num_positive = jnp.minimum(positive.sum(), max_positive)
    num_negative = jnp.minimum(negative.sum(), num_samples - num_positive)
    # Rank each candidate among its kind by its noise: a uniformly random subset of each kind comes first.
    order = jnp.argsort(jnp.where(positive, -noise, jnp.where(negative, 1.0 - noise, 2.0)))
    rank = jnp.zeros(label.shape, jnp.int32).at[order].set(jnp.arange(label.shape[0], dtype=jnp.int32))
    num_positive_all = positive.sum()
    take_positive = positive & (rank < num_positive)
    take_negative = negative & (rank - num_positive_all < num_negative)
    return jnp.where(take_positive, 2.0 + noise, jnp.where(take_negative, 1.0 + noise, -1.0))


def rpn_targets(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    rng: jax.Array,
    *,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    thresholds: tuple[float, float] = (0.3, 0.7),
) -> tuple[jax.Array, jax.Array]:
    """The RPN's targets for one image: which anchors train objectness, and the deltas of the positives.

    Args:
      anchors: float32 [A, 4], every level's anchors concatenated.
      gt_boxes: float32 [G, 4]; gt_valid: bool [G].

    Returns:
      (label int32 [A]: POSITIVE / NEGATIVE for the sampled anchors, IGNORE otherwise;
       deltas float32 [A, 4]: encode_boxes(matched ground truth, anchor), meaningful on positives).
    """
    matched, label = match(
        pairwise_iou(gt_boxes, anchors), gt_valid, thresholds, (NEGATIVE, IGNORE, POSITIVE), low_quality=True
    )
    priority = sample_priorities(label, num_samples, positive_fraction, rng)
    label = jnp.where(priority > 0, label, IGNORE)
    return label, encode_boxes(gt_boxes[matched], anchors)


def sample_rois(
    proposals: jax.Array,
    proposals_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    rng: jax.Array,
    *,
    num_samples: int = 512,
    positive_fraction: float = 0.25,
    iou_threshold: float = 0.5,
) -> dict[str, jax.Array]:
    """Samples the RoI heads' training boxes of one image among the proposals and the ground truth boxes
    (appended as detectron2 does, so every ground truth trains the heads from the start).

    Args:
      proposals: float32 [P, 4] (gradient stopped by the caller); proposals_valid: bool [P].
      gt_boxes: float32 [G, 4]; gt_classes: int32 [G], -1 on padding.

    Returns:
      {"boxes": float32 [S, 4], "matched": int32 [S] ground truth index, "foreground": bool [S] (IoU >=
       iou_threshold), "valid": bool [S] (a sampled slot; False where fewer than S candidates exist)},
      S = num_samples, the foreground slots first (at most int(S * positive_fraction) of them).
    """
    gt_valid = gt_classes >= 0
    # Padding rows (never sampled) when there are fewer candidates than samples.
    short = max(num_samples - proposals.shape[0] - gt_boxes.shape[0], 0)
    boxes = jnp.concatenate([proposals, gt_boxes, jnp.zeros((short, 4), proposals.dtype)], axis=0)
    valid = jnp.concatenate([proposals_valid, gt_valid, jnp.zeros(short, bool)], axis=0)
    matched, label = match(pairwise_iou(gt_boxes, boxes), gt_valid, (iou_threshold,), (NEGATIVE, POSITIVE), False)
    label = jnp.where(valid, label, IGNORE)
    priority = sample_priorities(label, num_samples, positive_fraction, rng)
    order = jax.lax.top_k(priority, num_samples)[1]
    return {
        "boxes": boxes[order],
        "matched": matched[order],
        "foreground": priority[order] >= 2.0,
        "valid": priority[order] > 0,
    }


def stage_targets(
    boxes: jax.Array, valid: jax.Array, gt_boxes: jax.Array, gt_classes: jax.Array, iou_threshold: float
) -> tuple[jax.Array, jax.Array]:
    """A Cascade stage's labels for boxes it does not resample: (matched ground truth int32 [S], foreground bool
    [S]) of boxes [S, 4] (valid: bool [S]) at that stage's IoU threshold."""
    gt_valid = gt_classes >= 0
    matched, label = match(pairwise_iou(gt_boxes, boxes), gt_valid, (iou_threshold,), (NEGATIVE, POSITIVE), False)
    return matched, valid & (label == POSITIVE)


def mask_targets(gt_masks: jax.Array, gt_boxes: jax.Array, boxes: jax.Array, size: int) -> jax.Array:
    """Each RoI's mask target: its ground truth's mask sampled at the centres of a size x size grid over the
    RoI, 1 where that is at least 1/2 (detectron2 rasterises the polygons over the RoI instead; the same up to
    the stored mask's resolution).

    Args:
      gt_masks: uint8 [S, m, m], the matched ground truth's mask inside its own box (the data pipeline's
        box-cropped masks, values 0/1).
      gt_boxes: float32 [S, 4], the matched ground truth boxes.
      boxes: float32 [S, 4], the RoIs.

    Returns:
      float32 [S, size, size] of 0/1; 0 outside the ground truth box.
    """
    m = gt_masks.shape[-1]
    scale = m / jnp.maximum(gt_boxes[:, 2:] - gt_boxes[:, :2], 1e-6)  # mask pixels per image pixel (x, y)
    local = (boxes - jnp.tile(gt_boxes[:, :2], 2)) * jnp.tile(scale, 2)
    # Zero padding around the stored mask: RoIAlign clamps samples within a pixel of the edge to the edge, and
    # the ground truth mask is 0 beyond its box.
    padded = jnp.pad(gt_masks.astype(jnp.float32), ((0, 0), (1, 1), (1, 1)))[..., None]
    local = local + 1.0

    def one(mask: jax.Array, box: jax.Array) -> jax.Array:
        return roi_align(mask, box[None], size, 1.0, 1, aligned=True)[0, ..., 0]

    return (jax.vmap(one)(padded, local) >= 0.5).astype(jnp.float32)
