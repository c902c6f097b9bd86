"""Layer-wise learning-rate decay (BEiT / MAE finetuning): each parameter's layer index and its lr scale.

The image tower is found under the top-level key "image" of a parameter tree: a classifier's
{"image": tower, "head": ..., "fc_norm": ...} or a CLIP's {"image": tower, "text": ..., "logit_scale": ...}.
Layers are numbered 0 (the stem: everything before the first block), 1..L (the blocks in order) and L + 1
(everything after the last block: the tower's final norm / conv and projection, and every parameter outside
"image", such as a classifier head or the text tower). Layer i's learning rate is lr * decay ** (L + 1 - i),
so the head learns at the full rate and each earlier layer at `decay` times the rate of the next.

Two tower kinds are recognised from their parameter names (depths are read from the tree, never assumed):

  ViT (clipjax.models.vit.VisionTransformer), L = number of encoder blocks:
    stem_conv_i, stem_norm_i, patch_embed, cls_token, pos_embed, ln_pre   -> 0
    encoder/block_i                                                       -> i + 1
    encoder/blocks (scanned: arrays stacked over blocks on a leading axis) -> [1, ..., L] along that axis
    ln_post, proj, anything else                                          -> L + 1

  MCi (clipjax.models.mci.MCi), L = number of blocks over all stages:
    stem_i                                                                -> 0
    stages_s/blocks_j                                                     -> (blocks in stages before s) + j + 1
    stages_s/<other> (downsample, pos_emb: run before the stage's blocks) -> that stage's first block's index
    final_conv, head, anything else                                       -> L + 1
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from clipjax.models.scan_layout import SCANNED_BLOCKS, is_scanned

# Parameters of a ViT that act on the input before the first transformer block.
_VIT_STEM = ("patch_embed", "cls_token", "pos_embed", "ln_pre")
_VIT_STEM_PREFIXES = ("stem_conv_", "stem_norm_")
_VIT_BLOCK = re.compile(r"block_(\d+)")
_MCI_STAGE = re.compile(r"stages_(\d+)")
_MCI_BLOCK = re.compile(r"blocks_(\d+)")
_MCI_STEM = re.compile(r"stem_\d+")


def _key_name(key: Any) -> str:
    """The name of one step of a pytree path (DictKey, GetAttrKey or SequenceKey) as a string."""
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def _indices(names: Any, pattern: re.Pattern, where: str) -> list[int]:
    """The sorted integers i of the names that fully match `pattern`; they must be 0..n-1 (n may be 0)."""
    found = sorted(int(m.group(1)) for name in names if (m := pattern.fullmatch(str(name))))
    if found != list(range(len(found))):
        raise ValueError(f"{where} are numbered {found}, expected 0..{len(found) - 1}")
    return found


def _vit_layer(path: tuple[str, ...], depth: int, ndim: int) -> int | np.ndarray:
    """Layer index of the parameter (of rank `ndim`) at `path` (names below "image") of a ViT with `depth`
    blocks; for a scanned encoder's stacked parameter, the blocks' indices [depth, 1, ...] (int, rank ndim)."""
    top = path[0]
    if top in _VIT_STEM or top.startswith(_VIT_STEM_PREFIXES):
        return 0
    if top == "encoder" and len(path) > 1 and (m := _VIT_BLOCK.fullmatch(path[1])):
        return int(m.group(1)) + 1
    if top == "encoder" and len(path) > 1 and path[1] == SCANNED_BLOCKS:
        return np.arange(1, depth + 1).reshape((depth,) + (1,) * (ndim - 1))
    return depth + 1


def _mci_layer(path: tuple[str, ...], offsets: dict[int, int], depth: int) -> int:
    """Layer index of the parameter at `path` (names below "image") of an MCi with `depth` blocks in all;
    offsets[s] is the number of blocks in the stages before stage s."""
    top = path[0]
    if _MCI_STEM.fullmatch(top):
        return 0
    if m := _MCI_STAGE.fullmatch(top):
        offset = offsets[int(m.group(1))]
        if len(path) > 1 and (b := _MCI_BLOCK.fullmatch(path[1])):
            return offset + int(b.group(1)) + 1
        # Downsampling and positional encoding run before the stage's blocks: they share its first block's rate.
        return offset + 1
    return depth + 1


def layer_ids(params: Any) -> tuple[Any, int]:
    """Layer index of every parameter, for layer-wise lr decay (numbering in the module docstring).

    Args:
      params: a parameter pytree (nested dicts / FrozenDicts; leaves may be arrays or ShapeDtypeStructs,
        only the paths are read) with the image tower under the top-level key "image".

    Returns:
      (a pytree with the structure of `params` whose leaves are Python ints in [0, L + 1], L), where L is
      the number of blocks of the image tower; the head's (and everything outside "image") index is L + 1.
      A scanned encoder's stacked leaves get an int array [L, 1, ...] (their rank) of 1..L instead.

    Raises:
      ValueError: no ViT or MCi tower is recognisable under "image".
    """
    image = params.get("image") if isinstance(params, Mapping) else None
    if not isinstance(image, Mapping):
        keys = sorted(map(str, params)) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"layer decay needs the image tower under the key 'image'; the parameters have {keys}")
    encoder = image.get("encoder")
    blocks = _indices(encoder, _VIT_BLOCK, "the ViT's encoder blocks") if isinstance(encoder, Mapping) else []
    if is_scanned(encoder):
        blocks = list(range(jax.tree.leaves(encoder)[0].shape[0]))
    if blocks:
        depth = len(blocks)

        def tower_layer(path: tuple[str, ...], ndim: int) -> int | np.ndarray:
            return _vit_layer(path, depth, ndim)

    elif stages := _indices(image, _MCI_STAGE, "the MCi stages"):
        counts = [len(_indices(image[f"stages_{s}"], _MCI_BLOCK, f"the blocks of stages_{s}")) for s in stages]
        offsets = {s: sum(counts[:s]) for s in stages}
        depth = sum(counts)

        def tower_layer(path: tuple[str, ...], ndim: int) -> int:
            return _mci_layer(path, offsets, depth)

    else:
        raise ValueError(
            "layer decay found no ViT (encoder/block_i) or MCi (stages_i) tower under 'image'; its keys are "
            f"{sorted(map(str, image))}"
        )

    def leaf_layer(path: tuple, leaf: Any) -> int | np.ndarray:
        names = tuple(_key_name(key) for key in path)
        return tower_layer(names[1:], len(leaf.shape)) if names[0] == "image" and len(names) > 1 else depth + 1

    return jax.tree_util.tree_map_with_path(leaf_layer, params), depth


def layer_lr_scales(params: Any, decay: float) -> Any:
    """Learning-rate multiplier of every parameter: decay ** (L + 1 - layer_id), 1 for the head.

    Args:
      params: as for `layer_ids` (only the tree's paths and leaves' ranks are read).
      decay: the per-layer factor, e.g. 0.65 (BEiT/MAE ViT-B); 1.0 gives all ones.

    Returns:
      A pytree with the structure of `params` of numpy float32 scalars (compile-time constants under jit);
      a scanned encoder's stacked leaves get float32 arrays [L, 1, ...] that broadcast over their blocks.
    """
    ids, depth = layer_ids(params)
    # The power in float64, rounded to float32 once.
    return jax.tree.map(lambda i: np.float32(decay ** (depth + 1 - np.asarray(i))), ids)
