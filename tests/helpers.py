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


def tiny_mci_with_random_variables(width: int = 32, size: int = 64, batch: int = 2):
    """(an MCi of one block per stage, stage widths (8, 16, 16, `width`), random positive variables in its
    initialiser's shapes (BatchNorm variances included), normal images float32 [batch, size, size, 3]).
    Running or compiling MCi's initialiser costs 15-20 s on the CPU; applying the module op by op much less."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from clipjax.models.mci import MCi

    tower = MCi(depths=(1, 1, 1, 1), widths=(8, 16, 16, width), num_classes=16)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    shapes = jax.eval_shape(tower.init, jax.random.PRNGKey(0), images)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.1, 0.3, s.shape), s.dtype), shapes)
    return tower, variables, images
