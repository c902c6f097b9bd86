"""Flax Linen models: transformer layers, ViT and text towers, two-tower CLIP, presets."""

from clipjax.models.clip import CLIP, clamp_logit_scale, l2_normalize
from clipjax.models.presets import build_clip, build_image_tower, image_tower_names
from clipjax.models.text import TextTransformer
from clipjax.models.vit import VisionTransformer

__all__ = [
    "CLIP",
    "TextTransformer",
    "VisionTransformer",
    "build_clip",
    "build_image_tower",
    "clamp_logit_scale",
    "image_tower_names",
    "l2_normalize",
]
