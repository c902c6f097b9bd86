"""Image normalisation, applied on the device inside the jitted step (uint8 crosses the host link)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# OpenAI CLIP's per-channel statistics, used by open_clip and most CLIP checkpoints.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# torchvision's ImageNet statistics, which MAE (and timm's ImageNet-trained weights) normalise with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("clip", "imagenet", "none")
# The padding of "none" normalisation, and of callers that state none.
BLACK = (0, 0, 0)


def normalization_stats(mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of pixels in [0, 1] under `mode`: CLIP's, ImageNet's, or (0, 1) for "none"."""
    stats = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD), "none": ((0.0,) * 3, (1.0,) * 3)}
    if mode not in stats:
        raise ValueError(f"image normalisation {mode!r} is not one of {NORMALIZATIONS}")
    return stats[mode]


def normalize_images(images: jax.Array, mode: str) -> jax.Array:
    """uint8 images [..., 3] in 0..255 -> float32: "clip" or "imagenet" mean/std normalisation, or "none" for
    [0, 1]."""
    x = images.astype(jnp.float32) / 255.0
    if mode == "none":
        return x
    mean, std = normalization_stats(mode)
    return (x - jnp.asarray(mean)) / jnp.asarray(std)


def padding_pixel(mode: str) -> tuple[int, int, int]:
    """The uint8 RGB pixel that `normalize_images(., mode)` maps nearest to zero: the CLIP mean pixel
    (123, 117, 104) for "clip", ImageNet's (124, 116, 104) for "imagenet", black for "none".

    Detection and segmentation canvases are padded with it because detectron2 and mmseg pad the normalised
    image with 0, that is with the mean pixel; black padding would read as -1.8 after "clip" normalisation.
    """
    if mode == "none":
        return BLACK
    return tuple(int(round(255 * m)) for m in normalization_stats(mode)[0])  # type: ignore[return-value]
