"""Where the input pipeline stacks its batches: in grain's workers (clipjax's host_batches since 2026-12-06) or in
the training process (clipjax before).

  python benchmarks/pipeline_batching.py --workers 1 4 16 --batches 200 --json pipeline_batching.json
  python benchmarks/pipeline_batching.py --workers 1 2 --batches 3 --batch-size 8 --samples 64 --check  # a quick try

Writes {"images_per_s": {order: {workers: ...}}, "images_per_s_per_core": ..., "speedup": ..., ...}: the
images per second the training process receives, after a warm-up, from a grain pipeline over a DataComp-layout
webdataset shard (reading by offset, JPEG decoding, RandomResizedCrop to --size, caption tokenising:
clipjax.data.datacomp.webdataset_example), for each --workers count W (0: threads of the training process)
and two orders of the same work:
  in_trainer  every example crosses from its worker to the training process on its own (an image, a caption,
              each in a shared-memory block of its own) and --batch-size usable ones are stacked there (kept
              here, `in_trainer_batches`, as clipjax did it);
  in_workers  clipjax.data.batching.host_batches: the workers stack windows of --batch-size consecutive
              elements of the host's stream and the training process repacks their usable rows into full
              batches. grain's mp_prefetch hands worker i the windows i, i + W, ... and takes them round
              robin, so both orders yield the same batches, skip counts included.
Per core divides by min(W + 1, os.cpu_count()): the workers and the training process. The first batches of
every run are compared with those of the first run (any order, any W) and must be equal; --check also
compares --batches batches of both orders at W = 1 and 4, for the real transform and for one that marks a
quarter or 95% of the records skipped (to exercise the repacking and the skip counts). Each batch is touched
(a byte of every memory page) as the host-to-device copy would, so that mapping the workers' shared memory
costs both orders alike. Without --shards, it writes a shard of web-sized JPEGs (input_pipeline.py's).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from typing import Any, Callable

import absl.flags
import grain
import numpy as np
from input_pipeline import write_sample_shard
from report import emit, environment

from clipjax.data.batching import MAX_SKIPPED_IN_A_ROW, host_batches, host_stream
from clipjax.data.datacomp import webdataset_example
from clipjax.data.skips import SKIPPED, skipped
from clipjax.data.webdataset import WebDatasetSource, expand_shards
from clipjax.errors import UserError

ORDERS = ("in_trainer", "in_workers")
CHECK_WORKERS = (1, 4)
CHECK_SKIP_RATES = (0.0, 0.25, 0.95)


def with_skips(record: Any, rng: np.random.Generator, *, transform: Callable, rate: float) -> dict[str, Any]:
    """`transform(record, rng)`, or a skipped marker for a fraction `rate` of the records (for --check)."""
    if rng.random() < rate:
        return skipped("corrupt_image")
    return transform(record, rng)


def in_trainer_batches(
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
    """clipjax's batches as host_batches made them until 2026-12-06: the same element stream, every example
    sent from its worker on its own and stacked in the training process."""
    per_host_batch = batch_size // process_count
    stream = host_stream(
        source,
        transform,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        start_sample=start_sample,
    )
    elements = stream.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * per_host_batch)
    )
    if num_workers > 0:
        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()
        elements = elements.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return _StackInTrainer(elements, per_host_batch)


class _StackInTrainer(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, batch_size: int) -> None:
        super().__init__(parent)
        self._batch_size = batch_size

    def __iter__(self) -> grain.DatasetIterator:
        return _StackInTrainerIterator(self._parent.__iter__(), self._batch_size)


class _StackInTrainerIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int) -> None:
        super().__init__(parent)
        self._batch_size = batch_size

    def __next__(self) -> dict[str, Any]:
        usable, skips, in_a_row = [], {}, 0
        while len(usable) < self._batch_size:
            element = next(self._parent)
            if SKIPPED in element:
                skips[element[SKIPPED]] = skips.get(element[SKIPPED], 0) + 1
                in_a_row += 1
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise UserError(f"the last {in_a_row} samples were all unusable")
            else:
                usable.append(element)
                in_a_row = 0
        return {**{key: np.stack([e[key] for e in usable]) for key in usable[0]}, SKIPPED: skips}

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


def same_batch(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """Whether two batches hold the same arrays (keys, dtypes, shapes, values) and skip counts."""
    if x.keys() != y.keys() or x[SKIPPED] != y[SKIPPED]:
        return False
    arrays = [(np.asarray(x[k]), np.asarray(y[k])) for k in x if k != SKIPPED]
    return all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b) for a, b in arrays)


def touch(batch: dict[str, Any]) -> None:
    """Reads a byte of every 4 KiB page of the batch's arrays, as the copy to the device will."""
    for key, value in batch.items():
        if key != SKIPPED:
            np.ravel(value).view(np.uint8)[::4096].max()


