"""Host-to-device prefetch: the next batches read and placed on the devices by a background thread while the
step runs.

Without it the loop reads batch t + 1 and copies it to the devices only after dispatching step t, and
whenever the loop blocks (fetching a logging window's metrics, evaluating, saving) the devices then wait
for that read and copy before the next step can start. With `depth` batches already placed they do not.
"""

from __future__ import annotations

import copy
import queue
import threading
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding

from clipjax.data.skips import SKIPPED
from clipjax.parallel import put_batch


class DevicePrefetcher:
    """Iterates (global batch of jax.Arrays, skip counts) over `iterator`'s host batches, `depth` ahead.

    `iterator` yields this host's numpy batches (a grain iterator: `get_state()` gives its position). The
    thread reads, takes out the skip counts (`clipjax.data.skips.SKIPPED`) and places each batch with
    `put_batch(batch, sharding)`; an exception it meets is raised by `__next__` at the same position.
    Depth 0 does the same in `__next__` itself, without a thread.

    `get_state()` is the position after the batches the loop has taken, not after those read ahead: what a
    checkpoint must record to resume exactly. Call `close()` when done (the thread is a daemon either way).
    """

    def __init__(self, iterator: Iterator[dict[str, np.ndarray]], sharding: NamedSharding, depth: int) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be at least 0, got {depth}")
        self._iterator, self._sharding = iterator, sharding
        self._position = iterator.get_state()  # read before the thread starts: nothing taken yet
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._ended = False
        self._thread = None
        if depth:
            self._thread = threading.Thread(target=self._fill, name="clipjax-device-prefetch", daemon=True)
            self._thread.start()

    def _read(self) -> tuple[dict[str, jax.Array], dict[str, int], Any]:
        """The next batch placed on the devices, its skip counts and the iterator's position after it."""
        host = next(self._iterator)
        skipped = host.pop(SKIPPED, {})
        # A copy: the position must not move with the batches read after it, whatever the iterator hands out.
        return put_batch(host, self._sharding), skipped, copy.deepcopy(self._iterator.get_state())

    def _fill(self) -> None:
        try:
            # The position is read in this thread, the only one that moves the iterator.
            while not self._stop.is_set() and self._put(self._read()):
                pass
        except BaseException as e:  # noqa: BLE001 (StopIteration and errors alike go to the loop, in order)
            self._put(e)

    def _put(self, item: Any) -> bool:
        """Queues `item` unless closed meanwhile; False when closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> tuple[dict[str, jax.Array], dict[str, int]]:
        if self._ended:  # the thread stopped at an exception, already raised
            raise StopIteration
        if self._thread is None:
            batch, skipped, self._position = self._read()
            return batch, skipped
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        batch, skipped, self._position = item
        return batch, skipped

    def get_state(self) -> Any:
        """The wrapped iterator's state after the last batch `__next__` returned."""
        return self._position

    def close(self) -> None:
        """Stops the thread and drops the batches read ahead."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
