"""Zero-shot classification: classify images by similarity to prompt-ensembled class-name embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from clipjax.models.clip import CLIP, l2_normalize
from clipjax.parallel import batch_sharding, data_parallel_size, put_batch
from clipjax.tokenizer import tokenize


def class_embeddings(
    encode_text: Callable[[jax.Array], jax.Array],
    classnames: Sequence[str],
    templates: Sequence[str],
    context_length: int,
) -> jax.Array:
    """Prompt-ensembled classifier: [C, d] float32 unit rows.

    Each class's embedding is the normalised mean of its normalised prompt embeddings (OpenAI's recipe).
    `encode_text` maps int32 tokens [C * T, L] to unit embeddings [C * T, d].
    """
    prompts = [template.format(name) for name in classnames for template in templates]
    embeddings = encode_text(jnp.asarray(tokenize(prompts, context_length)))
    return l2_normalize(embeddings.reshape(len(classnames), len(templates), -1).mean(axis=1))


class ZeroShotEvaluator:
    """Top-1 zero-shot accuracy of a CLIP model over a fixed, labelled image set, exact over every image.

    Args:
      model: the CLIP module whose params `__call__` receives.
      mesh: images are split over its batch axes; the last batch is padded and the padding masked out.
      images: uint8 [N, S, S, 3]; labels: int [N] indices into `classnames`.
      preprocess: uint8 images -> model input (e.g. normalisation), applied on the device.
    """

    def __init__(
        self,
        model: CLIP,
        mesh: Mesh,
        images: np.ndarray,
        labels: np.ndarray,
        classnames: Sequence[str],
        templates: Sequence[str],
        *,
        batch_size: int,
        context_length: int,
        preprocess: Callable[[jax.Array], jax.Array],
    ) -> None:
        if batch_size % data_parallel_size(mesh):
            raise ValueError(f"eval batch size {batch_size} is not divisible by {data_parallel_size(mesh)} devices")
        self._mesh = mesh
        self._images = images
        self._labels = np.asarray(labels, np.int32)
        self._batch_size = batch_size
        self._classnames, self._templates = list(classnames), list(templates)
        self._context_length = context_length

        def encode_text(params: Any, tokens: jax.Array) -> jax.Array:
            return model.apply({"params": params}, tokens, method=CLIP.encode_text)

        def count_correct(params: Any, classifier: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
            embeddings = model.apply({"params": params}, preprocess(batch["image"]), method=CLIP.encode_image)
            predictions = jnp.argmax(embeddings @ classifier.T, axis=-1)
            return jnp.sum((predictions == batch["label"]) & batch["valid"])

        self._encode_text = jax.jit(encode_text)
        self._count_correct = jax.jit(count_correct)

    def __call__(self, params: Any) -> dict[str, float]:
        """Returns {"eval/zeroshot_top1": fraction of images whose top class is the label}."""
        classifier = class_embeddings(
            lambda tokens: self._encode_text(params, tokens), self._classnames, self._templates, self._context_length
        )
        sharding = batch_sharding(self._mesh)
        process, processes = jax.process_index(), jax.process_count()
        correct = 0
        for start in range(0, len(self._labels), self._batch_size):
            images = self._images[start : start + self._batch_size]
            labels = self._labels[start : start + self._batch_size]
            pad = self._batch_size - len(labels)
            batch = {
                "image": np.pad(images, [(0, pad)] + [(0, 0)] * (images.ndim - 1)),
                "label": np.pad(labels, (0, pad)),
                "valid": np.arange(self._batch_size) < len(labels),
            }
            # Each host places its contiguous share of the global batch.
            share = self._batch_size // processes
            local = {key: value[process * share : (process + 1) * share] for key, value in batch.items()}
            correct += int(self._count_correct(params, classifier, put_batch(local, sharding)))
        return {"eval/zeroshot_top1": correct / len(self._labels)}
