"""Exact greedy non-maximum suppression with static shapes (jit- and vmap-friendly).

Greedy NMS (torchvision.ops.nms) keeps a box unless a higher-scoring kept box overlaps it with IoU above the
threshold. With the boxes sorted by score, "j suppresses i" (j before i, IoU > threshold) is a DAG, and the
greedy answer is its unique fixed point: keep[i] = valid[i] and no kept j suppresses i. Iterating that rule on
all boxes at once (Jacobi) from keep = valid fixes one more level of the DAG per iteration, so it reaches the
greedy answer after at most (longest suppression chain + 1) iterations, usually a handful: a cluster of
mutually overlapping boxes settles in two. Each iteration is one [N, N] masked reduction.

Cost: the [N, N] IoU / suppression matrices (N^2 floats + N^2 bools per image: 2000 boxes -> 20 MB), and an
iteration count set by the longest chain of boxes each overlapping the next but not the one before it
(under vmap, by the worst image in the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipjax.heads.detection.boxes import pairwise_iou


def _greedy_nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None,
    groups: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """nms / batched_nms: boxes that only suppress boxes of their own group when `groups` is given."""
    n = boxes.shape[0]
    if valid is None:
        valid = jnp.ones((n,), bool)
    if n == 0:
        return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)

    # Stable: equal scores keep their input order (torchvision's order among ties is unspecified).
    order = jnp.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes[order]
    sorted_valid = valid[order]
    position = jnp.arange(n)
    # suppress[j, i]: j, ahead of i in score order, would suppress i if kept. Invalid j are excluded through
    # `keep` (never kept), invalid i through `sorted_valid`.
    suppress = (position[:, None] < position[None, :]) & (pairwise_iou(sorted_boxes, sorted_boxes) > iou_threshold)
    if groups is not None:
        sorted_groups = groups[order]
        suppress = suppress & (sorted_groups[:, None] == sorted_groups[None, :])

    def step(keep: jax.Array) -> jax.Array:
        return sorted_valid & ~jnp.any(suppress & keep[:, None], axis=0)

    def cond(state: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, changed, iteration = state
        return changed & (iteration <= n)  # n + 1 iterations always suffice (chains are at most n long)

    def body(state: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        keep, _, iteration = state
        new_keep = step(keep)
        return new_keep, jnp.any(new_keep != keep), iteration + 1

    keep, _, _ = jax.lax.while_loop(cond, body, (sorted_valid, jnp.array(True), jnp.array(0, jnp.int32)))

    # The first max_output kept boxes in score order: kept boxes rank by (n - position), the rest by -1.
    rank = jnp.where(keep, n - position, -1)
    if max_output > n:
        rank = jnp.concatenate([rank, jnp.full((max_output - n,), -1, rank.dtype)])
    top_rank, top_position = jax.lax.top_k(rank, max_output)
    kept = top_rank > 0
    indices = jnp.where(kept, order[jnp.minimum(top_position, n - 1)], 0)
    return indices.astype(jnp.int32), kept


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression, exactly torchvision.ops.nms among the valid boxes.

    Args:
      boxes: float [N, 4] (x0, y0, x1, y1).
      scores: float [N]; among equal scores the earlier box counts as higher.
      iou_threshold: a box is suppressed by a kept higher-scoring box whose IoU with it is > this.
      max_output: static number of outputs.
      valid: bool [N] or None (all valid). Invalid boxes are never kept and never suppress.

    Returns:
      indices: int32 [max_output], the kept boxes' indices into `boxes`, by descending score; 0 past the
        number kept.
      keep: bool [max_output], True for the first min(max_output, number kept) entries.
    """
    return _greedy_nms(boxes, scores, iou_threshold, max_output, valid, None)


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    groups: jax.Array,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """NMS independently within each group (per-class NMS), in one call: torchvision.ops.batched_nms.

    Boxes of different groups never suppress each other. Rather than torchvision's coordinate-offset trick
    (shift each group's boxes apart by group * (max coordinate + 1)), the suppression matrix is masked to
    same-group pairs: the same answer, but exact (no float32 rounding of coordinates shifted by ~80 * 1333
    pixels) and independent of the coordinates' sign.

    Args:
      boxes: float [N, 4] (x0, y0, x1, y1).
      scores: float [N].
      groups: int [N], the group (class) of each box.
      iou_threshold, max_output, valid: as `nms`.

    Returns:
      (indices int32 [max_output], keep bool [max_output]) as `nms`: the kept boxes of all groups together, by
      descending score.
    """
    return _greedy_nms(boxes, scores, iou_threshold, max_output, valid, groups)
