"""Semantic segmentation loss: per-pixel softmax cross-entropy as mmsegmentation trains UperNet / linear heads.

Works on global arrays inside jit; with the batch sharded over devices the reductions become collectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipjax.ops.labels import IGNORE_LABEL
from clipjax.ops.resize import resize_logits


def segmentation_loss(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_LABEL, label_smoothing: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy averaged over the labelled pixels of the whole batch, on logits upsampled to the labels.

    As mmseg's decode heads: the logits are resized bilinearly (align_corners=False) to the label size first, never
    the labels down. The mean is over all non-ignored pixels of the batch pooled together, which is mmseg's
    CrossEntropyLoss(avg_non_ignore=True) and torch's cross_entropy(ignore_index=..., reduction="mean"); mmseg's
    older default (avg_non_ignore=False) divides by all pixels instead, ignored ones included.

    Label smoothing follows torch: the target of class k is (1 - eps) [k == y] + eps / K, so the pixel loss is
    (1 - eps) * (-log p_y) + eps * mean_k(-log p_k). Written as logsumexp(z) - (1 - eps) z_y - eps mean_k z_k, it
    needs no one-hot target and no [B, H, W, K] log-softmax beyond the upsampled logits themselves.

    Labels outside [0, K) other than ignore_index are treated as ignored (torch would raise on them), as the
    metrics do. The logits must be finite everywhere (ignored pixels too: bilinear upsampling mixes neighbours).

    Args:
      logits: float [B, h, w, K], any float dtype; everything is computed in float32.
      labels: int [B, H, W] classes in [0, K) or ignore_index, any int dtype.
      ignore_index: the label value of unlabelled pixels.
      label_smoothing: eps in [0, 1].

    Returns:
      float32 [] scalar; 0 (with zero gradients, no NaN) when no pixel is labelled.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    num_classes = logits.shape[-1]
    logits = resize_logits(logits, labels.shape[1:3])  # float32 [B, H, W, K]
    labels = labels.astype(jnp.int32)
    labelled = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    # A safe in-range index for the gather; the ignored pixels' values are discarded by the where below.
    safe_labels = jnp.where(labelled, labels, 0)
    label_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
    per_pixel = jax.nn.logsumexp(logits, axis=-1) - (1.0 - label_smoothing) * label_logit
    if label_smoothing:
        per_pixel = per_pixel - label_smoothing * jnp.mean(logits, axis=-1)
    # where, not a multiply by the mask: its backward sends exactly 0 to the ignored pixels.
    per_pixel = jnp.where(labelled, per_pixel, 0.0)
    count = jnp.sum(labelled, dtype=jnp.float32)
    return jnp.where(count > 0, jnp.sum(per_pixel) / jnp.maximum(count, 1.0), 0.0)
