"""The region proposal network: detectron2's StandardRPNHead shared over the pyramid levels, and the
proposals it makes (per-level top-k, decoding, clipping, per-level NMS, the best post-NMS boxes overall)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax.heads.detection.boxes import RPN_WEIGHTS, clip_boxes, decode_boxes, nonempty
from clipjax.heads.detection.nms import nms

_HEAD_INIT = nn.initializers.normal(stddev=0.01)  # detectron2's RPN head init (biases 0)


class RPNHead(nn.Module):
    """`num_convs` 3x3 convs with ReLU (ViTDet: 2, the classic FPN head: 1), then 1x1 convs to one objectness
    logit and 4 box deltas per anchor; the same weights on every level.

    `__call__({stride: [B, h, w, C] float32}) -> ({stride: logits [B, h * w * A]}, {stride: deltas [B, h * w *
    A, 4]})` float32, ordered (y, x, anchor) as clipjax.heads.detection.anchors.grid_anchors.
    """

    num_anchors: int
    num_convs: int = 2

    @nn.compact
    def __call__(self, features: dict[int, jax.Array]) -> tuple[dict[int, jax.Array], dict[int, jax.Array]]:
        channels = next(iter(features.values())).shape[-1]
        convs = [nn.Conv(channels, (3, 3), kernel_init=_HEAD_INIT, name=f"conv_{i}") for i in range(self.num_convs)]
        objectness = nn.Conv(self.num_anchors, (1, 1), kernel_init=_HEAD_INIT, name="objectness")
        deltas = nn.Conv(4 * self.num_anchors, (1, 1), kernel_init=_HEAD_INIT, name="deltas")
        logits, boxes = {}, {}
        for stride, x in features.items():
            for conv in convs:
                x = nn.relu(conv(x))
            batch = x.shape[0]
            logits[stride] = objectness(x).reshape(batch, -1)
            boxes[stride] = deltas(x).reshape(batch, -1, 4)
        return logits, boxes


def propose(
    logits: dict[int, jax.Array],
    deltas: dict[int, jax.Array],
    anchors: dict[int, np.ndarray],
    image_sizes: jax.Array,
    *,
    pre_nms: int,
    post_nms: int,
    nms_threshold: float = 0.7,
    min_size: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """detectron2's find_top_rpn_proposals with static shapes: on each level the pre_nms best anchors by
    objectness, their decoded boxes clipped to the image, NMS within the level keeping up to post_nms, then
    the post_nms best of all levels.

    Args:
      logits: {stride: float32 [B, N_s]}; deltas: {stride: float32 [B, N_s, 4]}; anchors: {stride: [N_s, 4]}.
      image_sizes: int32 [B, 2], (height, width) of each image's content.

    Returns:
      (boxes float32 [B, post_nms, 4], objectness logits float32 [B, post_nms], valid bool [B, post_nms]),
      best first; no gradient flows through them.
    """
    logits, deltas = jax.lax.stop_gradient((logits, deltas))
    all_boxes, all_scores, all_valid = [], [], []
    for stride, level_logits in logits.items():
        k = min(pre_nms, level_logits.shape[1])
        scores, index = jax.lax.top_k(level_logits, k)
        level_anchors = jnp.asarray(anchors[stride])[index]
        boxes = decode_boxes(jnp.take_along_axis(deltas[stride], index[..., None], axis=1), level_anchors, RPN_WEIGHTS)
        boxes = clip_boxes(boxes, image_sizes)
        valid = nonempty(boxes, min_size) & jnp.isfinite(scores) & jnp.isfinite(boxes).all(-1)
        level_nms = functools.partial(nms, iou_threshold=nms_threshold, max_output=min(post_nms, k))
        keep_index, keep = jax.vmap(level_nms)(boxes, scores, valid=valid)
        all_boxes.append(jnp.take_along_axis(boxes, keep_index[..., None], axis=1))
        all_scores.append(jnp.where(keep, jnp.take_along_axis(scores, keep_index, axis=1), -jnp.inf))
        all_valid.append(keep)
    boxes, scores, valid = (jnp.concatenate(x, axis=1) for x in (all_boxes, all_scores, all_valid))
    count = min(post_nms, scores.shape[1])
    scores, order = jax.lax.top_k(scores, count)
    boxes = jnp.take_along_axis(boxes, order[..., None], axis=1)
    valid = jnp.take_along_axis(valid, order, axis=1)
    return boxes, jnp.where(valid, scores, -1e9), valid
