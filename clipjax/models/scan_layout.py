"""The two parameter layouts of a transformer encoder (clipjax.models.layers.Encoder) and the conversion
between them.

Unscanned, an encoder's parameters are one sub-tree per block, {"block_0": {...}, ..., "block_{L-1}": {...}};
scanned (`scan=True`), one sub-tree {"blocks": {...}} whose arrays carry a leading [L] axis, block i at
index i. Checkpoints keep whichever layout their run used; loaders convert to the layout of the model
they fill, so a scanned pretraining feeds an unscanned finetuning and the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

SCANNED_BLOCKS = "blocks"
_BLOCK = re.compile(r"block_(\d+)")


def in_scanned_blocks(path: tuple) -> bool:
    """Whether the pytree key path `path` leads into a scanned encoder's stacked arrays (.../encoder/blocks/...):
    rules that read a parameter's rank or shape (weight decay, FSDP) apply to one block, the leading axis off."""
    return f"/encoder/{SCANNED_BLOCKS}/" in f"/{jax.tree_util.keystr(path, simple=True, separator='/')}/"


def unscanned_depth(node: Any) -> int:
    """L if `node` is an unscanned encoder's tree (exactly the keys block_0 .. block_{L-1}, L >= 1), else 0."""
    if not isinstance(node, Mapping) or not node:
        return 0
    found = sorted(int(m.group(1)) if (m := _BLOCK.fullmatch(str(k))) else -1 for k in node)
    return len(found) if found == list(range(len(found))) else 0


def is_scanned(node: Any) -> bool:
    """Whether `node` is a scanned encoder's tree: the single key "blocks"."""
    return isinstance(node, Mapping) and list(node) == [SCANNED_BLOCKS]


def stack_blocks(node: Mapping) -> dict[str, Any]:
    """An unscanned encoder's tree -> the scanned one: each array [...] becomes [L, ...] (numpy)."""
    depth = unscanned_depth(node)
    if not depth:
        raise ValueError(f"not an unscanned encoder (keys block_0 .. block_N): {sorted(map(str, node))}")
    blocks = [node[f"block_{i}"] for i in range(depth)]
    return {SCANNED_BLOCKS: jax.tree.map(lambda *leaves: np.stack([np.asarray(a) for a in leaves]), *blocks)}


def unstack_blocks(node: Mapping) -> dict[str, Any]:
    """A scanned encoder's tree -> the unscanned one: each array [L, ...] becomes L arrays [...] (numpy)."""
    if not is_scanned(node):
        raise ValueError(f"not a scanned encoder (the single key {SCANNED_BLOCKS!r}): {sorted(map(str, node))}")
    depth = jax.tree.leaves(node[SCANNED_BLOCKS])[0].shape[0]
    return {f"block_{i}": jax.tree.map(lambda a, i=i: np.asarray(a)[i], node[SCANNED_BLOCKS]) for i in range(depth)}


def match_block_layout(saved: Any, target: Any) -> Any:
    """`saved` (nested dicts of arrays) with every encoder converted to the layout `target` has at the same
    path (target's leaves are only read for structure). Other sub-trees are returned as they are."""
    if not isinstance(saved, Mapping) or not isinstance(target, Mapping):
        return saved
    if is_scanned(target) and unscanned_depth(saved):
        return stack_blocks(saved)
    if unscanned_depth(target) and is_scanned(saved):
        return unstack_blocks(saved)
    return {key: match_block_layout(value, target[key]) if key in target else value for key, value in saved.items()}
