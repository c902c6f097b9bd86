"""Image-text retrieval (COCO captions, Flickr30k): recall at 1/5/10 in both directions, exact.

The split is a JSONL file, one image per line: {"image": "path/to/file.jpg", "captions": ["...", ...]}, image
paths relative to the file's directory (or absolute). Image-to-text: an image's query succeeds at K when any
of its captions ranks in the top K of all captions. Text-to-image: a caption's query succeeds when its
image ranks in the top K of all images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipjax.errors import ConfigError
from clipjax.evals.batches import decode_for_eval, eval_batches
from clipjax.evals.encode import Encoders

RECALL_AT = (1, 5, 10)


class RetrievalSplit:
    """The images of a retrieval JSONL as a random-access source, and its captions.

    `split[i]` is {"image": bytes, "name": path}; `captions` lists every caption, `caption_image[j]` the
    index of caption j's image.

    Raises:
      ConfigError: the file is missing, a line is not {"image": str, "captions": [str, ...]} with at least
        one caption, or an image file does not exist (naming the file and line).
    """

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise ConfigError(f"retrieval split {path} does not exist")
        root = os.path.dirname(os.path.abspath(path))
        self.images: list[str] = []
        self.captions: list[str] = []
        owners: list[int] = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    image, captions = entry["image"], entry["captions"]
                    valid = isinstance(image, str) and isinstance(captions, list) and captions
                    valid = valid and all(isinstance(c, str) and c.strip() for c in captions)
                except (ValueError, KeyError, TypeError):
                    valid = False
                if not valid:
                    raise ConfigError(
                        f'{path}:{number}: expected {{"image": "file", "captions": ["text", ...]}} with at least '
                        "one non-empty caption"
                    )
                image_path = os.path.join(root, image)
                if not os.path.isfile(image_path):
                    raise ConfigError(f"{path}:{number}: image {image_path} does not exist")
                owners.extend([len(self.images)] * len(captions))
                self.images.append(image_path)
                self.captions.extend(captions)
        if not self.images:
            raise ConfigError(f"retrieval split {path} holds no images")
        self.caption_image = np.asarray(owners, np.int64)
        self.path = path

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"RetrievalSplit({self.path}: {len(self.images)} images, {len(self.captions)} captions)"

    def __getitem__(self, index: int) -> dict[str, Any]:
        with open(self.images[index], "rb") as f:
            return {"image": f.read(), "name": self.images[index]}


def recall_at_k(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    caption_image: np.ndarray,
    ks: Sequence[int] = RECALL_AT,
    chunk: int = 1024,
) -> dict[str, float]:
    """Retrieval recalls from unit embeddings, without a full N x M score matrix.

    Args:
      image_emb: float32 [N, d]; text_emb: float32 [M, d]; caption_image: int [M], caption j's image.
      chunk: images scored at a time (memory chunk x M; the products are computed twice).

    Returns:
      {"i2t_r{k}": ..., "t2i_r{k}": ...} fractions in [0, 1]. A query's rank counts the candidates that
      score strictly higher than its best positive, so exact ties go the model's way.
    """
    num_images = len(image_emb)
    chunks = [slice(start, min(start + chunk, num_images)) for start in range(0, num_images, chunk)]
    # Pass 1: each caption's score with its own image, taken from the same products pass 2 compares
    # against (a separately computed dot product can differ in the last bit and outrank itself).
    positive = np.empty(len(text_emb), np.float64)
    for rows in chunks:
        scores = image_emb[rows] @ text_emb.T  # [c, M]
        mine = (caption_image >= rows.start) & (caption_image < rows.stop)
        positive[mine] = scores[caption_image[mine] - rows.start, np.flatnonzero(mine)]
    best_positive = np.full(num_images, -np.inf)
    np.maximum.at(best_positive, caption_image, positive)
    # Pass 2: count the candidates that outscore each query's positive.
    image_rank = np.zeros(num_images, np.int64)  # captions above an image's best caption
    text_rank = np.zeros(len(text_emb), np.int64)  # images above a caption's own image
    for rows in chunks:
        scores = image_emb[rows] @ text_emb.T
        image_rank[rows] = np.sum(scores > best_positive[rows, None], axis=1)
        text_rank += np.sum(scores > positive[None, :], axis=0)
    metrics = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = float(np.mean(image_rank < k))
        metrics[f"t2i_r{k}"] = float(np.mean(text_rank < k))
    return metrics


class RetrievalEvaluator:
    """eval/retrieval_{i2t,t2i}_r{1,5,10} over every image and caption of a `RetrievalSplit`."""

    def __init__(
        self,
        encoders: Encoders,
        split: RetrievalSplit,
        *,
        image_size: int,
        batch_size: int,
        context_length: int,
        num_threads: int = 8,
        prefix: str = "retrieval",
    ) -> None:
        self._encoders, self._split = encoders, split
        self._image_size, self._batch_size, self._context_length = image_size, batch_size, context_length
        self._num_threads, self._prefix = num_threads, prefix

    def _load(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"image": decode_for_eval(record["image"], self._image_size, record["name"])}

    def __call__(self, variables: Any) -> dict[str, float]:
        batches = eval_batches(
            self._split, self._load, self._encoders.mesh, batch_size=self._batch_size, num_threads=self._num_threads
        )
        image_emb = self._encoders.embed_image_batches(variables, batches)
        text_emb = self._encoders.embed_texts(
            variables, self._split.captions, batch_size=self._batch_size, context_length=self._context_length
        )
        recalls = recall_at_k(image_emb, text_emb, self._split.caption_image)
        return {f"eval/{self._prefix}_{name}": value for name, value in recalls.items()}
