"""Frozen image-tower features for linear probes: computed once per image over a whole split (sharded over the
mesh, each example exactly once), and cached in the workdir so later probes of the same tower and data reuse
them.

What a probe reads from the tower (`tower_features`):
  classify  "pooled": the tower's pooled feature (a ViT's CLS token after ln_post, or the mean of its patch
            tokens with pool="mean"; an MCi's pooled final features); "blocks": DINOv2's variant, the
            concatenation over the last `n_blocks` blocks of [CLS token, mean patch token] (the blocks' raw
            outputs; the probe standardises every channel), ViTs only
  segment   the patch tokens on their grid [h, w, D] (a ViT's last block after ln_post; an MCi's stride-16 map)
  depth     the same grid, and the CLS token (ViT) or pooled feature (MCi) as "extra"
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from clipjax.data.transforms import normalize_images
from clipjax.evals.batches import eval_batches, load_or_stop
from clipjax.heads.towers import vit_feature_map
from clipjax.models.mci import MCi
from clipjax.parallel import replicated

FEATURE_KINDS = ("pooled", "blocks")


def tower_features(tower: Any, variables: Any, images: jax.Array, *, task: str, kind: str, n_blocks: int) -> dict:
    """The probe inputs of normalised images [B, H, W, 3]: {"features": ..., ("extra": ...)} float32 (see the
    module docstring)."""
    if isinstance(tower, MCi):
        out = tower.apply(variables, images)
        if task == "classify":
            return {"features": out["pooled"].astype(jnp.float32)}
        return {"features": out["features"][16].astype(jnp.float32), "extra": out["pooled"].astype(jnp.float32)}
    depth = tower.depth
    wanted = tuple(range(depth - n_blocks, depth)) if task == "classify" and kind == "blocks" else ()
    out = tower.apply(variables, images, return_layers=wanted)
    if task == "classify":
        if kind == "pooled":
            return {"features": out["pooled"].astype(jnp.float32)}
        parts = [p for i in wanted for p in (out["layers"][i][:, 0], out["layers"][i][:, 1:].mean(axis=1))]
        return {"features": jnp.concatenate(parts, axis=-1).astype(jnp.float32)}
    grid, _ = vit_feature_map(out, images)
    return {"features": grid, "extra": out["tokens"][:, 0].astype(jnp.float32)}


def feature_function(
    tower: Any, mesh: Mesh, *, task: str, kind: str, n_blocks: int, normalize: str, target_key: str
) -> Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]:
    """The jitted (variables, batch) -> {"features", ("extra",) "targets", "valid"} of `tower_features`, with
    the outputs replicated so that every host holds the whole split. One function for both splits: it compiles
    once per batch shape."""

    def compute(variables: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        images = normalize_images(batch["image"], normalize)
        out = tower_features(tower, variables, images, task=task, kind=kind, n_blocks=n_blocks)
        return {**out, "targets": batch[target_key], "valid": batch["valid"]}

    return jax.jit(compute, out_shardings=replicated(mesh))


def extract_features(
    features: Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]],
    variables: Any,
    mesh: Mesh,
    source: Any,
    load: Callable[[Any], dict[str, np.ndarray]],
    *,
    batch_size: int,
    num_examples: int | None,
    num_threads: int = 8,
) -> dict[str, np.ndarray]:
    """Every example's probe inputs and target over `source` (the first `num_examples`, each exactly once, in
    global batches of `batch_size` sharded over `mesh`) through `features` (`feature_function`'s): host arrays
    {"features", ("extra",) "targets"}, dense features stored as float16 (half the memory, far below the
    probe's precision)."""
    parts: dict[str, list[np.ndarray]] = {}
    batches = eval_batches(
        source,
        lambda record: load_or_stop(load, record),
        mesh,
        batch_size=batch_size,
        num_examples=num_examples,
        num_threads=num_threads,
    )
    for batch in batches:
        out = {name: np.asarray(value) for name, value in features(variables, batch).items()}
        valid = out.pop("valid")  # the padding rows of the last batch are dropped
        for name, value in out.items():
            value = value[valid]
            parts.setdefault(name, []).append(value.astype(np.float16) if value.ndim == 4 else value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def cached_features(directory: str, fingerprint: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]) -> dict:
    """`compute()`'s arrays, saved as `directory/<hash of fingerprint>.npz` (with the fingerprint beside it as
    JSON) by process 0 and read back on a later call with the same fingerprint: the tower, its weights, the data
    and the feature settings. A damaged cache file is computed again."""
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(directory, f"{key}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as saved:
                return {name: saved[name] for name in saved.files}
        except (OSError, ValueError, EOFError):
            pass  # torn by a crash: computed again below
    arrays = compute()
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            np.savez(f, **arrays)
        os.replace(path + ".tmp", path)  # never a half-written cache
        with open(os.path.join(directory, f"{key}.json"), "w", encoding="utf-8") as f:
            json.dump(fingerprint, f, indent=2, sort_keys=True)
    return arrays
