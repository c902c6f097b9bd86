"""The generic batcher every task's training data goes through: from a random-access source to this host's
batches of usable examples, with a checkpointable iterator and exact counts of the records skipped."""

from __future__ import annotations

from typing import Any, Callable

import absl.flags
import grain
import numpy as np
from ml_collections import ConfigDict

from clipjax.data.skips import SKIPPED
from clipjax.errors import UserError

# A run whose data yields nothing usable must stop with a reason instead of reading forever.
MAX_SKIPPED_IN_A_ROW = 10_000


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
    `batch_size / process_count` usable examples; each batch carries `"__skipped__": {reason: count}`
    for the records dropped while filling it. Saving the iterator's state and restoring it continues
    with exactly the batches an uninterrupted run would see.
    """
    per_host_batch = batch_size // process_count
    # The first element of this host's share at or after global element `start_sample`.
    first_local = -((process_index - start_sample) // process_count)
    elements = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)  # a fresh permutation every epoch
        .random_map(transform, seed=seed)
        .slice(slice(process_index, None, process_count))
        .slice(slice(first_local, None))
        .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * per_host_batch))
    )
    if num_workers > 0:
        # grain's workers read absl flags (with their defaults); clipjax parses its own command line.
        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()
        elements = elements.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return SkippingBatches(elements, per_host_batch)


class SkippingBatches(grain.IterDataset):
    """Stacks exactly `batch_size` usable elements per batch, dropping and counting skipped ones.

    Runs in the training process after any worker processes, so the counts arrive with the batch they
    delayed and are exact however the work was spread.
    """

    def __init__(self, parent: grain.IterDataset, batch_size: int) -> None:
        super().__init__(parent)
        self._batch_size = batch_size

    def __iter__(self) -> grain.DatasetIterator:
        return _SkippingBatchIterator(self._parent.__iter__(), self._batch_size)


class _SkippingBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int) -> None:
        super().__init__(parent)
        self._batch_size = batch_size

    def __next__(self) -> dict[str, Any]:
        usable: list[dict[str, np.ndarray]] = []
        skipped: dict[str, int] = {}
        in_a_row = 0
        while len(usable) < self._batch_size:
            element = next(self._parent)
            if SKIPPED in element:
                skipped[element[SKIPPED]] = skipped.get(element[SKIPPED], 0) + 1
                in_a_row += 1
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
                    raise UserError(
                        f"the last {in_a_row} samples were all unusable ({reasons}); check config.data "
                        "(path, synthetic_path, captions)"
                    )
            else:
                usable.append(element)
                in_a_row = 0
        batch = {key: np.stack([element[key] for element in usable]) for key in usable[0]}
        return {**batch, SKIPPED: skipped}

    # Nothing is held between batches, so the parent's position is the whole state.
    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


def configured_batches(
    config: ConfigDict,
    source: Any,
    transform: Callable[[Any, np.random.Generator], Any],
    *,
    process_index: int,
    process_count: int,
    start_sample: int = 0,
) -> grain.IterDataset:
    """`host_batches` with the seed, global batch size, threads and worker processes `config` sets."""
    return host_batches(
        source,
        transform,
        seed=config.seed,
        batch_size=config.batch_size,
        process_index=process_index,
        process_count=process_count,
        start_sample=start_sample,
        num_threads=config.data.num_threads,
        num_workers=config.data.num_workers,
    )
