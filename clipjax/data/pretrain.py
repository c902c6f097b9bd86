"""Pretraining data: image-caption pairs from the built-in scenes or DataComp / DataCompDR webdataset shards,
tokenised, batched by the generic batcher (clipjax/data/batching.py)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import grain
import numpy as np
from ml_collections import ConfigDict

from clipjax.data.batching import configured_batches
from clipjax.data.datacomp import webdataset_example
from clipjax.data.layouts import advice
from clipjax.data.synthetic import SyntheticScenes, configured_scenes
from clipjax.data.webdataset import WebDatasetSource, expand_shards
from clipjax.distributed import same_on_every_host
from clipjax.errors import ConfigError, UserError
from clipjax.tokenizer import tokenize

CAPTION_POLICIES = ("real", "synthetic", "mixed", "both", "bag")  # bag: the built-in scenes' bag-of-words caption
PRETRAIN_KINDS = ("synthetic", "webdataset")  # tfds and folder hold labelled images, not captions


def captionless_kind(kind: str) -> str:
    """The error line for pretraining on a data kind that has no captions."""
    return (
        f"config.data.kind={kind!r} holds labelled images, not captions; pretraining reads "
        f"{' or '.join(repr(k) for k in PRETRAIN_KINDS)}"
    )


def pretrain_source(config: ConfigDict) -> SyntheticScenes | WebDatasetSource:
    """The image-text source named by `config.data`: built-in scenes or webdataset shards.

    Raises:
      ConfigError: a kind without captions, a path that matches no readable shard, or a caption policy
        that needs synthetic captions when none can be joined.
      UserError: a shard that keeps failing to read, or hosts that read different shards.
    """
    data = config.data
    if data.kind == "synthetic":
        return configured_scenes(config, data.synthetic.num_examples, "train")
    if data.kind != "webdataset":
        raise ConfigError(captionless_kind(data.kind))
    shards = expand_shards(data.path)
    synthetic = expand_shards(data.synthetic_path) if data.synthetic_path else None
    source = WebDatasetSource(shards, synthetic, cache_dir=data.index_cache)
    if len(source) == 0:
        raise ConfigError(
            f"config.data.path={data.path!r}: no readable samples in its {len(shards)} shard(s)"
            + advice(data.path, "webdataset", accepted=PRETRAIN_KINDS)
        )
    if not same_on_every_host(source.fingerprint()):
        raise UserError(
            f"data: the hosts read different shards of config.data.path={data.path!r} (a shard missing or unreadable "
            "on some host, or different files); each host's log names the shards it left out"
        )
    return source


def pretrain_transform(config: ConfigDict) -> Callable[[Any, np.random.Generator], dict[str, Any]]:
    """record, rng -> training pair (or a skipped marker) for `pretrain_source(config)`'s records."""
    data = config.data
    if data.kind == "synthetic":
        return functools.partial(
            to_pretrain_example,
            captions=data.captions,
            synthetic_prob=data.synthetic_prob,
            context_length=config.model.text.context_length,
        )
    return functools.partial(
        webdataset_example,
        captions=data.captions,
        synthetic_prob=data.synthetic_prob,
        image_size=config.model.image_size,
        context_length=config.model.text.context_length,
        crop_scale=tuple(data.crop_scale),
        flip=data.flip,
        teacher_width=sum(config.loss.teacher_dims) if config.loss.distill_weight > 0 else None,
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
    elif captions == "bag":
        texts = {"text": record["caption_bag"]}
    elif captions == "synthetic":
        texts = {"text": synthetic}
    elif captions == "mixed":
        texts = {"text": synthetic if rng.random() < synthetic_prob else real}
    else:
        texts = {"text": real, "text_synthetic": synthetic}
    example = {key: tokenize(text, context_length)[0] for key, text in texts.items()}
    return {"image": record["image"], **example}


def pretrain_dataset(
    config: ConfigDict, source: Any, *, process_index: int, process_count: int, start_sample: int = 0
) -> grain.IterDataset:
    """This host's image-text batches from `pretrain_source(config)` (see `host_batches`):
    {"image": uint8 [b, S, S, 3], "text": int32 [b, L] (, "text_synthetic": int32 [b, L]), "__skipped__"}, and
    with distillation "teacher_image", "teacher_text" (, "teacher_text_synthetic"): float32 [b, D]."""
    return configured_batches(
        config,
        source,
        pretrain_transform(config),
        process_index=process_index,
        process_count=process_count,
        start_sample=start_sample,
    )
