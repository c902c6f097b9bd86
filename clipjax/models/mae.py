"""Masked autoencoder (He et al. 2021, facebookresearch/mae `models_mae.py`) around clipjax's own ViT.

The encoder is the `VisionTransformer` of the other tasks, as the submodule "image", so an MAE checkpoint's
encoder loads into every finetuning task like a CLIP image tower. A forward pass:

  noise [B, N] -> per-sample random masking: ids_shuffle = argsort(noise), the first K = int(N (1 - ratio))
  kept, mask 1 where a patch is removed, ids_restore = argsort(ids_shuffle)
  encoder on the CLS token and the K visible patches (position embeddings added before the patches are taken)
  decoder: a linear map to the decoder width, a learned mask token for each removed patch, the tokens put back
  in image order, the fixed 2-D sine-cosine position embedding, `decoder_depth` blocks, LayerNorm, a linear
  map to p * p * 3 pixel values per patch; the CLS output is dropped.

A stem other than "patch" (Xiao et al.'s conv stack, MobileCLIP-B's) mixes pixels across patch borders, so a
visible token would see its masked neighbours: the removed patches' pixels are set to 0 (the mean, after
normalisation) before the stem, so nothing of them reaches the encoder.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipjax.models.layers import XAVIER_INITS, Encoder, layer_norm
from clipjax.models.vit import TIMM_LAYER_NORM_EPS, VisionTransformer, sincos_position_embedding
from clipjax.ops.patches import pixel_mask

Dtype = Any


def random_masking(noise: jax.Array, mask_ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MAE's per-sample masking from uniform noise float [B, N] (the patches with the smallest noise stay).

    Returns:
      (keep int32 [B, K] the visible patches in the order kept, K = int(N * (1 - mask_ratio));
       mask float32 [B, N], 1 where a patch is removed, in image order;
       restore int32 [B, N], the position of each image patch in the shuffled order (argsort of the shuffle))
    """
    num_patches = noise.shape[1]
    kept = int(num_patches * (1 - mask_ratio))
    shuffle = jnp.argsort(noise, axis=1, stable=True)
    restore = jnp.argsort(shuffle, axis=1, stable=True)
    in_shuffled_order = jnp.concatenate(
        [jnp.zeros((noise.shape[0], kept)), jnp.ones((noise.shape[0], num_patches - kept))], axis=1
    )
    mask = jnp.take_along_axis(in_shuffled_order, restore, axis=1)
    return shuffle[:, :kept].astype(jnp.int32), mask.astype(jnp.float32), restore.astype(jnp.int32)


class MaskedAutoencoder(nn.Module):
    """`image`, the encoder, is a `VisionTransformer` (any layout, the patch stem or another); the decoder is
    `decoder_depth` pre-norm blocks of `decoder_width` with `decoder_heads` heads and `decoder_mlp_dim`.

    `__call__(images float [B, H, W, 3] normalised, noise float [B, N])` returns
      pred     float32 [B, N, p * p * 3]  every patch's predicted pixels (`ops.patches.patchify` order)
      mask     float32 [B, N]             1 where the patch was removed
      restore  int32 [B, N]
      latent   [B, 1 + K, width]          the encoder's output (after its final LayerNorm)
    """

    image: VisionTransformer
    mask_ratio: float = 0.75
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_dim: int = 2048
    dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, images: jax.Array, noise: jax.Array) -> dict[str, jax.Array]:
        p = self.image.patch_size
        grid = (images.shape[1] // p, images.shape[2] // p)
        keep, mask, restore = random_masking(noise, self.mask_ratio)
        if self.image.stem != "patch":  # a stem that crosses patch borders must not see the removed pixels
            images = images * (1.0 - pixel_mask(mask, grid, p))[..., None].astype(images.dtype)
        latent = self.image(images, keep=keep)["tokens"]
        x = nn.Dense(self.decoder_width, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                     name="decoder_embed")(latent)  # fmt: skip
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.decoder_width,))
        batch, removed = x.shape[0], restore.shape[1] + 1 - x.shape[1]
        tokens = jnp.concatenate(
            [x[:, 1:], jnp.broadcast_to(mask_token.astype(x.dtype), (batch, removed, x.shape[2]))], 1
        )
        tokens = jnp.take_along_axis(tokens, restore[..., None], axis=1)  # back in image order
        x = jnp.concatenate([x[:, :1], tokens], axis=1)
        x = x + jnp.asarray(sincos_position_embedding(*grid, self.decoder_width), x.dtype)
        x, _, _ = Encoder(
            self.decoder_depth,
            self.decoder_heads,
            self.decoder_mlp_dim,
            remat=self.remat,
            dtype=self.dtype,
            norm_eps=TIMM_LAYER_NORM_EPS,
            inits=XAVIER_INITS,
            name="decoder",
        )(x)
        x = layer_norm("decoder_norm", self.dtype, TIMM_LAYER_NORM_EPS)(x)
        pred = nn.Dense(p * p * 3, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                        name="decoder_pred")(x)  # fmt: skip
        return {"pred": pred[:, 1:].astype(jnp.float32), "mask": mask, "restore": restore, "latent": latent}
