"""Top-1 / top-5 accuracy of a classifier over a whole labelled split, exact (padded batches masked)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from clipjax.data.transforms import normalize_images
from clipjax.evals.batches import eval_batches
from clipjax.losses.classification import topk_correct
from clipjax.parallel import replicated


class ClassificationEvaluator:
    """`evaluator(variables, prefix="eval") -> {prefix/top1, prefix/top5}` for `model` (images -> logits).

    Args:
      model: maps normalised images [B, S, S, 3] to logits [B, K] (e.g. `ImageClassifier`).
      source, load: labelled records and `load(record) -> {"image": uint8 [S, S, 3], "label": int32 []}`.
      normalize: the model's image normalisation ("clip" or "none").
      batch_size: global images per step; num_examples: the first N of the split (None: all).
    """

    def __init__(
        self,
        model: nn.Module,
        mesh: Mesh,
        source: Any,
        load: Callable[[Any], dict[str, np.ndarray]],
        *,
        normalize: str,
        batch_size: int,
        num_examples: int | None = None,
        num_threads: int = 8,
    ) -> None:
        self._mesh, self._source, self._load = mesh, source, load
        self._batch_size, self._num_examples, self._num_threads = batch_size, num_examples, num_threads

        def counts(variables: Any, batch: dict[str, jax.Array]) -> jax.Array:
            logits = model.apply(variables, normalize_images(batch["image"], normalize))
            correct = topk_correct(logits, batch["label"], (1, 5))
            valid = batch["valid"]
            return jnp.stack([jnp.sum(correct[1] & valid), jnp.sum(correct[5] & valid), jnp.sum(valid)])

        self._counts = jax.jit(counts, out_shardings=replicated(mesh))

    def __call__(self, variables: Any, prefix: str = "eval") -> dict[str, float]:
        total = np.zeros(3, np.int64)
        batches = eval_batches(
            self._source,
            self._load,
            self._mesh,
            batch_size=self._batch_size,
            num_examples=self._num_examples,
            num_threads=self._num_threads,
        )
        for batch in batches:
            total += np.asarray(self._counts(variables, batch), np.int64)
        top1, top5, examples = total
        return {f"{prefix}/top1": top1 / examples, f"{prefix}/top5": top5 / examples}
