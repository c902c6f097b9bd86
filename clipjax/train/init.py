"""Starting a model from saved weights (`config.init`): a converted checkpoint or a clipjax training workdir.

A converted checkpoint (written by `python -m clipjax.convert`) is a directory holding `params/` (an orbax
checkpoint of the parameter tree) and `clipjax_init.json` ({"model": config.model, "normalize": ...,
"source": ...}). A training workdir holds `config.json` and `checkpoints/<step>/state`; its newest
checkpoint's parameters are read without the optimizer state.
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


def save_converted(directory: str, params: Any, model: ConfigDict, normalize: str, source: str) -> None:
    """Writes `params` (a tree of arrays) and what they are to `directory` (which must not hold params yet).

    Raises:
      UserError: `directory` already holds converted parameters (never overwritten) or is unwritable.
    """
    target = os.path.join(os.path.abspath(directory), "params")
    if os.path.exists(target):
        raise UserError(f"{directory} already holds converted parameters; choose a new --workdir")
    try:
        os.makedirs(directory, exist_ok=True)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(target, params)
        metadata = {"model": model.to_dict(), "normalize": normalize, "source": source}
        with open(os.path.join(directory, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
    except OSError as e:
        raise UserError(f"cannot write converted parameters to {directory}: {e.strerror or e}") from None


def read_metadata(directory: str) -> dict[str, Any]:
    """{"model": config.model as a dict, "normalize": "clip" | "none", "source": str} of an init directory.

    Raises:
      ConfigError: `directory` is neither a converted checkpoint nor a training workdir with a checkpoint.
    """
    converted = os.path.join(directory, METADATA_FILE)
    if os.path.isfile(converted):
        with open(converted, encoding="utf-8") as f:
            return json.load(f)
    config_file = os.path.join(directory, "config.json")
    if os.path.isfile(config_file) and _latest_step(directory) is not None:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        step = _latest_step(directory)
        return {
            "model": config["model"],
            "normalize": config["data"]["normalize"],
            "source": f"{directory} step {step}",
        }
    raise ConfigError(
        f"config.init={directory!r} is neither a converted checkpoint ({METADATA_FILE}) nor a training workdir "
        "with checkpoints; convert one with `python -m clipjax.convert` or point at a pretraining --workdir"
    )


def check_model(saved: dict[str, Any], model: ConfigDict, directory: str) -> None:
    """Raises ConfigError naming the first config.model key whose value differs from the saved model's
    (compute options such as dtype and remat may differ)."""
    current = model.to_dict()
    for key in sorted(set(saved) | set(current)):
        if key in ("dtype", "remat"):
            continue
        if saved.get(key) != current.get(key):
            raise ConfigError(
                f"config.model.{key}={current.get(key)!r} but the weights in {directory} are for "
                f"{saved.get(key)!r}; set --config.model.{key}={saved.get(key)!r}"
            )


def load_params(directory: str, target: Any) -> Any:
    """The parameters saved in `directory`, laid out as `target` says.

    Args:
      target: the parameter tree as jax.ShapeDtypeStruct with `sharding` set.
    """
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    if os.path.isfile(os.path.join(directory, METADATA_FILE)):
        with ocp.PyTreeCheckpointer() as checkpointer:
            return checkpointer.restore(
                os.path.join(os.path.abspath(directory), "params"),
                args=ocp.args.PyTreeRestore(target, restore_args=restore_args),
            )
    step = _latest_step(directory)
    state_dir = os.path.join(os.path.abspath(directory), "checkpoints", str(step), "state")
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                {"params": target}, restore_args={"params": restore_args}, partial_restore=True
            ),
        )
    return restored["params"]


def _latest_step(workdir: str) -> int | None:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return max(steps) if steps else None


def abstract_params(model: Any, config: ConfigDict, sharding_of: Any) -> Any:
    """The parameter tree of `model` as ShapeDtypeStructs with shardings from `sharding_of(tree)`."""
    size = config.model.image_size
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0),
            jax.numpy.zeros((1, size, size, 3)),
            jax.numpy.zeros((1, config.model.text.context_length), jax.numpy.int32),
        )["params"]
    )
    shardings = sharding_of(shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
