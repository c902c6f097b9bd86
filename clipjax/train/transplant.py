"""Copying a saved model's tower into a new model's variables (finetuning's start), with a report of what was
loaded, resized, newly initialised and left unused."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from clipjax.errors import ConfigError
from clipjax.models.scan_layout import match_block_layout


@dataclasses.dataclass
class InitReport:
    """What `transplant` did: paths ("collection/a/b") loaded, loaded after resizing (ViT position
    embeddings), newly initialised (in the model, not in the checkpoint) and skipped (saved, unused)."""

    loaded: list[str]
    resized: list[str]
    initialised: list[str]
    skipped: list[str]

    def summary(self, source: str) -> str:
        """A few lines for the log: counts, the new and resized arrays, and the skipped ones grouped."""
        groups: dict[str, int] = {}
        for path in self.skipped:
            top = "/".join(path.split("/")[:2])
            groups[top] = groups.get(top, 0) + 1
        skipped = ", ".join(f"{top} ({n})" for top, n in sorted(groups.items())) or "none"
        return "\n".join(
            [
                f"init from {source}: {len(self.loaded)} arrays loaded ({len(self.resized)} resized), "
                f"{len(self.initialised)} newly initialised, {len(self.skipped)} saved arrays unused",
                f"  newly initialised: {', '.join(self.initialised) or 'none'}",
                f"  resized: {', '.join(self.resized) or 'none'}",
                f"  unused: {skipped}",
            ]
        )


def transplant(
    target: dict[str, Any], saved: dict[str, Any], prefix: str = "image", also: tuple[str, ...] = ()
) -> tuple[dict[str, Any], InitReport]:
    """Copies the saved sub-tree `prefix` (e.g. a CLIP's image tower) into a new model's variables.

    Args:
      target: the new model's variables ({"params": ..., collections}): arrays, or anything with shape and
        dtype; leaves that are not copied are returned as they are.
      saved: `read_saved_variables(...)`.
      prefix: the sub-tree (by its top-level name inside each collection) to copy; everything else in the
        target keeps its initialisation.
      also: more top-level sub-trees to copy where the checkpoint has them (e.g. a classifier's "fc_norm"
        and "head" when continuing a finetuning with the same classes).

    Returns:
      (variables like `target` with the copied arrays as numpy arrays of the target's dtype, the report). A ViT position
      embedding of another grid size is resized bicubically (its CLS row kept), as for finetuning at a new
      resolution.

    Raises:
      ConfigError: a copied array's shape differs from the saved one in any other way, or nothing at all
        could be copied (the checkpoint holds another architecture).
    """
    saved = match_block_layout(saved, target)  # a scanned checkpoint into unscanned blocks, or the other way
    saved_flat = {_path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    used: set[str] = set()
    report = InitReport([], [], [], [])

    def take(path_tuple: tuple, value: Any) -> Any:
        path = _path(path_tuple)
        inside = len(path.split("/")) > 1 and path.split("/")[1] in (prefix, *also)
        if not inside or path not in saved_flat:
            report.initialised.append(path)
            return value
        array, used_path = saved_flat[path], path
        used.add(used_path)
        if array.shape != tuple(value.shape):
            if path.endswith("/pos_embed") and array.ndim == 2 and value.ndim == 2 and array.shape[1] == value.shape[1]:
                array = _resize_position_embedding(array, value.shape[0])
                report.resized.append(path)
            else:
                raise ConfigError(
                    f"config.init: {path} has shape {array.shape} in the checkpoint but {tuple(value.shape)} in "
                    "this model; finetune the architecture the checkpoint was trained with"
                )
        report.loaded.append(path)
        return array.astype(value.dtype)

    variables = jax.tree_util.tree_map_with_path(take, target)
    report.skipped = sorted(set(saved_flat) - used)
    if not report.loaded:
        raise ConfigError(f"config.init: the checkpoint holds no {prefix!r} arrays that this model has")
    return variables, report


def _path(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _resize_position_embedding(table: np.ndarray, tokens: int) -> np.ndarray:
    """float [(1 +) g * g, w] -> [tokens, w]: the g x g grid resized bicubically, a CLS row (OpenAI's layout:
    1 + g * g rows; timm's has none) kept."""
    cls_rows = 0 if math.isqrt(table.shape[0]) ** 2 == table.shape[0] else 1
    old, new = math.isqrt(table.shape[0] - cls_rows), math.isqrt(tokens - cls_rows)
    if old * old != table.shape[0] - cls_rows or new * new != tokens - cls_rows:
        raise ConfigError(f"config.init: cannot resize a position embedding of {table.shape[0]} rows to {tokens}")
    grid = table[cls_rows:].reshape(old, old, -1).astype(np.float32)
    resized = np.asarray(jax.image.resize(grid, (new, new, grid.shape[-1]), "bicubic")).reshape(new * new, -1)
    return np.concatenate([table[:cls_rows].astype(np.float32), resized], axis=0)