def copied(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch in arrays of its own: kept ones must not hold the workers' shared memory (which grain frees
    asynchronously, so that some would outlive a run that ends right after)."""
    return {key: value if key == SKIPPED else np.array(value) for key, value in batch.items()}


def pipeline(order: str, source: Any, transform: Callable, workers: int, args: argparse.Namespace) -> Any:
    build = in_trainer_batches if order == "in_trainer" else host_batches
    return build(
        source,
        transform,
        seed=args.seed,
        batch_size=args.batch_size,
        process_index=0,
        process_count=1,
        num_threads=args.threads,
        num_workers=workers,
    )


def first_batches(order: str, source: Any, transform: Callable, workers: int, count: int, args) -> list[dict]:
    iterator = iter(pipeline(order, source, transform, workers, args))
    try:
        return [copied(next(iterator)) for _ in range(count)]
    finally:
        iterator.close()


def check(source: Any, transform: Callable, args: argparse.Namespace) -> dict[str, Any]:
    """Both orders' first --batches batches at W = 1 and 4, with and without skipped records, must agree."""
    for rate in CHECK_SKIP_RATES:
        marked = functools.partial(with_skips, transform=transform, rate=rate) if rate else transform
        reference = first_batches("in_trainer", source, marked, CHECK_WORKERS[0], args.batches, args)
        for workers in CHECK_WORKERS:
            for order in ORDERS:
                if (order, workers) == ("in_trainer", CHECK_WORKERS[0]):
                    continue
                batches = first_batches(order, source, marked, workers, args.batches, args)
                bad = next((i for i, (x, y) in enumerate(zip(reference, batches)) if not same_batch(x, y)), None)
                if bad is not None:
                    raise SystemExit(
                        f"check failed: {order} with {workers} workers, skip rate {rate}: batch {bad} differs "
                        f"from in_trainer with {CHECK_WORKERS[0]} worker"
                    )
        skips = sum(sum(batch[SKIPPED].values()) for batch in reference)
        print(
            f"check: skip rate {rate}: {args.batches} batches equal for {ORDERS} x workers {CHECK_WORKERS}, "
            f"{skips} records skipped"
        )
    return {"workers": list(CHECK_WORKERS), "skip_rates": list(CHECK_SKIP_RATES), "batches": args.batches}


def measure(order: str, source: Any, transform: Callable, workers: int, args) -> tuple[float, float, list]:
    """(images/s after the warm-up, seconds of the warm-up, the first --compare batches)."""
    warmup = args.warmup if args.warmup >= 0 else 3 * workers + 2  # drains what the workers buffered at start
    iterator = iter(pipeline(order, source, transform, workers, args))
    try:
        kept = []
        start = time.perf_counter()
        for i in range(max(warmup, args.compare)):
            batch = next(iterator)
            touch(batch)
            if i < args.compare:
                kept.append(copied(batch))
        started = time.perf_counter()
        for _ in range(args.batches):
            touch(next(iterator))
        elapsed = time.perf_counter() - started
    finally:
        iterator.close()
    return args.batches * args.batch_size / elapsed, started - start, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", help="DataComp shards to read (default: write a sample shard)")
    parser.add_argument("--samples", type=int, default=512, help="images in the sample shard")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="batches measured after the warm-up")
    parser.add_argument("--warmup", type=int, default=-1, help="batches before measuring (default 3 W + 2)")
    parser.add_argument("--compare", type=int, default=3, help="first batches of every run compared")
    parser.add_argument("--threads", type=int, default=2, help="grain read threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="also compare --batches batches at W = 1 and 4")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    transform = functools.partial(
        webdataset_example,
        captions="real",
        synthetic_prob=0.0,
        image_size=args.size,
        context_length=77,
        crop_scale=(0.9, 1.0),
        flip=False,
        teacher_width=None,
    )
    cpus = os.cpu_count() or 1
    rates: dict[str, dict[str, float]] = {order: {} for order in ORDERS}
    warmups: dict[str, dict[str, float]] = {order: {} for order in ORDERS}
    with tempfile.TemporaryDirectory() as tmp:
        shards = expand_shards(args.shards) if args.shards else [write_sample_shard(tmp, args.samples)]
        source = WebDatasetSource(shards)
        checked = check(source, transform, args) if args.check else None
        reference = None
        for workers in args.workers:
            for order in ORDERS:  # interleaved, so both orders see the machine in the same states
                rate, warmup_s, kept = measure(order, source, transform, workers, args)
                if reference is None:
                    reference = (order, workers, kept)
                elif not all(same_batch(x, y) for x, y in zip(reference[2], kept)):
                    raise SystemExit(
                        f"{order} with {workers} workers yields other batches than {reference[0]} with "
                        f"{reference[1]} workers"
                    )
                rates[order][str(workers)], warmups[order][str(workers)] = rate, warmup_s
                print(f"{order:>10}, {workers:>2} workers: {rate:8.1f} images/s ({warmup_s:.1f} s warm-up)")
    result = {
        "images_per_s": {order: {w: round(r, 1) for w, r in rates[order].items()} for order in ORDERS},
        "images_per_s_per_core": {
            order: {w: round(r / min(int(w) + 1, cpus), 1) for w, r in rates[order].items()} for order in ORDERS
        },
        "speedup": {w: round(rates["in_workers"][w] / rates["in_trainer"][w], 3) for w in rates["in_trainer"]},
        "warmup_s": {order: {w: round(s, 2) for w, s in warmups[order].items()} for order in ORDERS},
        "same_batches": {"first": args.compare, "check": checked},
        "batch_size": args.batch_size,
        "batches": args.batches,
        "warmup_batches": args.warmup if args.warmup >= 0 else "3 W + 2",
        "samples": len(source),
        "image_size": args.size,
        "threads_per_process": args.threads,
        "cpus": cpus,
        **environment(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
