"""Helpers shared by several test modules."""

import contextlib
import io

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


def run_smoke_cli(repo_root: str, workdir: str, *extra: str) -> tuple[int, str]:
    """The demo's smoke pretraining through the command line in `workdir`, with `extra` flags: (exit status,
    stdout)."""
    from clipjax.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        flags = [f"--config={repo_root}/configs/demo.py:smoke", f"--workdir={workdir}", "--config.progress_bar=false"]
        status = main([*flags, *extra])
    return status, out.getvalue()


def tiny_model_flags(width=32, depth=2, size=32):
    """--config.model.* flags for a 2-block ViT small enough to finetune in seconds."""
    return [
        "--config.model.name=vit_ti16",
        f"--config.model.image_size={size}",
        f"--config.model.image.width={width}",
        f"--config.model.image.depth={depth}",
        "--config.model.image.heads=2",
        f"--config.model.image.mlp_dim={2 * width}",
        "--config.model.image.patch_size=8",
    ]
