"""timm `fastvit_mci0/1/2` state dicts (MobileCLIP's image encoders) -> variables of clipjax's MCi module.

The result is {"params": ..., "batch_stats": ...} for the train-time module (`reparameterized=False`), float32
numpy arrays: BatchNorm weight/bias become params scale/bias, running_mean/running_var become batch_stats
mean/var (read in eval mode, never updated; see clipjax.models.mci), `num_batches_tracked` is dropped.
`clipjax.models.mci.reparameterize` turns them into the single-conv inference form. Checkpoints already
reparameterized by timm (`reparam_conv` keys) are not accepted: convert the train-time checkpoint.

Names follow timm's with indices joined by "_": "stages.3.blocks.0.token_mixer.qkv.weight" is
params/stages_3/blocks_0/token_mixer/qkv/kernel. Layouts: conv [out, in/groups, kh, kw] -> [kh, kw, in/groups,
out], linear [out, in] -> [in, out], layer scale gamma [C, 1, 1] -> [C].

open_clip's MobileCLIP checkpoints (MobileCLIP-S1/S2, MobileCLIP2-S0) hold this encoder under the prefix
"visual.trunk."; strip it first. Their head.fc (num_classes=512) is the CLIP projection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from clipjax.convert.state_dict import ConversionError, StateDictReader
from clipjax.models.mci import MCi, build_mci

__all__ = ["ConversionError", "fastvit_to_mci"]

# timm containers whose children are numbered ("stem.0", "stages.1", "blocks.2", "proj.0", "conv_kxk.0").
# Only these are joined with "_": timm also has names like "layer_scale_1" that must stay as they are.
_INDEXED = frozenset({"stem", "stages", "blocks", "proj", "conv_kxk"})
_TIMM_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",  # BatchNorm
    ("params", "bias"): "bias",
    ("params", "gamma"): "gamma",  # LayerScale
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _timm_key(collection: str, path: tuple[str, ...]) -> str:
    """Flax path ("stages_3", "blocks_0", "norm", "mean") in `collection` -> "stages.3.blocks.0.norm.running_mean"."""
    parts = []
    for name in path[:-1]:
        base, _, index = name.rpartition("_")
        parts.append(f"{base}.{index}" if base in _INDEXED and index.isdigit() else name)
    return ".".join([*parts, _TIMM_LEAF[(collection, path[-1])]])


def _timm_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The timm shape of a Flax variable of `shape`."""
    if len(shape) == 4:  # conv kernel [kh, kw, in, out] <- [out, in, kh, kw]
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # dense kernel [in, out] <- [out, in]
        return (shape[1], shape[0])
    return (shape[0], 1, 1) if leaf == "gamma" else shape


def _to_flax(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A timm array in Flax layout `shape`."""
    if len(shape) == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if len(shape) == 2:
        return np.ascontiguousarray(value.T)
    return value.reshape(shape)


def fastvit_to_mci(state_dict: Mapping[str, np.ndarray], name: str | MCi, num_classes: int = 512) -> dict[str, Any]:
    """timm fastvit_mciN state dict {key: array} -> {"params", "batch_stats"} (float32 numpy) of the MCi encoder.

    Args:
      state_dict: timm keys (`model.state_dict()`, as numpy arrays or CPU tensors), train-time form.
      name: "mci0", "mci1", "mci2", or a train-time MCi module (e.g. with other depths).
      num_classes: width of head.fc, MobileCLIP's embedding (512); ignored when `name` is a module.

    Raises:
      ConversionError: one line naming every unknown key, missing key and shape mismatch.
    """
    module = name if isinstance(name, MCi) else build_mci(name, num_classes=num_classes)
    if module.reparameterized:
        raise ValueError("fastvit_to_mci converts to the train-time MCi (reparameterized=False)")
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    expected = jax.eval_shape(module.init, jax.random.key(0), images)  # shapes only: nothing is computed
    reader = StateDictReader(state_dict, ignore=("num_batches_tracked",))
    variables = {}
    for collection in ("params", "batch_stats"):
        flat = {}
        for path, leaf in traverse_util.flatten_dict(expected[collection]).items():
            value = reader.take(_timm_key(collection, path), _timm_shape(path[-1], leaf.shape))
            flat[path] = _to_flax(value, leaf.shape)
        variables[collection] = traverse_util.unflatten_dict(flat)
    reader.finish(f"timm fastvit_{name}" if isinstance(name, str) else f"MCi{module.depths}x{module.widths}")
    return variables
