"""clip_loss against a numpy InfoNCE with a hand-derived gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.losses import clip_loss


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


def unit_rows(rng, shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("batch,dim,scale", [(1, 4, 1.0), (8, 16, 14.3), (33, 32, 100.0)])
def test_value_and_gradient_match_numpy(batch, dim, scale):
    rng = np.random.default_rng(batch)
    images, texts = unit_rows(rng, (batch, dim)), unit_rows(rng, (batch, dim))
    # Correlate the pairs so the loss is far from log(B) and the gradient is informative.
    texts = unit_rows(np.random.default_rng(0), (batch, dim)) * 0.3 + images
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    loss, d_images, d_texts, d_scale = numpy_info_nce(images, texts, scale)

    value, grads = jax.value_and_grad(clip_loss, argnums=(0, 1, 2))(
        jnp.asarray(images), jnp.asarray(texts), jnp.float32(scale)
    )
    np.testing.assert_allclose(value, loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0], d_images, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[1], d_texts, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[2], d_scale, rtol=1e-4, atol=1e-6)


def test_perfect_alignment_with_large_scale_gives_near_zero_loss():
    images = np.eye(6, dtype=np.float32)
    assert float(clip_loss(jnp.asarray(images), jnp.asarray(images), 100.0)) < 1e-6


def test_bfloat16_embeddings_are_scored_in_float32():
    rng = np.random.default_rng(1)
    images, texts = unit_rows(rng, (16, 8)), unit_rows(rng, (16, 8))
    low = clip_loss(jnp.asarray(images, jnp.bfloat16), jnp.asarray(texts, jnp.bfloat16), 20.0)
    assert low.dtype == jnp.float32
    expected, *_ = numpy_info_nce(
        np.asarray(jnp.asarray(images, jnp.bfloat16), np.float32), np.asarray(jnp.asarray(texts, jnp.bfloat16), np.float32), 20.0
    )
    np.testing.assert_allclose(low, expected, rtol=1e-5)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="impl"):
        clip_loss(jnp.ones((2, 2)), jnp.ones((2, 2)), 1.0, impl="fancy")
