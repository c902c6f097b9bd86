"""MobileCLIP's distillation loss: a float64 numpy oracle of the formula, fused == naive, sharded == one device,
a teacher equal to the student pulls with zero force, and no B x B buffer in the fused program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from clipjax.losses import clip_distillation_losses
from clipjax.parallel import batch_sharding, make_mesh
from tests.oracles import largest_buffer, numpy_info_nce, pairs

DIMS = (4, 6)  # two ensemble members of different widths


def numpy_distillation(images, texts, scale, teacher_images, teacher_texts, dims, teacher_scale):
    """KD and its gradients (d images, d texts, d scale) in float64, from open_clip's DistillClipLoss as
    MobileCLIP patched it (members' probabilities averaged after the softmax)."""
    images, texts = images.astype(np.float64), texts.astype(np.float64)
    batch = len(images)
    bounds = np.cumsum([0, *dims])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731

    def softmax(x, axis):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    p_row, p_col = 0.0, 0.0
    for start, stop in zip(bounds[:-1], bounds[1:]):
        a = unit(teacher_images[:, start:stop].astype(np.float64))
        b = unit(teacher_texts[:, start:stop].astype(np.float64))
        p_row = p_row + softmax(teacher_scale * a @ b.T, 1) / len(dims)
        p_col = p_col + softmax(teacher_scale * a @ b.T, 0) / len(dims)
    similarity = images @ texts.T
    logits = scale * similarity
    s_row, s_col = softmax(logits, 1), softmax(logits, 0)
    kd = -0.5 * (np.sum(p_row * np.log(s_row)) + np.sum(p_col * np.log(s_col))) / batch
    d_logits = 0.5 / batch * (s_row - p_row + s_col - p_col)
    return kd, scale * d_logits @ texts, scale * d_logits.T @ images, np.sum(d_logits * similarity)


def teachers(images, texts, seed):
    """Unnormalised teacher embeddings [B, sum(DIMS)] that agree with the student only in part."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(images.shape[1], sum(DIMS)))
    noise = lambda: 0.8 * rng.normal(size=(len(images), sum(DIMS)))  # noqa: E731
    return ((images @ mix + noise()) * 3.0).astype(np.float32), ((texts @ mix + noise()) * 0.5).astype(np.float32)


def weighted_value_and_grads(weight, *args, **kwargs):
    """(clip, kd) and the gradients of (1 - weight) clip + weight kd with respect to images, texts, scale."""

    def total(x, y, s, tx, ty):
        clip, kd = clip_distillation_losses(x, y, s, tx, ty, **kwargs)
        return (1.0 - weight) * clip + weight * kd, (clip, kd)

    fn = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True))
    (_, losses), grads = fn(*[jnp.asarray(a) for a in args])
    return losses, grads


@pytest.mark.parametrize("impl", ["naive", "fused"])
@pytest.mark.parametrize("batch,block,scale", [(8, 16, 14.3), (33, 8, 60.0)])
def test_matches_numpy(impl, batch, block, scale):
    images, texts = pairs(batch, 16, seed=batch)
    teacher_images, teacher_texts = teachers(images, texts, seed=1)
    clip = numpy_info_nce(images, texts, scale)
    kd = numpy_distillation(images, texts, scale, teacher_images, teacher_texts, DIMS, 100.0)
    weight = 0.75
    (got_clip, got_kd), grads = weighted_value_and_grads(
        weight,
        images,
        texts,
        np.float32(scale),
        teacher_images,
        teacher_texts,
        teacher_dims=DIMS,
        teacher_scale=100.0,
        impl=impl,
        block_size=block,
    )
    np.testing.assert_allclose(got_clip, clip[0], rtol=1e-5)
    np.testing.assert_allclose(got_kd, kd[0], rtol=1e-5)
    for got, c, k in zip(grads, clip[1:], kd[1:]):
        want = (1.0 - weight) * c + weight * k
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_teacher_equal_to_the_student_exerts_no_force():
    # One member holding the student's own embeddings at the student's scale: the targets are the student's
    # softmaxes, so the cross-entropy is at its minimum (their entropy) and its gradient vanishes.
    images, texts = pairs(24, 8, seed=2)
    (_, kd), grads = weighted_value_and_grads(
        1.0, images, texts, np.float32(20.0), images, texts, teacher_dims=(8,), teacher_scale=20.0, block_size=8
    )
    logits = 20.0 * images.astype(np.float64) @ texts.T.astype(np.float64)
    entropy = 0.0
    for axis in (1, 0):
        p = np.exp(logits - logits.max(axis=axis, keepdims=True))
        p /= p.sum(axis=axis, keepdims=True)
        entropy += -0.5 * np.sum(p * np.log(p)) / len(images)
    np.testing.assert_allclose(kd, entropy, rtol=1e-5)
    for grad in grads:
        np.testing.assert_allclose(grad, 0.0, atol=1e-5)


def test_sharded_over_8_devices_equals_one_device():
    mesh = make_mesh(ConfigDict({"data": 4, "fsdp": 2}))
    images, texts = pairs(8 * 12, 16, seed=11)  # 12 rows per device; block 8 leaves a partial tile
    teacher_images, teacher_texts = teachers(images, texts, seed=4)
    args = (images, texts, np.float32(30.0), teacher_images, teacher_texts)
    options = {"teacher_dims": DIMS, "teacher_scale": 100.0, "block_size": 8}
    single, single_grads = weighted_value_and_grads(0.5, *args, **options)
    sharding = batch_sharding(mesh)
    split = [jax.device_put(a, sharding) if a.ndim == 2 else a for a in args]
    sharded, grads = weighted_value_and_grads(0.5, *split, **options, mesh=mesh)
    assert grads[0].sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
    for got, want in zip(grads, single_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_no_batch_by_batch_buffer_and_no_teacher_gradient():
    batch, dim, block = 2048, 8, 256
    images, texts = (jnp.asarray(x) for x in pairs(batch, dim))
    teacher_images, teacher_texts = (jnp.asarray(x) for x in teachers(np.asarray(images), np.asarray(texts), 0))

    def total(x, y, s, tx, ty):
        return sum(clip_distillation_losses(x, y, s, tx, ty, teacher_dims=DIMS, teacher_scale=100.0, block_size=block))

    grad = jax.jit(jax.grad(total, argnums=(0, 1, 2, 3, 4)))
    compiled = grad.lower(images, texts, jnp.float32(10.0), teacher_images, teacher_texts).compile()
    assert largest_buffer(compiled.as_text()) <= max(block * block, batch * sum(DIMS))
    *_, d_teacher_images, d_teacher_texts = grad(images, texts, jnp.float32(10.0), teacher_images, teacher_texts)
    assert not np.any(d_teacher_images) and not np.any(d_teacher_texts)


def test_bad_inputs_are_refused():
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match=r"teacher embeddings must both be \[B, sum\(teacher_dims\)\] = \[4, 10\]"):
        clip_distillation_losses(x, x, 1.0, jnp.ones((4, 8)), jnp.ones((4, 10)), teacher_dims=DIMS, teacher_scale=1.0)
    with pytest.raises(ValueError, match="impl"):
        clip_distillation_losses(
            x, x, 1.0, jnp.ones((4, 10)), jnp.ones((4, 10)), teacher_dims=DIMS, teacher_scale=1.0, impl="x"
        )
