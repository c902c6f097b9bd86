"""Starting a model from saved weights (`config.init`): a converted checkpoint or a clipjax training workdir.

A converted checkpoint (written by `python -m clipjax.convert`) is a directory holding `params/` (an orbax
checkpoint of the model's variables: {"params": ..., and e.g. "batch_stats": ...}) and `clipjax_init.json`
({"model": config.model, "normalize": ..., "source": ..., "towers": ["image", "text"] or ["image"]}). A
training workdir holds `config.json`, whose `checkpoint_dir` (or else `<workdir>/checkpoints`) holds
`<step>/state`; the checkpoint directory itself is accepted too. The newest checkpoint's parameters (and
other model variables) are read without the optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from clipjax.errors import ConfigError, UserError
from clipjax.models.scan_layout import match_block_layout
from clipjax.train.checkpoint import save_whole_arrays_on_cpu

METADATA_FILE = "clipjax_init.json"


def save_converted(
    directory: str,
    variables: Any,
    model: ConfigDict,
    normalize: str,
    source: str,
    towers: tuple[str, ...] = ("image", "text"),
) -> None:
    """Writes `variables` ({"params": tree of arrays, ...}) and what they are to `directory` (which must not
    hold converted variables yet).

    Raises:
      UserError: `directory` already holds converted parameters (never overwritten) or is unwritable.
    """
    target = os.path.join(os.path.abspath(directory), "params")
    if os.path.exists(target):
        raise UserError(f"{directory} already holds converted parameters; choose a new --workdir")
    save_whole_arrays_on_cpu()
    try:
        os.makedirs(directory, exist_ok=True)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(target, variables)
        metadata = {"model": model.to_dict(), "normalize": normalize, "source": source, "towers": list(towers)}
        with open(os.path.join(directory, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
    except OSError as e:
        raise UserError(f"cannot write converted parameters to {directory}: {e.strerror or e}") from None


def read_metadata(directory: str) -> dict[str, Any]:
    """{"model": config.model as a dict, "normalize": "clip" | "none", "source": str, "towers": [...]} of an
    init directory: a converted checkpoint, a training workdir or a training run's checkpoint directory.

    Raises:
      ConfigError: `directory` is none of these, or the run it names has no complete checkpoint.
    """
    converted = os.path.join(directory, METADATA_FILE)
    if os.path.isfile(converted):
        with open(converted, encoding="utf-8") as f:
            return json.load(f)
    run = training_run(directory)
    return {
        "model": run.config["model"],
        "normalize": run.config["data"]["normalize"],
        "source": f"{directory} step {run.step}",
    }


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """A training run's newest complete checkpoint: its directory of steps (local or a URL orbax reads),
    the step, and the run's config (a dict)."""

    checkpoints: str
    step: int
    config: dict[str, Any]

    @property
    def state_path(self) -> str:
        return os.path.join(self.checkpoints, str(self.step), "state")


def training_run(directory: str) -> TrainingRun:
    """The run `directory` names: a workdir (its config.json says where the checkpoints went:
    `config.checkpoint_dir`, e.g. gs://..., or <workdir>/checkpoints), or a checkpoint directory itself (the
    run's config is read from the newest checkpoint). Steps are found by orbax, so a save still in progress
    or cut short is never taken.

    Raises:
      ConfigError: no complete checkpoint in the directory the run names, or not a run at all.
    """
    config_file = os.path.join(directory, "config.json")
    config = None
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        checkpoints = config.get("checkpoint_dir") or os.path.join(directory, "checkpoints")
    else:
        checkpoints = directory
    if "://" not in checkpoints:
        checkpoints = os.path.abspath(checkpoints)
    step = _latest_step(checkpoints)
    if step is None:
        where = f"; its config.json names {checkpoints}" if config is not None else ""
        raise ConfigError(
            f"config.init={directory!r} is neither a converted checkpoint ({METADATA_FILE}) nor a training workdir "
            f"or checkpoint directory with a complete checkpoint{where}; convert one with `python -m clipjax.convert` "
            "or point at a pretraining --workdir"
        )
    if config is None:
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
            config = checkpointer.restore(os.path.join(checkpoints, str(step), "loop"))["config"]
    return TrainingRun(checkpoints, step, config)


