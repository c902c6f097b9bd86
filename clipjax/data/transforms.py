"""Image normalisation, applied on the device inside the jitted step (uint8 crosses the host link)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# OpenAI CLIP's per-channel statistics, used by open_clip and most CLIP checkpoints.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZATIONS = ("clip", "none")
# The padding of "none" normalisation, and of callers that state none.
BLACK = (0, 0, 0)


def normalize_images(images: jax.Array, mode: str) -> jax.Array:
    """uint8 images [..., 3] in 0..255 -> float32: "clip" mean/std normalisation, or "none" for [0, 1]."""
    x = images.astype(jnp.float32) / 255.0
    if mode == "clip":
        return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
    if mode == "none":
        return x
    raise ValueError(f"image normalisation {mode!r} is not one of {NORMALIZATIONS}")


def padding_pixel(mode: str) -> tuple[int, int, int]:
    """The uint8 RGB pixel that `normalize_images(., mode)` maps nearest to zero: the CLIP mean pixel
    (123, 117, 104) for "clip", black for "none".

    Detection and segmentation canvases are padded with it because detectron2 and mmseg pad the normalised
    image with 0, that is with the mean pixel; black padding would read as -1.8 after "clip" normalisation.
    """
    if mode == "clip":
        return tuple(int(round(255 * m)) for m in CLIP_MEAN)  # type: ignore[return-value]
    if mode == "none":
        return BLACK
    raise ValueError(f"image normalisation {mode!r} is not one of {NORMALIZATIONS}")
