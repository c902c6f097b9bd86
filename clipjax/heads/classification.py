"""Image classification on a pretrained image tower: pooling, a norm and a linear head (MAE's finetuning head)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from clipjax.models.layers import LAYER_NORM_EPS
from clipjax.models.mci import MCi
from clipjax.models.presets import build_image_tower

POOLS = ("mean", "cls")


class ImageClassifier(nn.Module):
    """Image tower + head. `__call__(images [B, H, W, 3] float, normalised as the tower expects) -> logits
    [B, num_classes] float32`.

    Features: a ViT with pool="mean" averages the patch tokens of its last block (before ln_post) and
    normalises them with a new LayerNorm `fc_norm` (MAE's global pooling); pool="cls" takes the tower's
    pooled CLS token (after ln_post). An MCi tower gives its globally average-pooled final features. The
    head is a new Dense layer whose weights start tiny (`head_init_std`) so the first steps do not
    disturb the pretrained features. The tower keeps the name "image", so its parameters sit where a CLIP
    checkpoint's image tower does: {"image": ..., "fc_norm": ..., "head": ...}.
    """

    image: nn.Module
    num_classes: int
    pool: str = "mean"
    head_init_std: float = 2e-5

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if isinstance(self.image, MCi):
            features = self.image(images)["pooled"]
        elif self.pool == "mean":
            depth = self.image.depth
            out = self.image(images, return_layers=(depth - 1,))
            tokens = out["layers"][depth - 1][:, 1:]  # the patch tokens; index 0 is CLS
            features = nn.LayerNorm(epsilon=LAYER_NORM_EPS, name="fc_norm")(tokens.astype(jnp.float32).mean(axis=1))
        elif self.pool == "cls":
            features = self.image(images)["pooled"]
        else:
            raise ValueError(f"pool {self.pool!r} is not one of {POOLS}")
        head = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.truncated_normal(self.head_init_std),
            bias_init=nn.initializers.zeros,
            name="head",
        )
        return head(features.astype(jnp.float32))


def build_classifier(model: ConfigDict, num_classes: int, pool: str, head_init_std: float) -> ImageClassifier:
    """The classifier on the image tower `config.model` describes (its embedding projection goes unused)."""
    return ImageClassifier(build_image_tower(model), num_classes, pool=pool, head_init_std=head_init_std)
