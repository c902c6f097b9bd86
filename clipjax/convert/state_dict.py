"""PyTorch state dicts as numpy: reading checkpoint files, and taking tensors with a full account of what
was used, left over, missing or of the wrong shape."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from clipjax.errors import ConfigError, UserError


class ConversionError(ConfigError):
    """A state dict that does not fit the model: names every unknown key, missing key and shape mismatch."""


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{name: float32 numpy array} from a `.safetensors` file (read without PyTorch) or a `.pt` / `.pth` /
    `.bin` file (PyTorch needed, weights only; a {"state_dict": ...} wrapper is unwrapped).

    Raises:
      UserError: the file is missing, unreadable, or needs PyTorch that is not installed.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own error types for malformed headers
            raise UserError(f"cannot read {path} as safetensors: {e}") from None
        return {name: np.asarray(value, np.float32) for name, value in tensors.items()}
    try:
        import torch
    except ImportError:
        raise UserError(
            f"reading {path} needs PyTorch (pip install torch); .safetensors files are read without it"
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {str(e).splitlines()[0]}") from None
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    # Checkpoints saved from DistributedDataParallel prefix every key with "module.".
    return {
        name.removeprefix("module."): value.detach().float().numpy()
        for name, value in loaded.items()
        if hasattr(value, "detach")
    }


class StateDictReader:
    """Takes tensors out of a state dict by name, checking shapes, and reports every problem at once.

    `take(name, shape)` returns the tensor (recording a problem instead of raising); `finish()` raises one
    ConversionError naming every unknown key (present, never taken), missing key and shape mismatch.
    """

    def __init__(self, state_dict: Mapping[str, np.ndarray], ignore: tuple[str, ...] = ()) -> None:
        self._tensors = dict(state_dict)
        self._taken: set[str] = set()
        self._missing: list[str] = []
        self._mismatched: list[str] = []
        self._ignore = ignore  # key suffixes that carry no weights (e.g. "num_batches_tracked")

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name`, which must have `shape`; zeros of `shape` (and a recorded problem) otherwise."""
        value = self._tensors.get(name)
        if value is None:
            self._missing.append(name)
            return np.zeros(shape, np.float32)
        self._taken.add(name)
        if tuple(value.shape) != tuple(shape):
            self._mismatched.append(f"{name} {tuple(value.shape)} vs expected {tuple(shape)}")
            return np.zeros(shape, np.float32)
        return np.asarray(value, np.float32)

    def has(self, name: str) -> bool:
        return name in self._tensors

    def finish(self, what: str) -> None:
        """Raises ConversionError if anything did not fit; `what` names the model in the message."""
        unknown = sorted(k for k in self._tensors if k not in self._taken and not k.endswith(self._ignore or ("\0",)))
        problems = []
        for label, names in (("unknown keys", unknown), ("missing keys", self._missing), ("shape", self._mismatched)):
            if names:
                shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                problems.append(f"{label}: {shown}")
        if problems:
            raise ConversionError(f"checkpoint does not fit {what}: " + "; ".join(problems))
