"""The generic batcher every task's training data goes through: from a random-access source to this host's
batches of usable examples, with a checkpointable iterator and exact counts of the records skipped."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import absl.flags
import grain
import numpy as np
from ml_collections import ConfigDict

from clipjax.data.skips import SKIPPED
from clipjax.data.subsets import training_subset
from clipjax.errors import UserError

# A run whose data yields nothing usable must stop with a reason instead of reading forever.
MAX_SKIPPED_IN_A_ROW = 10_000
# The form of the positions `host_batches` iterators save. 2: the window being read and the rows of it handed
# out (1, before: the element stream's position); a position of another form cannot be restored, and the loop
# then continues at the first record not yet read, as after a change of the batch size.
POSITION_FORMAT = 2


def host_stream(
    source: Any,
    transform: Callable[[Any, np.random.Generator], Any],
    *,
    seed: int,
    process_index: int,
    process_count: int,
    start_sample: int = 0,
) -> grain.MapDataset:
    """This host's endless stream of `transform(record, rng)` elements (see `host_batches`): a fresh seeded
    permutation of `source` every epoch, every `process_count`-th element from global element `start_sample`
    on, each transformed with a generator seeded by its global index."""
    # The first element of this host's share at or after global element `start_sample`.
    first_local = -((process_index - start_sample) // process_count)
    return (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)  # a fresh permutation every epoch
        .random_map(transform, seed=seed)
        .slice(slice(process_index, None, process_count))
        .slice(slice(first_local, None))
    )


def host_batches(
    source: Any,
    transform: Callable[[Any, np.random.Generator], Any],
    *,
    seed: int,
    batch_size: int,
    process_index: int,
    process_count: int,
    start_sample: int = 0,
    num_threads: int = 2,
    num_workers: int = 0,
) -> grain.IterDataset:
    """Endless, shuffled batches of `transform(record, rng)` for this host: the pipeline every task uses.

    The global order is a fresh permutation of `source` every epoch, fixed by `seed`. `transform` gets a
    generator seeded by the element's global index, so an element is the same example whatever the batch
    size or host count; it may return `{"__skipped__": reason}` for an unusable record. Each host reads
    every `process_count`-th element of the global order, so hosts never overlap, from global element
    `start_sample` on, decodes in `num_workers` processes (threads when 0), and yields batches of
    `batch_size / process_count` usable examples: the next ones of its stream, whatever the number of
    workers; each batch carries `"__skipped__": {reason: count}` for the records dropped before its rows.
    Saving the iterator's state and restoring it continues with exactly the batches an uninterrupted run
    would see.

    The workers stack their examples into batches (`stack_usable`) of a fixed window of the stream, so that
    an image crosses to the training process as part of one array rather than on its own (twice the images
    per second; benchmarks/pipeline_batching.py), and the training process only repacks the windows' usable
    rows into full batches (`RepackedBatches`). grain's workers take the windows round robin (worker i the
    windows i, i + W, ...), so the batches do not depend on the worker count.
    """
    per_host_batch = batch_size // process_count
    windows = (
        host_stream(
            source,
            transform,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            start_sample=start_sample,
        )
        # Consecutive elements of this host's stream, skipped ones included. The stream is endless:
        # drop_remainder keeps the window count an integer division (a float one overflows len()).
        .batch(per_host_batch, drop_remainder=True, batch_fn=stack_usable)
        .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2))
    )
    if num_workers > 0:
        # grain's workers read absl flags (with their defaults); clipjax parses its own command line.
        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()
        windows = windows.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return RepackedBatches(windows, per_host_batch, records_per_epoch=len(source))


def stack_usable(elements: list[dict[str, Any]]) -> dict[str, Any]:
    """A worker batch: the usable examples stacked, and each skipped one's reason and position.

    Returns {"rows": {key: [n, ...]}, "count": n, "skips": ((p, reason), ...)}, where a skip at position p
    came after the batch's first p usable examples. The skips stay Python objects: grain moves every array
    (however small) between processes through a shared-memory block of its own.
    """
    usable = [element for element in elements if SKIPPED not in element]
    skips: list[tuple[int, str]] = []
    seen = 0
    for element in elements:
        if SKIPPED in element:
            skips.append((seen, element[SKIPPED]))
        else:
            seen += 1
    rows = {key: np.stack([element[key] for element in usable]) for key in usable[0]} if usable else {}
    return {"rows": rows, "count": len(usable), "skips": tuple(skips)}


class RepackedBatches(grain.IterDataset):
    """Exactly `batch_size` usable rows per batch from consecutive `stack_usable` windows.

    Each batch carries `"__skipped__": {reason: count}` for the skipped records before its rows (after the
    previous batch's last row); the counts are exact however the decoding was spread. The position saved is
    the window being read (the parent's state before it) and the rows of it already handed out. A run of
    MAX_SKIPPED_IN_A_ROW unusable records in a row stops the run, counted when its last window arrives.
    `records_per_epoch` (the source's length, when known) is what the loop divides the records read by to log
    data/epochs.
    """

    def __init__(self, parent: grain.IterDataset, batch_size: int, records_per_epoch: int | None = None) -> None:
        super().__init__(parent)
        self._batch_size = batch_size
        self.records_per_epoch = records_per_epoch

    def __iter__(self) -> grain.DatasetIterator:
        return _RepackIterator(self._parent.__iter__(), self._batch_size)


class _RepackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int) -> None:
        super().__init__(parent)
        self._batch_size = batch_size
        self._held: dict[str, Any] | None = None  # the worker batch rows are being taken from
        self._held_state: dict[str, Any] | None = None  # the parent's state before it
        self._offset = 0  # its rows already in earlier batches
        self._next_skip = 0  # its skips already counted
        self._in_a_row = 0  # skipped records since the last usable one, up to the held batch's end
        self._in_a_row_before = 0  # ... up to its start

    def _fetch(self) -> dict[str, Any]:
        self._held_state = self._parent.get_state()
        self._in_a_row_before = self._in_a_row
        held = next(self._parent)
        count, skips = held["count"], held["skips"]
        if skips:
            runs = Counter(position for position, _ in skips)  # skips between the same two usable rows
            longest = max(self._in_a_row + runs.get(0, 0), max(runs.values()))
            self._in_a_row = runs.get(count, 0) + (self._in_a_row if count == 0 else 0)
            if max(longest, self._in_a_row) >= MAX_SKIPPED_IN_A_ROW:
                reasons = ", ".join(f"{r}: {c}" for r, c in sorted(Counter(r for _, r in skips).items()))
                raise UserError(
                    f"the last {max(longest, self._in_a_row)} samples were all unusable ({reasons}); check "
                    "config.data (path, synthetic_path, captions)"
                )
        elif count:
            self._in_a_row = 0
        self._held, self._offset, self._next_skip = held, 0, 0
        return held

    def __next__(self) -> dict[str, Any]:
        need = self._batch_size
        pieces: list[dict[str, np.ndarray]] = []
        skip_counts: dict[str, int] = {}
        while True:
            held = self._held if self._held is not None else self._fetch()
            count, skips, offset = held["count"], held["skips"], self._offset
            # Skips at positions before `end` precede a row of this batch; the others wait for later rows.
            end = min(count, offset + need)
            limit = end if count - offset >= need else count + 1
            while self._next_skip < len(skips) and skips[self._next_skip][0] < limit:
                reason = skips[self._next_skip][1]
                skip_counts[reason] = skip_counts.get(reason, 0) + 1
                self._next_skip += 1
            if end > offset:
                rows = held["rows"]
                pieces.append(rows if (offset, end) == (0, count) else {k: v[offset:end] for k, v in rows.items()})
            need -= end - offset
            self._offset = end
            if end == count and self._next_skip == len(skips):
                self._held = None
            if need == 0:
                break
        # A whole worker batch (or one slice of it) passes through without a copy.
        batch = pieces[0] if len(pieces) == 1 else {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        return {**batch, SKIPPED: skip_counts}

    def get_state(self) -> dict[str, Any]:
        if self._held is None:
            return {"parent": self._parent.get_state(), "offset": 0, "in_a_row": self._in_a_row}
        return {"parent": self._held_state, "offset": self._offset, "in_a_row": self._in_a_row_before}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._held, self._in_a_row = None, state["in_a_row"]
        if state["offset"]:
            held = self._fetch()
            self._offset = state["offset"]
            self._next_skip = sum(1 for position, _ in held["skips"] if position < self._offset)


def configured_batches(
    config: ConfigDict,
    source: Any,
    transform: Callable[[Any, np.random.Generator], Any],
    *,
    process_index: int,
    process_count: int,
    start_sample: int = 0,
) -> grain.IterDataset:
    """`host_batches` with the seed, global batch size, threads and worker processes `config` sets, over the
    subset of `source` that config.data.subset_size names (clipjax/data/subsets.py; all of it when None)."""
    return host_batches(
        training_subset(source, config.data),
        transform,
        seed=config.seed,
        batch_size=config.batch_size,
        process_index=process_index,
        process_count=process_count,
        start_sample=start_sample,
        num_threads=config.data.num_threads,
        num_workers=config.data.num_workers,
    )
