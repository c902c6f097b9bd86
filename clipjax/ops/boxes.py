"""Box arithmetic shared by the detection heads and losses. Boxes are (x0, y0, x1, y1) in pixels."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def box_area(boxes: jax.Array) -> jax.Array:
    """[..., 4] -> [...] area, 0 for degenerate (x1 < x0 or y1 < y0) boxes."""
    return jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
