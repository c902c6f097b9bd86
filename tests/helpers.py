"""Helpers shared by several test modules."""

from ml_collections import ConfigDict

from clipjax.defaults import base_config


def tiny_config(mesh: dict) -> ConfigDict:
    """A full config for a CLIP small enough to compile in seconds: 16 px images, 2 blocks of width 32."""
    config = base_config()
    config.batch_size = 16
    config.total_steps = 10
    config.mesh.update(mesh)
    config.fsdp_min_size = 256
    config.optim.warmup_steps = 1
    config.model.update(name="vit_ti16", image_size=16, embed_dim=16)
    config.model.image.update(width=32, depth=2, heads=2, mlp_dim=64, patch_size=8)
    config.model.text.update(width=32, depth=2, heads=2, mlp_dim=64, context_length=8)
    return config
