"""Depth evaluation over a whole split: sliding windows, flip test, Eigen crop, exact per-image averages."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from clipjax.data.depth import depth_eval_example
from clipjax.data.images import BadImage
from clipjax.data.transforms import normalize_images
from clipjax.errors import UserError
from clipjax.evals.batches import eval_batches
from clipjax.evals.depth_metrics import depth_metric_sums, depth_metrics_from_sums, flip_average
from clipjax.evals.sliding import sliding_window_predict
from clipjax.parallel import replicated


def load_depth_example(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """`depth_eval_example` for the evaluation batcher: a pair that does not decode stops the evaluation
    with its name (an exact metric cannot skip examples)."""
    try:
        return depth_eval_example(record)
    except BadImage as e:
        raise UserError(
            f"evaluation pair {record.get('name', '?')} cannot be decoded ({e}); fix or remove it"
        ) from None


class DepthEvaluator:
    """`evaluator(variables, prefix="eval") -> {prefix/rmse, prefix/abs_rel, ..., prefix/delta3}` for `model`
    (normalised images [B, S, S, 3] -> depth float32 [B, S, S] in metres).

    Each image is predicted whole, in windows of the model's size `window` (`stride` apart, averaged where
    they overlap) when it is larger, and with `flip_test` also mirrored and averaged; the metrics are
    per-image averages over the valid pixels (min_depth < depth < max_depth, inside the Eigen crop with
    `eigen`), exact over the split's first `num_examples` pairs (padding rows masked).
    """

    def __init__(
        self,
        model: nn.Module,
        mesh: Mesh,
        source: Any,
        *,
        normalize: str,
        window: int,
        stride: int,
        batch_size: int,
        num_examples: int | None = None,
        num_threads: int = 8,
        flip_test: bool = True,
        eigen: bool = True,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
    ) -> None:
        self._mesh, self._source = mesh, source
        self._batch_size, self._num_examples, self._num_threads = batch_size, num_examples, num_threads

        def sums(variables: Any, batch: dict[str, jax.Array]) -> jax.Array:
            images = normalize_images(batch["image"], normalize)

            def predict(x: jax.Array) -> jax.Array:
                return sliding_window_predict(lambda w: model.apply(variables, w), x, window, stride)

            pred = flip_average(predict, images) if flip_test else predict(images)
            return depth_metric_sums(
                pred, batch["depth"], batch["valid"], min_depth=min_depth, max_depth=max_depth, eigen=eigen
            )

        self._sums = jax.jit(sums, out_shardings=replicated(mesh))

    def __call__(self, variables: Any, prefix: str = "eval") -> dict[str, float]:
        total = None
        batches = eval_batches(
            self._source,
            load_depth_example,
            self._mesh,
            batch_size=self._batch_size,
            num_examples=self._num_examples,
            num_threads=self._num_threads,
        )
        for batch in batches:
            # Summed in float64 on the host: float32 sums would round over a long split.
            part = np.asarray(self._sums(variables, batch), np.float64)
            total = part if total is None else total + part
        return depth_metrics_from_sums(total, prefix)
