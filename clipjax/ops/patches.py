"""Images as sequences of patches, in the order MAE (and Hugging Face's ViTMAE) flattens them."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H / p) * (W / p), p * p * C]: patches row by row, each flattened as (row, column,
    channel), MAE's `patchify` (einsum "nchpwq->nhwpqc") on channels-last images."""
    batch, height, width, channels = images.shape
    grid_h, grid_w = height // patch, width // patch
    x = images.reshape(batch, grid_h, patch, grid_w, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, grid_h * grid_w, patch * patch * channels)


def unpatchify(patches: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
    """The inverse of `patchify`: [B, gh * gw, p * p * C] -> [B, gh * p, gw * p, C]."""
    batch, _, size = patches.shape
    channels = size // (patch * patch)
    x = patches.reshape(batch, *grid, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, grid[0] * patch, grid[1] * patch, channels)


def pixel_mask(mask: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
    """A per-patch mask [B, gh * gw] as a per-pixel one [B, gh * p, gw * p] (each patch's value on its pixels)."""
    per_patch = mask.reshape(mask.shape[0], *grid)
    return jnp.repeat(jnp.repeat(per_patch, patch, axis=1), patch, axis=2)