def load_variables(directory: str, target: Any) -> dict[str, Any]:
    """The model variables saved in `directory` ({"params": ..., other collections}), laid out as `target`
    (the same tree as jax.ShapeDtypeStruct with `sharding` set) says."""
    if os.path.isfile(os.path.join(directory, METADATA_FILE)):
        with ocp.PyTreeCheckpointer() as checkpointer:
            return checkpointer.restore(
                os.path.join(os.path.abspath(directory), "params"),
                args=ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
            )
    # A training checkpoint's state holds the same variables as params + model_state, beside optimizer state.
    wanted = {"params": target["params"], "model_state": {k: v for k, v in target.items() if k != "params"}}
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            training_run(directory).state_path,
            args=ocp.args.PyTreeRestore(
                wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True
            ),
        )
    return {"params": restored["params"], **restored.get("model_state", {})}


def _latest_step(checkpoints: str) -> int | None:
    """The newest finalized step in a directory of orbax steps (None if there is none, or no directory)."""
    try:
        found = ocp.path.step.latest_step_metadata(checkpoints, ocp.path.step.standard_name_format())
    except (FileNotFoundError, NotADirectoryError):
        return None
    return None if found is None else found.step


def abstract_variables(model: Any, config: ConfigDict, sharding_of: Any) -> dict[str, Any]:
    """The variables of `model` ({"params": ..., ...}) as ShapeDtypeStructs with shardings from `sharding_of(tree)`."""
    size = config.model.image_size
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0),
            jax.numpy.zeros((1, size, size, 3)),
            jax.numpy.zeros((1, config.model.text.context_length), jax.numpy.int32),
        )
    )
    shardings = sharding_of(shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def read_saved_variables(directory: str) -> dict[str, Any]:
    """Every model variable saved in `directory` (a converted checkpoint or a training workdir's newest
    checkpoint) as host numpy arrays, {"params": ..., other collections}, without reading optimizer state.

    Raises:
      ConfigError: `directory` holds neither (see `training_run`).
    """
    if os.path.isfile(os.path.join(directory, METADATA_FILE)):
        path, collections = os.path.join(os.path.abspath(directory), "params"), None
    else:
        path, collections = training_run(directory).state_path, ("params", "model_state")
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        wanted = {key: value for key, value in tree.items() if collections is None or key in collections}
        wanted = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        restored = checkpointer.restore(
            path, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)
        )
    if collections is None:
        return dict(restored)
    return {"params": restored["params"], **(restored.get("model_state") or {})}


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


def replace_saved(directory: str, variables: Any, model: ConfigDict, normalize: str, source: str, **extra: Any) -> None:
    """Writes `variables` as a converted-style checkpoint at `directory`, replacing what was there only once
    the new one is complete (written beside it, then swapped in), so a crash leaves one whole copy.

    A crash between the two renames leaves `directory`.old only: the next call moves it back first.
    `extra` entries (e.g. step, metric, value, num_classes) are stored in its metadata; the towers are
    recorded as ["image"] so that `config.init` can start a later finetuning from it.
    """
    directory = os.path.abspath(directory)
    fresh, stale = directory + ".new", directory + ".old"
    primary = jax.process_index() == 0  # every host writes its shards; one moves the files

    def barrier(name: str) -> None:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"clipjax replace_saved {name}")

    if primary:
        if not os.path.exists(directory) and os.path.exists(stale):
            os.replace(stale, directory)  # a crash between the two renames below: the old copy is the whole one
        for leftover in (fresh, stale):
            if os.path.exists(leftover):
                shutil.rmtree(leftover)
    barrier("cleared")
    save_converted(fresh, variables, model, normalize, source, towers=("image",))
    if primary:
        metadata_path = os.path.join(fresh, METADATA_FILE)
        with open(metadata_path, encoding="utf-8") as f:
            metadata = json.load(f)
        with open(metadata_path, "w", encoding="utf-8") as f:
            json.dump({**metadata, **extra}, f, indent=2, sort_keys=True)
        if os.path.exists(directory):
            os.replace(directory, stale)
        os.replace(fresh, directory)
        if os.path.exists(stale):
            shutil.rmtree(stale)
    barrier("replaced")
