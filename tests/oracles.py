"""Reference computations the loss tests compare against: the InfoNCE loss in numpy, its inputs, HLO buffer sizes."""

import re

import numpy as np


def numpy_info_nce(images, texts, scale):
    """Loss and gradients (d images, d texts, d scale) of the symmetric InfoNCE, in float64."""
    images, texts = images.astype(np.float64), texts.astype(np.float64)
    batch = len(images)
    similarity = images @ texts.T
    logits = scale * similarity

    def log_softmax(x, axis):
        x = x - x.max(axis=axis, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))

    rows, cols = log_softmax(logits, 1), log_softmax(logits, 0)
    loss = -0.5 * (np.trace(rows) / batch + np.trace(cols) / batch)
    eye = np.eye(batch)
    d_logits = 0.5 / batch * ((np.exp(rows) - eye) + (np.exp(cols) - eye))
    return loss, scale * d_logits @ texts, scale * d_logits.T @ images, np.sum(d_logits * similarity)


def pairs(batch, dim, seed=0, dtype=np.float32):
    """Unit image rows and correlated unit text rows, so the loss is informative."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, dim))
    texts = images + rng.normal(size=(batch, dim))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)  # noqa: E731
    return unit(images), unit(texts)


def largest_buffer(hlo_text):
    """Elements of the largest array shape anywhere in an HLO module."""
    sizes = [np.prod([int(d) for d in dims.split(",") if d]) for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", hlo_text)]
    return max(sizes)
