"""Classification losses and metrics: soft-target cross-entropy (for Mixup / CutMix / label smoothing) and top-k hits.

Both work on global arrays inside jit; with the batch sharded over devices the reductions become collectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean over rows of -sum_k targets[:, k] * log_softmax(logits)[:, k].

    Args:
      logits: float [B, K], any float dtype; the softmax is computed in float32.
      targets: float32 [B, K], rows summing to 1 (e.g. from `clipjax.data.mixup.mix_batch`).
      mask: optional bool or float [B]; rows where it is 0 / False (padding) are left out of the mean, and a
        float mask weights the rows. All rows masked gives 0.

    Returns:
      float32 [] scalar.
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    if mask is None:
        return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))
    weights = mask.astype(jnp.float32)
    kept = weights != 0
    # Padded rows may hold garbage (inf / nan): replace them before the softmax, not after, so neither the loss
    # nor its gradient (0 * nan = nan in the backward pass of a later where) can pick it up.
    logits = jnp.where(kept[:, None], logits, 0.0)
    targets = jnp.where(kept[:, None], targets, 0.0)
    per_row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    count = jnp.sum(weights)
    return jnp.where(count > 0, jnp.sum(per_row * weights) / jnp.where(count > 0, count, 1.0), 0.0)


def topk_correct(logits: jax.Array, labels: jax.Array, ks: tuple[int, ...] = (1, 5)) -> dict[int, jax.Array]:
    """Whether each row's label is among its k highest logits, for each k in `ks`.

    Ties: the label counts as within the top k when fewer than k classes score strictly higher than it, so the
    answer does not depend on how a sort orders equal scores. A nan label score is never correct.

    Args:
      logits: float [B, K], any float dtype.
      labels: int [B] class indices in [0, K).
      ks: the k values, each >= 1 (k >= K is always correct).

    Returns:
      {k: bool [B]}.
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    logits = logits.astype(jnp.float32)
    label_score = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)  # [B, 1]
    # One O(B * K) compare instead of a sort or lax.top_k: exact under ties and cheap for any k.
    higher = jnp.sum(logits > label_score, axis=-1)
    valid = ~jnp.isnan(label_score[:, 0])
    return {k: (higher < k) & valid for k in ks}
