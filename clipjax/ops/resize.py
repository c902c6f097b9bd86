"""Bilinear resizing as PyTorch's F.interpolate(mode="bilinear", align_corners=False) does it: what the
feature pyramids, the segmentation losses and the evaluation of logits share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """F.interpolate(mode="bilinear", align_corners=False): half-pixel centres, no antialiasing even when
    shrinking. [B, H, W, C] -> [B, *size, C], same dtype."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear", antialias=False)


def resize_logits(logits: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of per-pixel logits with half-pixel centres: torch F.interpolate(align_corners=False).

    jax.image.resize's "bilinear" samples at half-pixel centres, and with antialias=False its edge handling
    (renormalising the triangle weights over in-image pixels) equals torch's clamp of the source coordinate at 0, so
    it matches torch both when upsampling and when downsampling (torch does not antialias here, nor does mmseg).

    Args:
      logits: float [B, h, w, K], any float dtype (resized in float32).
      size: (H, W), the output size.

    Returns:
      float32 [B, H, W, K].
    """
    return resize_bilinear(logits.astype(jnp.float32), size)
