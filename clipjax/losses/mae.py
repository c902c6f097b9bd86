"""MAE's reconstruction loss: per-patch mean squared error on the removed patches (He et al. 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipjax.ops.patches import patchify

NORM_PIX_EPS = 1e-6  # MAE's: target = (x - mean) / sqrt(var + 1e-6)


def mae_targets(images: jax.Array, patch: int, norm_pix: bool) -> jax.Array:
    """The pixels each patch is to reconstruct: float32 [B, N, p * p * C] from images [B, H, W, C]; with
    `norm_pix`, each patch normalised by its own mean and unbiased variance (torch's `var` default, as MAE)."""
    target = patchify(images.astype(jnp.float32), patch)
    if norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
    return target


def mae_loss(pred: jax.Array, images: jax.Array, mask: jax.Array, patch: int, norm_pix: bool) -> jax.Array:
    """float32 []: the mean over removed patches (mask 1) of each patch's mean squared error.

    Args:
      pred: float [B, N, p * p * C] predicted patches.
      images: float [B, H, W, C], normalised as the model saw them.
      mask: float [B, N], 1 where the patch was removed.
    """
    per_patch = jnp.mean((pred.astype(jnp.float32) - mae_targets(images, patch, norm_pix)) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)
