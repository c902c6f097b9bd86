"""Sliding-window inference: dense predictions on images larger than the model's input size.

A ViT's position embeddings fix its input size; dense tasks still evaluate on whole images (NYUv2's 480x640
frames with a 480x480 model, ADE20K at any size with a 512x512 one). The image is covered by windows of the
model's size, `stride` apart, the last one flush with the far edge (mmsegmentation's rule), and the
predictions of overlapping windows are averaged.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of `window` covering [0, length), `stride` apart, the last ending at `length`
    (a single window at 0 when `length` <= `window`)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window {window} and stride {stride} must be positive")
    count = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride + window, length) - window, 0) for i in range(count)]


def sliding_window_predict(
    predict: Callable[[jax.Array], jax.Array], images: jax.Array, window: int, stride: int
) -> jax.Array:
    """The average of `predict` over windows covering `images`.

    Args:
      predict: images [B, window, window, C] -> dense predictions [B, window, window, ...] (float).
      images: [B, H, W, C] with H, W >= window (smaller sides are not padded: pad before calling).
      window, stride: window side and the step between windows, in pixels.

    Returns:
      float32 [B, H, W, ...]: each pixel's prediction averaged over the windows that hold it. A single
      window covering the whole image is exactly `predict(images)`.
    """
    height, width = images.shape[1:3]
    if height < window or width < window:
        raise ValueError(f"images of {height}x{width} are smaller than the {window}px window")
    rows, cols = window_starts(height, window, stride), window_starts(width, window, stride)
    if len(rows) == 1 and len(cols) == 1:
        return predict(images).astype(jnp.float32)
    total, count = None, jnp.zeros((height, width), jnp.float32)
    for top in rows:
        for left in cols:
            out = predict(images[:, top : top + window, left : left + window]).astype(jnp.float32)
            if total is None:
                total = jnp.zeros((images.shape[0], height, width) + out.shape[3:], jnp.float32)
            total = total.at[:, top : top + window, left : left + window].add(out)
            count = count.at[top : top + window, left : left + window].add(1.0)
    # Every pixel lies in at least one window, so count >= 1 everywhere.
    return total / count.reshape((1, height, width) + (1,) * (total.ndim - 3))
