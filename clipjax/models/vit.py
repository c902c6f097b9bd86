"""Vision Transformer image tower in the CLIP layout (patch embedding, CLS token, ln_pre, blocks, ln_post),
timm's as MobileCLIP-B uses it, or MAE's; it can run on a subset of the patches (MAE's visible ones)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax.models.layers import (
    ACTIVATIONS,
    LAYER_NORM_EPS,
    OPEN_CLIP_VISION_INITS,
    XAVIER_INITS,
    Encoder,
    drop_path_rates,
    layer_norm,
)
from clipjax.models.mci import batch_norm

Dtype = Any
VIT_STEMS = ("patch", "conv", "mci")
VIT_LAYOUTS = ("clip", "timm", "mae")
TIMM_LAYER_NORM_EPS = 1e-6  # timm's VisionTransformer default (and MAE's); converted MobileCLIP-B weights depend on it


def sincos_position_embedding(grid_h: int, grid_w: int, width: int, cls_token: bool = True) -> np.ndarray:
    """MAE's fixed 2-D sine-cosine position embedding (`get_2d_sincos_pos_embed`): float32 [(1 +) gh * gw,
    width], a zero row for the CLS token first when `cls_token`.

    Patch (i, j) (row, column; index i * gw + j) gets [sincos(j), sincos(i)], each half of the width: MAE's
    meshgrid puts the column coordinate first. sincos(t) of w channels is [sin(t * f_k), cos(t * f_k)] for
    f_k = 10000^(-k / (w / 2)), k < w / 2.
    """
    if width % 4:
        raise ValueError(f"a 2-D sine-cosine position embedding needs a width divisible by 4, got {width}")
    frequencies = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4))

    def one_axis(positions: np.ndarray) -> np.ndarray:
        angles = np.outer(positions.reshape(-1).astype(np.float64), frequencies)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    table = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, width)), table], axis=0)
    return table.astype(np.float32)


class VisionTransformer(nn.Module):
    """ViT image encoder.

    `__call__(images)` takes float images [B, H, W, 3] (already normalised; H and W divisible by
    `patch_size`) and returns a dict:
      embedding  [B, embed_dim]  projected pooled feature (not L2-normalised), in `dtype`
      pooled     [B, width]      CLS token ("cls") or mean of patch tokens ("mean") after ln_post
      tokens     [B, 1 + N, width]  every token after ln_post; index 0 is CLS, N = (H/p) * (W/p); [B, N, width]
                 (no CLS) with window attention, as are `layers`; windowed blocks' `attention` is per window,
                 [B * windows, heads, w * w, w * w]
      layers     {block index: [B, 1 + N, width]}  raw outputs of the blocks in `return_layers`
      attention  [[B, heads, 1 + N, 1 + N] float32 per block] when `return_attention`, else []
      grid       (H/p, W/p)      the patch grid, to fold tokens back into feature maps
    `drop_path` is the stochastic depth rate of the last block, rising linearly from 0 at the first; it acts
    only in applies given a "dropout" rng (training), see `clipjax.models.layers.DropPath`.

    Stems: "patch" (one strided conv, CLIP), "conv" (Xiao et al.'s conv stack) or "mci" (MobileCLIP-B's,
    timm `vit_base_mci_224`: a 4x4/4 and a 2x2/2 conv, each with BatchNorm and GELU, before a 2x2/2 patch
    embedding with bias; patch size 16). Layouts: "clip" (OpenAI's: ln_pre, a position embedding for the
    CLS token too, LayerNorm epsilon 1e-5, projection without bias) or "timm" (timm's ViT as MobileCLIP-B
    uses it: no ln_pre, position embeddings for the patches only, epsilon 1e-6, projection with bias). The
    "clip" layout starts as open_clip's ViT does (CLS token, position embedding and projection N(0,
    width^-1/2), blocks by `OPEN_CLIP_VISION_INITS`), "timm" with N(0, 0.02) tokens and Xavier kernels; biases
    at zero. "mae" is He et al.'s encoder (timm's ViT as MAE trains it): no ln_pre, a position embedding for
    the CLS token and the patches that starts as the fixed 2-D sine-cosine table (`sincos_position_embedding`;
    the MAE task keeps it fixed, finetuning learns it), epsilon 1e-6, a patch embedding with bias that starts
    Xavier-uniform as a linear layer, N(0, 0.02) CLS token, Xavier kernels, projection with bias.

    `keep` (int [B, K] indices into the N patches) runs the blocks on those patches only (and the CLS token):
    MAE's encoder on the visible patches. The position embedding is added before the patches are taken, so
    each keeps its own; `tokens` is then [B, 1 + K, width] in `keep`'s order. A stem other than "patch"
    mixes neighbouring patches' pixels: the caller blanks the dropped patches first (see models/mae.py).
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    embed_dim: int
    pool: str = "cls"
    stem: str = "patch"
    act: str = "gelu"
    remat: str = "none"
    scan: bool = False  # nn.scan over the blocks (see clipjax.models.layers.Encoder)
    attention: str = "auto"  # see clipjax.models.layers.attention_implementation
    dtype: Dtype = jnp.float32
    fp8_matmuls: str = "none"  # FP8 recipe of the blocks' dense layers (clipjax.models.fp8)
    fp8_amax_history: int = 0  # 0: FP8 scaled by current maxima; N: by the last N steps' (delayed scaling)
    drop_path: float = 0.0
    layout: str = "clip"
    # ViTDet's backbone for detection: blocks outside `global_blocks` attend within window_size x window_size
    # windows of the patch grid, and the CLS token is dropped before the blocks (a pretrained one, and its
    # position embedding, go unused); 0 keeps CLIP's ViT.
    window_size: int = 0
    global_blocks: tuple[int, ...] = ()

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        return_layers: tuple[int, ...] = (),
        return_attention: bool = False,
        keep: jax.Array | None = None,
    ) -> dict[str, Any]:
        p = self.patch_size
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"image size {images.shape[1:3]} is not divisible by patch size {p}")
        if self.layout not in VIT_LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {VIT_LAYOUTS}")
        if keep is not None and self.window_size:
            raise ValueError("window attention needs every patch of the grid; it cannot run on kept patches only")
        timm, mae = self.layout == "timm", self.layout == "mae"
        eps = LAYER_NORM_EPS if self.layout == "clip" else TIMM_LAYER_NORM_EPS
        x = images.astype(self.dtype)
        if self.stem == "conv":
            x, p = self._conv_stem(x), 2
        elif self.stem == "mci":
            x, p = self._mci_stem(x), 2
        # MAE initialises its patch embedding as the linear layer it is: Xavier over (p * p * 3) -> width.
        patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
        x = nn.Conv(
            self.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=self.stem == "mci" or mae,
            kernel_init=patch_init if mae else nn.linear.default_kernel_init,
            dtype=self.dtype,
            name="patch_embed",
        )(x)
        batch, gh, gw, _ = x.shape
        x = x.reshape(batch, gh * gw, self.width)
        # open_clip's CLS token and position embedding start at N(0, width^-1/2); timm's and MAE's at N(0, 0.02).
        init = nn.initializers.normal(stddev=self.width**-0.5 if self.layout == "clip" else 0.02)
        cls = jnp.broadcast_to(self.param("cls_token", init, (self.width,)).astype(x.dtype), (batch, 1, self.width))
        if timm:  # position embeddings for the patches only; the CLS token goes in without one
            x = x + self.param("pos_embed", init, (gh * gw, self.width)).astype(x.dtype)
        else:
            if mae:
                table = sincos_position_embedding(gh, gw, self.width)
                init = lambda key, shape, dtype=jnp.float32: jnp.asarray(table, dtype)  # noqa: E731
            pos = self.param("pos_embed", init, (1 + gh * gw, self.width)).astype(x.dtype)
            x, cls = x + pos[1:], cls + pos[0]
        if keep is not None:
            x = jnp.take_along_axis(x, keep[..., None].astype(jnp.int32), axis=1)
        x = jnp.concatenate([cls, x], axis=1)
        if self.layout == "clip":
            x = layer_norm("ln_pre", self.dtype)(x)
        if self.window_size:
            x = x[:, 1:]
        x, layers, attention = Encoder(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            act=self.act,
            remat=self.remat,
            scan=self.scan,
            attention=self.attention,
            dtype=self.dtype,
            fp8=self.fp8_matmuls,
            fp8_amax_history=self.fp8_amax_history,
            drop_path=drop_path_rates(self.drop_path, self.depth),
            norm_eps=eps,
            window_size=self.window_size,
            global_blocks=self.global_blocks,
            inits=OPEN_CLIP_VISION_INITS if self.layout == "clip" else XAVIER_INITS,
            name="encoder",
        )(x, return_layers, return_attention, grid=(gh, gw))
        tokens = layer_norm("ln_post", self.dtype, eps)(x)
        if self.window_size:  # no CLS token: the pooled feature is the patches' mean
            pooled = tokens.mean(axis=1)
        else:
            pooled = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(axis=1)
        clip = self.layout == "clip"
        embedding = nn.Dense(
            self.embed_dim, use_bias=not clip, dtype=self.dtype, name="proj",
            kernel_init=nn.initializers.normal(self.width**-0.5) if clip else nn.initializers.xavier_uniform(),
        )(pooled)  # fmt: skip
        return {
            "embedding": embedding,
            "pooled": pooled,
            "tokens": tokens,
            "layers": layers,
            "attention": attention,
            "grid": (gh, gw),
        }

    def _mci_stem(self, x: jax.Array) -> jax.Array:
        """MobileCLIP-B's stem (timm ConvStem of vit_base_mci_224): [B, H, W, 3] -> [B, H/8, W/8, width / 4]."""
        if self.patch_size != 16:
            raise ValueError(f"the mci stem makes 16x16 patches, got patch size {self.patch_size}")
        for i, size in enumerate((4, 2)):
            x = nn.Conv(
                self.width // 4,
                (size, size),
                strides=(size, size),
                padding="VALID",
                use_bias=False,
                dtype=self.dtype,
                name=f"stem_conv_{i}",
            )(x)
            x = ACTIVATIONS["gelu"](batch_norm(self, self.dtype, f"stem_norm_{i}")(x))
        return x

    def _conv_stem(self, x: jax.Array) -> jax.Array:
        """Convolutional stem ("Early convolutions help transformers see better", Xiao et al. 2021).

        log2(patch_size) - 1 stride-2 3x3 convolutions (channels doubling up to width / 2, each followed by
        LayerNorm and ReLU) before a 2x2 stride-2 patch embedding: the same token grid as the plain patch
        stem, but with a convolutional prior that makes small ViTs learn shapes markedly faster.
        """
        stages = int(math.log2(self.patch_size)) - 1
        if self.patch_size != 2 ** (stages + 1) or stages < 1:
            raise ValueError(f"the conv stem needs a power-of-two patch size >= 4, got {self.patch_size}")
        for i in range(stages):
            channels = self.width // 2 ** (stages - i)
            x = nn.Conv(channels, (3, 3), strides=(2, 2), use_bias=False, dtype=self.dtype, name=f"stem_conv_{i}")(x)
            x = nn.relu(layer_norm(f"stem_norm_{i}", self.dtype)(x))
        return x
