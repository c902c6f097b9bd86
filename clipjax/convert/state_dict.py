"""PyTorch state dicts as numpy: reading checkpoint files, and taking tensors with a full account of what
was used, left over, missing or of the wrong shape."""

from __future__ import annotations

import os
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from clipjax.errors import ConfigError, UserError


class ConversionError(ConfigError):
    """A state dict that does not fit the model: names every unknown key, missing key and shape mismatch."""


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{name: float32 numpy array} from a `.safetensors` file (read without PyTorch; float64/32/16, bfloat16,
    float8 e4m3 / e5m2, signed integers, uint8 and bool, so released bf16 weights convert to clipjax's float32
    parameters)
    or a `.pt` / `.pth` / `.bin` file (PyTorch needed, weights only; a {"state_dict": ...} or {"model": ...}
    wrapper is unwrapped).

    Raises:
      UserError: the file is missing, unreadable, or needs PyTorch that is not installed.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
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
    # Training scripts wrap the weights: {"state_dict": ...} (Lightning, open_clip), {"model": ...} (MAE, DeiT).
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    # Checkpoints saved from DistributedDataParallel prefix every key with "module.".
    return {
        name.removeprefix("module."): value.detach().float().numpy()
        for name, value in loaded.items()
        if hasattr(value, "detach")
    }


# safetensors' dtype names and their numpy types: numpy has no bfloat16 or float8, ml_dtypes (which JAX brings)
# does, so `safetensors.numpy` refuses files that `_read_safetensors` reads.
SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """{name: float32 array} of a .safetensors file, whatever numeric dtype each tensor is stored in."""
    import safetensors

    try:
        with open(path, "rb") as f:
            tensors = safetensors.deserialize(f.read())
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise UserError(f"cannot read {path} as safetensors: {e}") from None
    state_dict = {}
    for name, tensor in tensors:
        dtype = SAFETENSORS_DTYPES.get(tensor["dtype"])
        if dtype is None:
            raise UserError(
                f"cannot read {path}: tensor {name} has data type {tensor['dtype']}, which clipjax does not convert"
            )
        array = np.frombuffer(tensor["data"], dtype=dtype).reshape(tensor["shape"])
        state_dict[name] = array.astype(np.float32)
    return state_dict


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
