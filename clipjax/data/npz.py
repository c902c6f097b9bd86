"""Reading .npz files from many threads at once (grain's reading threads, the shard indexer's pool)."""

from __future__ import annotations

import io
import threading
import zipfile
import zlib

import numpy as np

# numpy parses each array's header with ast.literal_eval, and CPython 3.11's AST construction can fail with a
# spurious "SystemError: AST constructor recursion depth mismatch" when threads build ASTs at once
# (python/cpython#106905; seen here killing a distillation run's data threads). Parsing is microseconds.
_PARSE_LOCK = threading.Lock()


# What numpy and zipfile raise on damaged bytes besides ValueError (fuzzed: cut and overwritten archives, stored
# and compressed): an empty or cut file, a damaged zip directory or deflate stream, an unknown compression
# method in a damaged header.
_DAMAGED = (EOFError, OSError, KeyError, TypeError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error)


def read_npz(raw: bytes) -> dict[str, np.ndarray]:
    """Every array of an .npz file's bytes, parsed under one process-wide lock (no pickles).

    Raises:
      ValueError: the bytes are not a whole .npz of plain arrays (empty, cut, damaged, pickled objects).
    """
    try:
        with _PARSE_LOCK, np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except _DAMAGED as e:
        raise ValueError(f"not a readable .npz ({type(e).__name__}: {e})") from None
