"""Embedding whole evaluation sets with a CLIP model, batch by batch, sharded over the mesh."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from clipjax.models.clip import CLIP
from clipjax.parallel import batch_sharding, data_parallel_size, put_batch, replicated
from clipjax.tokenizer import tokenize


class Encoders:
    """Jitted image and text encoders whose unit embeddings come back replicated, so every host can read
    all of them.

    Args:
      model: the CLIP module the variables belong to ({"params": ..., other collections}).
      mesh: inputs are split over its batch axes.
      preprocess: uint8 images [B, S, S, 3] -> model input (normalisation), run on the device.
    """

    def __init__(self, model: CLIP, mesh: Mesh, preprocess: Callable[[jax.Array], jax.Array]) -> None:
        self.mesh = mesh

        def image(variables: Any, images: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
            # The mask comes back with the embeddings: replicated, it is readable on every host.
            return model.apply(variables, preprocess(images), method=CLIP.encode_image), valid

        def text(variables: Any, tokens: jax.Array) -> jax.Array:
            return model.apply(variables, tokens, method=CLIP.encode_text)

        self.image = jax.jit(image, out_shardings=replicated(mesh))
        self.text = jax.jit(text, out_shardings=replicated(mesh))

    def embed_image_batches(self, variables: Any, batches: Iterable[dict[str, jax.Array]]) -> np.ndarray:
        """float32 [N, d] unit image embeddings of the valid rows of `batches` (see `eval_batches`), in order."""
        out = []
        for batch in batches:
            embeddings, valid = self.image(variables, batch["image"], batch["valid"])
            out.append(np.asarray(embeddings, np.float32)[np.asarray(valid)])
        return np.concatenate(out)

    def embed_texts(self, variables: Any, texts: Sequence[str], *, batch_size: int, context_length: int) -> np.ndarray:
        """float32 [len(texts), d] unit text embeddings, encoded `batch_size` texts at a time.

        Every host passes the same texts; each places its share of every batch.
        """
        step = max(data_parallel_size(self.mesh), batch_size - batch_size % data_parallel_size(self.mesh))
        step -= step % jax.process_count()
        share = step // jax.process_count()
        sharding = batch_sharding(self.mesh)
        out = []
        for start in range(0, len(texts), step):
            chunk = list(texts[start : start + step])
            tokens = tokenize(chunk + [""] * (step - len(chunk)), context_length)
            local = tokens[jax.process_index() * share : (jax.process_index() + 1) * share]
            embeddings = self.text(variables, put_batch({"text": local}, sharding)["text"])
            out.append(np.asarray(embeddings, np.float32)[: len(chunk)])
        return np.concatenate(out)
