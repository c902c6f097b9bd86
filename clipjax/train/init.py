"""Starting a model from saved weights (`config.init`): a converted checkpoint or a clipjax training workdir.

A converted checkpoint (written by `python -m clipjax.convert`) is a directory holding `params/` (an orbax
checkpoint of the model's variables: {"params": ..., and e.g. "batch_stats": ...}) and `clipjax_init.json`
({"model": config.model, "normalize": ..., "source": ..., "towers": ["image", "text"] or ["image"]}). A
training workdir holds `config.json` and `checkpoints/<step>/state`; its newest checkpoint's parameters (and
other model variables) are read without the optimizer state.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from clipjax.errors import ConfigError, UserError

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
    init directory.

    Raises:
      ConfigError: `directory` is neither a converted checkpoint nor a training workdir with a checkpoint.
    """
    converted = os.path.join(directory, METADATA_FILE)
    if os.path.isfile(converted):
        with open(converted, encoding="utf-8") as f:
            return json.load(f)
    config_file = os.path.join(directory, "config.json")
    step = _latest_step(directory)
    if os.path.isfile(config_file) and step is not None:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        return {
            "model": config["model"],
            "normalize": config["data"]["normalize"],
            "source": f"{directory} step {step}",
        }
    raise ConfigError(
        f"config.init={directory!r} is neither a converted checkpoint ({METADATA_FILE}) nor a training workdir "
        "with checkpoints; convert one with `python -m clipjax.convert` or point at a pretraining --workdir"
    )


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
    step = _latest_step(directory)
    state_dir = os.path.join(os.path.abspath(directory), "checkpoints", str(step), "state")
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True
            ),
        )
    return {"params": restored["params"], **restored.get("model_state", {})}


def _latest_step(workdir: str) -> int | None:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return max(steps) if steps else None


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
