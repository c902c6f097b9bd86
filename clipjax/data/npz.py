"""Reading .npz files from many threads at once (grain's reading threads, the shard indexer's pool)."""

from __future__ import annotations

import io
import threading

import numpy as np

# numpy parses each array's header with ast.literal_eval, and CPython 3.11's AST construction can fail with a
# spurious "SystemError: AST constructor recursion depth mismatch" when threads build ASTs at once
# (python/cpython#106905; seen here killing a distillation run's data threads). Parsing is microseconds.
_PARSE_LOCK = threading.Lock()


def read_npz(raw: bytes) -> dict[str, np.ndarray]:
    """Every array of an .npz file's bytes, parsed under one process-wide lock (no pickles).

    Raises:
      OSError, ValueError, zipfile.BadZipFile: the bytes are not an .npz of plain arrays.
    """
    with _PARSE_LOCK, np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}
