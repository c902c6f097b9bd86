"""grain pipelines: from a random-access source to per-host batches with a checkpointable iterator."""

from __future__ import annotations

import functools
from typing import Any, Callable

import grain
import numpy as np
from ml_collections import ConfigDict

from clipjax.data.synthetic import SyntheticScenes
from clipjax.errors import ConfigError
from clipjax.tokenizer import tokenize

CAPTION_POLICIES = ("real", "synthetic", "mixed", "both")
DATA_KINDS = ("synthetic", "webdataset", "tfds", "folder")
AVAILABLE_KINDS = ("synthetic",)


def pretrain_source(config: ConfigDict) -> SyntheticScenes:
    """The image-text source named by `config.data` (records as `SyntheticScenes` returns them)."""
    if config.data.kind not in AVAILABLE_KINDS:
        raise ConfigError(
            f"config.data.kind={config.data.kind!r} has no reader in this version of clipjax; "
            f"available: {', '.join(AVAILABLE_KINDS)}"
        )
    return SyntheticScenes(
        config.data.synthetic.num_examples,
        image_size=config.model.image_size,
        max_objects=config.data.synthetic.max_objects,
        split="train",
        seed=config.seed,
    )


def to_pretrain_example(
    record: dict[str, Any], rng: np.random.Generator, *, captions: str, synthetic_prob: float, context_length: int
) -> dict[str, np.ndarray]:
    """One image-caption pair (two captions with captions="both") from a source record.

    Returns:
      image           uint8 [S, S, 3]
      text            int32 [context_length]  the real caption ("real", "both"), the synthetic one
                      ("synthetic"), or either ("mixed": synthetic with probability synthetic_prob)
      text_synthetic  int32 [context_length]  only with captions="both"
    """
    real, synthetic = record["caption_noisy"], record["caption_quality"]
    if captions == "real":
        texts = {"text": real}
    elif captions == "synthetic":
        texts = {"text": synthetic}
    elif captions == "mixed":
        texts = {"text": synthetic if rng.random() < synthetic_prob else real}
    else:
        texts = {"text": real, "text_synthetic": synthetic}
    example = {key: tokenize(text, context_length)[0] for key, text in texts.items()}
    return {"image": record["image"], **example}


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
    size or host count. Each host reads every `process_count`-th element of the global order, so hosts
    never overlap, from global element `start_sample` on, in batches of `batch_size / process_count`.
    Saving the iterator's state and restoring it continues with exactly the batches an uninterrupted run
    would see.
    """
    per_host_batch = batch_size // process_count
    # The first element of this host's share at or after global element `start_sample`.
    first_local = -((process_index - start_sample) // process_count)
    dataset = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)  # a fresh permutation every epoch
        .random_map(transform, seed=seed)
        .slice(slice(process_index, None, process_count))
        .slice(slice(first_local, None))
        .batch(per_host_batch, drop_remainder=True)
    )
    iterable = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * per_host_batch)
    )
    if num_workers > 0:
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iterable


def pretrain_dataset(
    config: ConfigDict, source: Any, *, process_index: int, process_count: int, start_sample: int = 0
) -> grain.IterDataset:
    """This host's image-text batches from `pretrain_source(config)` (see `host_batches`):
    {"image": uint8 [b, S, S, 3], "text": int32 [b, L] (, "text_synthetic": int32 [b, L])}."""
    transform = functools.partial(
        to_pretrain_example,
        captions=config.data.captions,
        synthetic_prob=config.data.synthetic_prob,
        context_length=config.model.text.context_length,
    )
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
