"""Named model presets and building a model from `config.model`."""

from __future__ import annotations

import re

import flax.linen as nn
import jax.numpy as jnp
from ml_collections import ConfigDict

from clipjax.models.clip import CLIP
from clipjax.models.mci import MCI_PRESETS, build_mci
from clipjax.models.text import TextTransformer
from clipjax.models.vit import VisionTransformer

# (width, depth, heads, mlp_dim), as in the ViT paper and OpenAI CLIP.
VIT_SIZES = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
}
VIT_PATCHES = (14, 16, 32)
# OpenAI CLIP text towers: "base" goes with ViT-B, "large" with ViT-L/14.
TEXT_SIZES = {"base": (512, 12, 8, 2048), "large": (768, 12, 12, 3072)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_VIT_NAME = re.compile(r"vit_(ti|s|b|l)(\d+)")


def image_tower_names() -> list[str]:
    """Every accepted `config.model.name`: ViTs, and MobileCLIP's MCi encoders."""
    return [f"vit_{size}{patch}" for size in VIT_SIZES for patch in VIT_PATCHES] + list(MCI_PRESETS)


def is_mci(name: str) -> bool:
    """Whether `config.model.name` is one of MobileCLIP's MCi encoders (convolutional, no ViT dims)."""
    return name in MCI_PRESETS


def image_tower_dims(model: ConfigDict) -> dict[str, int]:
    """The image tower's width, depth, heads, mlp_dim and patch_size: the preset with overrides applied."""
    match = _VIT_NAME.fullmatch(model.name)
    if model.name not in image_tower_names() or match is None:
        raise ValueError(f"unknown model name {model.name!r}")
    width, depth, heads, mlp_dim = VIT_SIZES[match.group(1)]
    dims = {"width": width, "depth": depth, "heads": heads, "mlp_dim": mlp_dim, "patch_size": int(match.group(2))}
    return {key: value if model.image[key] is None else model.image[key] for key, value in dims.items()}


def text_tower_dims(model: ConfigDict) -> dict[str, int]:
    """The text tower's width, depth, heads and mlp_dim: the preset with overrides applied."""
    if model.text.name not in TEXT_SIZES:
        raise ValueError(f"unknown text tower {model.text.name!r}")
    dims = dict(zip(("width", "depth", "heads", "mlp_dim"), TEXT_SIZES[model.text.name]))
    return {key: value if model.text[key] is None else model.text[key] for key, value in dims.items()}


def build_image_tower(model: ConfigDict) -> nn.Module:
    """The image tower described by `config.model` (projecting to `model.embed_dim`)."""
    # Configs saved before stochastic depth existed have no `drop_path`: they trained without it.
    drop_path = model.get("drop_path", 0.0)
    if is_mci(model.name):
        return build_mci(model.name, num_classes=model.embed_dim, dtype=DTYPES[model.dtype], drop_path=drop_path)
    dims = image_tower_dims(model)
    return VisionTransformer(
        width=dims["width"],
        depth=dims["depth"],
        num_heads=dims["heads"],
        mlp_dim=dims["mlp_dim"],
        patch_size=dims["patch_size"],
        embed_dim=model.embed_dim,
        pool=model.image.pool,
        stem=model.image.stem,
        # Configs saved before the timm layout existed have no `layout`: they are CLIP's.
        layout=model.image.get("layout", "clip"),
        act=model.act,
        remat=model.remat,
        # Configs saved before scanning existed have no `scan`: their blocks were unscanned.
        scan=model.get("scan", False),
        attention=model.attention,
        dtype=DTYPES[model.dtype],
        # Configs saved before FP8 products existed have no `fp8_matmuls`: they trained without them.
        fp8_matmuls=model.get("fp8_matmuls", "none"),
        fp8_amax_history=model.get("fp8_amax_history", 0),
        drop_path=drop_path,
    )


def build_clip(model: ConfigDict) -> CLIP:
    """The two-tower CLIP described by `config.model`."""
    dims = text_tower_dims(model)
    text = TextTransformer(
        vocab_size=model.text.vocab_size,
        context_length=model.text.context_length,
        width=dims["width"],
        depth=dims["depth"],
        num_heads=dims["heads"],
        mlp_dim=dims["mlp_dim"],
        embed_dim=model.embed_dim,
        act=model.act,
        causal=model.text.causal,
        remat=model.remat,
        # Configs saved before scanning existed have no `scan`: their blocks were unscanned.
        scan=model.get("scan", False),
        attention=model.attention,
        dtype=DTYPES[model.dtype],
        # Configs saved before FP8 products existed have no `fp8_matmuls`: they trained without them.
        fp8_matmuls=model.get("fp8_matmuls", "none"),
        fp8_amax_history=model.get("fp8_amax_history", 0),
    )
    return CLIP(
        image=build_image_tower(model),
        text=text,
        temperature_init=model.temperature_init,
        logit_bias_init=model.logit_bias_init,
    )
