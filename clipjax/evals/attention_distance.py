"""Mean attention distance (Dosovitskiy et al.'s Fig. 7; the paper's Fig. 3): how far, in pixels, each head of
each block looks.

For head h of block l, image n and query patch i the distance is sum_j a_ij d_ij, with d_ij the Euclidean
distance in pixels between the centres of patches i and j (the patch size times their grid distance). Tokens
that are not patches (the CLS token, registers) are removed as queries and as keys; "renormalised" divides the
remaining weights by their sum over the patch keys, "unrenormalised" keeps them as they are (keras-io's
probing-ViTs code, which therefore counts attention to CLS as distance 0). Both are averaged over the queries
and the images. Uniform attention over the patches gives the grid's mean pairwise distance
(`uniform_attention_distance`), the reference line of the picture.

A ViT's blocks give [B, heads, T, T] maps through its explicit-softmax path (`return_attention`); an MCi's
stage-4 attention blocks sow theirs (stride 32: a "patch" is 32 px, no CLS). Windowed (ViTDet) towers are
refused: their maps are per window.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from clipjax.data.transforms import normalize_images
from clipjax.errors import ConfigError
from clipjax.evals.batches import eval_batches, load_or_stop
from clipjax.models.mci import MCi
from clipjax.parallel import replicated

VARIANTS = ("renormalised", "unrenormalised")
MCI_ATTENTION_STRIDE = 32  # MCi's attention stage (stage 4) runs on the stride-32 map


def patch_distances(grid: tuple[int, int], patch_px: int) -> np.ndarray:
    """float64 [N, N], N = grid_h * grid_w in row-major order: pixel distances between patch centres."""
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    return patch_px * np.hypot(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :])


def uniform_attention_distance(grid: tuple[int, int], patch_px: int) -> float:
    """The mean distance of attention spread evenly over the patches: the grid's mean pairwise distance."""
    return float(patch_distances(grid, patch_px).mean())


def attention_distances(attention: jax.Array, distances: jax.Array, renormalise: bool) -> jax.Array:
    """Per image and head, the mean over query patches of sum_j a_ij d_ij.

    Args:
      attention: float [B, heads, T, T] softmax weights (rows sum to 1); the first T - N tokens are not
        patches (CLS, registers) and are dropped as queries and keys.
      distances: float [N, N] `patch_distances`.
      renormalise: divide the patch keys' weights by their sum (the module docstring).

    Returns:
      float32 [B, heads].
    """
    patches = distances.shape[0]
    prefix = attention.shape[-1] - patches
    weights = attention[:, :, prefix:, prefix:].astype(jnp.float32)
    if renormalise:
        weights = weights / jnp.maximum(weights.sum(axis=-1, keepdims=True), 1e-30)
    return jnp.einsum("bhqk,qk->bhq", weights, distances.astype(jnp.float32)).mean(axis=-1)


def attention_layout(tower: Any, image_size: int) -> tuple[tuple[int, int], int]:
    """(the patch grid of the tower's attention maps, a patch's side in pixels) at `image_size`.

    Raises:
      ConfigError: a tower whose attention is not global over a patch grid (ViTDet's windows).
    """
    if isinstance(tower, MCi):
        side = image_size // MCI_ATTENTION_STRIDE
        return (side, side), MCI_ATTENTION_STRIDE
    if getattr(tower, "window_size", 0):
        raise ConfigError(
            "attention distance: this ViT attends within windows (window_size > 0, a detection backbone); "
            "analyse the pretrained tower instead"
        )
    if not hasattr(tower, "patch_size"):
        raise ConfigError(f"attention distance: a {type(tower).__name__} tower has no attention layers")
    return (image_size // tower.patch_size,) * 2, tower.patch_size


def tower_attention(tower: Any, variables: Any, images: jax.Array) -> list[jax.Array]:
    """Every attention block's weights, in order: a list of float32 [B, heads, T, T] of normalised images."""
    if isinstance(tower, MCi):
        _, state = tower.apply(variables, images, mutable=["intermediates"])
        found = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
        # Module names end in their index ("blocks_10" after "blocks_9"): order by the numbers, not the text.
        order = [tuple(_natural(str(getattr(k, "key", k))) for k in path) for path, _ in found]
        return [found[i][1].astype(jnp.float32) for i in sorted(range(len(found)), key=order.__getitem__)]
    return [a.astype(jnp.float32) for a in tower.apply(variables, images, return_attention=True)["attention"]]


def _natural(name: str) -> tuple:
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def measure_attention_distance(
    tower: Any,
    variables: Any,
    mesh: Mesh,
    source: Any,
    load: Callable[[Any], dict[str, np.ndarray]],
    *,
    image_size: int,
    normalize: str,
    batch_size: int,
    num_examples: int | None,
    num_threads: int = 8,
) -> dict[str, Any]:
    """The mean attention distances of `tower` over the first `num_examples` images of `source`, streamed in
    global batches sharded over `mesh` and reduced on the devices (no attention map leaves them).

    Returns:
      {"renormalised", "unrenormalised": float64 [layers, heads] means over images and queries,
       "images": the count, "grid": (h, w), "patch_px", "uniform": `uniform_attention_distance`}.

    Raises:
      ConfigError: a tower without global attention (`attention_layout`).
    """
    grid, patch_px = attention_layout(tower, image_size)
    distances = jnp.asarray(patch_distances(grid, patch_px), jnp.float32)

    def sums(variables: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        maps = tower_attention(tower, variables, normalize_images(batch["image"], normalize))
        if not maps:
            raise ConfigError(f"attention distance: the {type(tower).__name__} tower returned no attention maps")
        valid = batch["valid"].astype(jnp.float32)[:, None]
        out = {"images": valid.sum()}
        for variant in VARIANTS:
            per_layer = [attention_distances(a, distances, variant == "renormalised") for a in maps]
            out[variant] = jnp.stack([(d * valid).sum(axis=0) for d in per_layer])  # [layers, heads]
        return out

    step = jax.jit(sums, out_shardings=replicated(mesh))
    total: dict[str, np.ndarray] | None = None
    for batch in eval_batches(
        source,
        lambda record: load_or_stop(load, record),
        mesh,
        batch_size=batch_size,
        num_examples=num_examples,
        num_threads=num_threads,
    ):
        out = {name: np.asarray(value, np.float64) for name, value in step(variables, batch).items()}
        total = out if total is None else {name: total[name] + out[name] for name in out}
    if total is None:
        raise ConfigError("attention distance: the evaluation data holds no images")
    count = int(total["images"])
    return {
        **{variant: total[variant] / count for variant in VARIANTS},
        "images": count,
        "grid": grid,
        "patch_px": patch_px,
        "uniform": uniform_attention_distance(grid, patch_px),
    }
