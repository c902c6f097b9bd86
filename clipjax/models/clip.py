"""Two-tower CLIP: image and text encoders projected to a shared, L2-normalised embedding space."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array) -> jax.Array:
    """Float32 rows of unit length: [..., d] -> [..., d] float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class CLIP(nn.Module):
    """CLIP model.

    `image` maps images [B, H, W, 3] and `text` maps tokens [B, L] to dicts with an "embedding" entry
    (VisionTransformer and TextTransformer do). The parameter `logit_scale` holds the *log* of the logit
    scale (as open_clip stores it), initialised to log(1 / temperature_init); `logit_bias`, when
    `logit_bias_init` is set, is SigLIP's bias, read by the loss from the parameters.
    """

    image: nn.Module
    text: nn.Module
    temperature_init: float = 0.07
    logit_bias_init: float | None = None  # adds a learnable `logit_bias` parameter (SigLIP)

    def setup(self) -> None:
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(math.log(1.0 / self.temperature_init)), ()
        )
        if self.logit_bias_init is not None:
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), ())

    def encode_image(self, images: jax.Array) -> jax.Array:
        """Images [B, H, W, 3] (normalised floats) -> unit embeddings [B, embed_dim] float32."""
        return l2_normalize(self.image(images)["embedding"])

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """Token ids [B, L] int32 -> unit embeddings [B, embed_dim] float32."""
        return l2_normalize(self.text(tokens)["embedding"])

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns (image embeddings [B, d] f32, text embeddings [B, d] f32, logit scale [] f32 = exp(param))."""
        return self.encode_image(images), self.encode_text(tokens), jnp.exp(self.logit_scale)


def clamp_logit_scale(params: dict[str, Any], max_scale: float) -> dict[str, Any]:
    """Projects the log logit scale into [0, log(max_scale)] after an update, as open_clip does each step."""
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, math.log(max_scale))}
