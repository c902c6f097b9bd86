"""Contrastive image-text losses over the global batch.

Under `jax.jit` with the embeddings sharded over the mesh's batch axes, every image is scored against
every caption of the step across all devices: the compiler gathers what each device needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("naive",)


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, *, impl: str = "naive") -> jax.Array:
    """Symmetric InfoNCE loss of CLIP.

    Args:
      image_emb: [B, d] L2-normalised image embeddings (any float dtype; computed in float32).
      text_emb: [B, d] L2-normalised text embeddings; row i is the caption of image i.
      logit_scale: [] the multiplier itself (already exponentiated, as in open_clip's ClipLoss).
      impl: "naive" materialises the [B, B] logits.

    Returns:
      [] float32: mean of the image->text and text->image cross-entropies.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"clip_loss impl={impl!r} is not one of {IMPLEMENTATIONS}")
    logits = logit_scale * jnp.einsum(
        "id,jd->ij", image_emb.astype(jnp.float32), text_emb.astype(jnp.float32)
    )
    matched = jnp.diagonal(logits)
    image_to_text = jax.nn.logsumexp(logits, axis=1) - matched
    text_to_image = jax.nn.logsumexp(logits, axis=0) - matched
    return 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))
