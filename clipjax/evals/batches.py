"""Evaluation batches: every example of a split exactly once, padded to whole global batches.

Training batches are endless and shuffled; evaluation needs the opposite: each example once, in order,
the last batch padded and the padding masked out, so counts are exact over the whole split. Global
batch i holds examples [i * B, (i + 1) * B); host p loads its contiguous share of each batch (the rows
`put_batch` places on its devices).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from clipjax.data.images import BadImage, center_crop, decode_image
from clipjax.errors import UserError
from clipjax.parallel import batch_sharding, data_parallel_size, put_batch


def host_indices(num_examples: int, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """int64 [num_batches, batch_size / process_count]: the global example index of each row this host
    loads, -1 for padding past the end of the split."""
    share = batch_size // process_count
    num_batches = -(-num_examples // batch_size)
    rows = np.arange(num_batches)[:, None] * batch_size + process_index * share + np.arange(share)[None, :]
    return np.where(rows < num_examples, rows, -1)


def eval_batches(
    source: Any,
    load: Callable[[Any], dict[str, np.ndarray]],
    mesh: Mesh,
    *,
    batch_size: int,
    num_examples: int | None = None,
    num_threads: int = 8,
) -> Iterator[dict[str, jax.Array]]:
    """Global batches of `load(source[i])` for i in [0, num_examples), placed on `mesh`'s batch axes.

    Args:
      source: random access records (len and getitem).
      load: record -> dict of fixed-shape numpy arrays (e.g. {"image": uint8 [S, S, 3], "label": int32 []}).
      batch_size: global; must divide over the mesh's data-parallel devices and the processes.
      num_examples: the first this many records (default: all).
      num_threads: records decoded in parallel on each host.

    Yields:
      load's arrays with a leading global batch dimension, plus "valid": bool [B], False on padding rows
      (which repeat the split's first example).
    """
    if batch_size % data_parallel_size(mesh) or batch_size % jax.process_count():
        raise ValueError(
            f"eval batch size {batch_size} must divide over {data_parallel_size(mesh)} devices and "
            f"{jax.process_count()} processes"
        )
    total = len(source) if num_examples is None else min(num_examples, len(source))
    if total == 0:
        raise UserError(f"evaluation data {source!r} holds no examples")
    indices = host_indices(total, batch_size, jax.process_index(), jax.process_count())
    share = indices.shape[1]

    def load_row(index: int) -> dict[str, np.ndarray]:
        example = load(source[max(index, 0)])
        return {**example, "valid": np.asarray(index >= 0)}

    rows = (
        grain.MapDataset.source(indices.reshape(-1).tolist())
        .map(load_row)
        .batch(share)
        .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * share))
    )
    sharding = batch_sharding(mesh)
    for host_batch in rows:
        yield put_batch(host_batch, sharding)


def labelled_image_loader(
    image_size: int, crop_ratio: float = 1.0
) -> Callable[[dict[str, Any]], dict[str, np.ndarray]]:
    """A `load` for labelled sources ({"image": bytes or uint8 array, "label": int, "name": str}):
    encoded images are decoded to RGB, and their central square (`crop_ratio` of the shorter side) is
    resized to image_size; arrays (synthetic scenes) are used as they are.

    Returns {"image": uint8 [image_size, image_size, 3], "label": int32 []}. A file that does not decode
    stops the evaluation with its name: an exact metric cannot skip examples.
    """

    def load(record: dict[str, Any]) -> dict[str, np.ndarray]:
        image = record["image"]
        if isinstance(image, bytes):
            image = decode_for_eval(image, image_size, record.get("name", "?"), crop_ratio)
        return {"image": np.asarray(image, np.uint8), "label": np.asarray(record["label"], np.int32)}

    return load


def load_or_stop(load: Callable[[Any], dict[str, np.ndarray]], record: Any) -> dict[str, np.ndarray]:
    """`load(record)`; an image that does not decode (BadImage) stops the evaluation with a UserError naming
    the record: an exact metric cannot skip it."""
    try:
        return load(record)
    except BadImage as e:
        name = record.get("name", "?") if isinstance(record, dict) else "?"
        raise UserError(f"evaluation image {name} cannot be decoded ({e}); fix or remove it") from None


def decode_for_eval(data: bytes, image_size: int, name: str, crop_ratio: float = 1.0) -> np.ndarray:
    """Encoded image -> uint8 [image_size, image_size, 3]: the central `crop_ratio` of the shorter side,
    resized.

    Raises:
      UserError: naming the file, when it does not decode.
    """
    try:
        # Decoding at reduced scale keeps the shorter side at least as long as the crop needs.
        target = int(np.ceil(image_size / crop_ratio))
        return center_crop(decode_image(data, target=target), image_size, crop_ratio)
    except BadImage as e:
        raise UserError(f"evaluation image {name} cannot be decoded ({e}); fix or remove it") from None
