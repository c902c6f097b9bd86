""".npz bytes read from many threads: numpy's header parsing (ast.literal_eval, which CPython 3.11 can fail
spuriously when threads build ASTs at once) never runs in two threads together under read_npz."""

import ast
import io
import threading
import time

import numpy as np
import pytest

from clipjax.data.npz import read_npz


def most_concurrent_parses(monkeypatch, load) -> int:
    """Runs `load()` in 8 threads, 20 times each; the most header parses that were ever in flight at once."""
    real, guard = ast.literal_eval, threading.Lock()
    state = {"inside": 0, "most": 0}

    def watched(text):
        with guard:
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
        time.sleep(0.0005)  # a window in which another thread could enter
        try:
            return real(text)
        finally:
            with guard:
                state["inside"] -= 1

    monkeypatch.setattr(ast, "literal_eval", watched)
    threads = [threading.Thread(target=lambda: [load() for _ in range(20)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return state["most"]


def test_parses_are_serialised_across_threads_and_return_every_array(monkeypatch):
    buffer = io.BytesIO()
    np.savez(buffer, image_emb=np.arange(12, dtype=np.float16).reshape(3, 4), text_emb=np.ones((6, 4)))
    raw = buffer.getvalue()

    def bare():
        with np.load(io.BytesIO(raw)) as arrays:
            return {name: arrays[name] for name in arrays.files}

    assert most_concurrent_parses(monkeypatch, bare) > 1  # the harness sees overlapping parses ...
    assert most_concurrent_parses(monkeypatch, lambda: read_npz(raw)) == 1  # ... and read_npz has none
    arrays = read_npz(raw)
    assert sorted(arrays) == ["image_emb", "text_emb"]
    np.testing.assert_array_equal(arrays["image_emb"], np.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match="BadZipFile"):
        read_npz(b"PK\x03\x04 not really a zip")


def test_any_damage_to_the_bytes_is_one_value_error():
    """Empty, cut and overwritten archives (stored and compressed) raise ValueError or read whole: numpy and
    zipfile raise EOFError, zlib.error, NotImplementedError and others, which would escape a data thread."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image_emb=np.ones((3, 8), np.float32), text_emb=np.zeros((6, 8), np.float16))
    raw, rng = buffer.getvalue(), np.random.default_rng(0)
    with pytest.raises(ValueError, match="EOFError"):
        read_npz(b"")
    raised = 0
    for _ in range(400):
        damaged = bytearray(raw[: rng.integers(len(raw))] if rng.random() < 0.3 else raw)
        for _ in range(rng.integers(1, 8)):
            damaged[rng.integers(len(damaged))] = rng.integers(256)
        try:
            read_npz(bytes(damaged))
        except ValueError:
            raised += 1
    assert raised > 300
