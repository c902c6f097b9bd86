"""Zero-shot classification: classify images by similarity to prompt-ensembled class-name embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.evals.batches import eval_batches
from clipjax.evals.encode import Encoders


def class_embeddings(
    encoders: Encoders,
    variables: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int,
    context_length: int,
) -> np.ndarray:
    """Prompt-ensembled classifier: float32 [C, d] unit rows.

    Each class's embedding is the normalised mean of its normalised prompt embeddings (OpenAI's recipe);
    the C * T prompts are encoded `batch_size` at a time over the mesh.
    """
    prompts = [template.format(name) for name in classnames for template in templates]
    embeddings = encoders.embed_texts(variables, prompts, batch_size=batch_size, context_length=context_length)
    means = embeddings.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return means / np.linalg.norm(means, axis=-1, keepdims=True)


class ZeroShotEvaluator:
    """Top-1 and top-5 zero-shot accuracy over a labelled split, exact over every example.

    Args:
      encoders: the jitted encoders of the CLIP model whose variables `__call__` receives.
      source: labelled records; `load(source[i])` gives {"image": uint8 [S, S, 3], "label": int32 []}.
      classnames: label i's name; templates: prompts with one "{}" each.
      batch_size: global images (and prompts) per step.
      num_examples: evaluate the first this many (default: the whole split).
      prefix: metric names are eval/{prefix}_top1 and eval/{prefix}_top5.
    """

    def __init__(
        self,
        encoders: Encoders,
        source: Any,
        load: Callable[[Any], dict[str, np.ndarray]],
        classnames: Sequence[str],
        templates: Sequence[str],
        *,
        batch_size: int,
        context_length: int,
        num_examples: int | None = None,
        num_threads: int = 8,
        prefix: str = "zeroshot",
    ) -> None:
        self._encoders, self._source, self._load = encoders, source, load
        self._classnames, self._templates = list(classnames), list(templates)
        self._batch_size, self._context_length = batch_size, context_length
        self._num_examples, self._num_threads, self._prefix = num_examples, num_threads, prefix
        k = min(5, len(self._classnames))

        def count_correct(variables: Any, classifier: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
            embeddings = encoders.image(variables, batch["image"], batch["valid"])[0]
            _, top = jax.lax.top_k(embeddings @ classifier.T, k)  # [B, k] class indices, best first
            hits = top == batch["label"][:, None]
            valid = batch["valid"]
            return jnp.stack([jnp.sum(hits[:, 0] & valid), jnp.sum(jnp.any(hits, axis=1) & valid)])

        self._count_correct = jax.jit(count_correct)

    def __call__(self, variables: Any) -> dict[str, float]:
        """{"eval/<prefix>_top1": share of images whose best class is the label, "..._top5": in the best 5}."""
        classifier = class_embeddings(
            self._encoders,
            variables,
            self._classnames,
            self._templates,
            batch_size=self._batch_size,
            context_length=self._context_length,
        )
        correct = np.zeros(2, np.int64)
        batches = eval_batches(
            self._source,
            self._load,
            self._encoders.mesh,
            batch_size=self._batch_size,
            num_examples=self._num_examples,
            num_threads=self._num_threads,
        )
        classifier = jnp.asarray(classifier)  # once, not per batch
        for batch in batches:
            correct += np.asarray(self._count_correct(variables, classifier, batch))
        total = len(self._source) if self._num_examples is None else min(self._num_examples, len(self._source))
        return {f"eval/{self._prefix}_top1": correct[0] / total, f"eval/{self._prefix}_top5": correct[1] / total}
