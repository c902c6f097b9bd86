"""Contrastive losses: numpy oracles, fused == naive, sharded == unsharded, and no B x B buffer anywhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from clipjax.losses import clip_loss, siglip_loss
from clipjax.parallel import batch_sharding, make_mesh
from tests.oracles import largest_buffer, numpy_info_nce, pairs


def numpy_sigmoid_loss(images, texts, scale, bias):
    """SigLIP loss and gradients (images, texts, scale, bias), in float64."""
    images, texts = images.astype(np.float64), texts.astype(np.float64)
    batch = len(images)
    similarity = images @ texts.T
    signs = 2 * np.eye(batch) - 1
    z = signs * (scale * similarity + bias)
    loss = np.sum(np.logaddexp(0, -z)) / batch  # -log sigmoid(z)
    d_logits = -signs / (1 + np.exp(z)) / batch
    return loss, scale * d_logits @ texts, scale * d_logits.T @ images, np.sum(d_logits * similarity), np.sum(d_logits)


def value_and_grads(loss, *args, **kwargs):
    fn = jax.jit(jax.value_and_grad(lambda *a: loss(*a, **kwargs), argnums=tuple(range(len(args)))))
    return fn(*[jnp.asarray(a) for a in args])


@pytest.mark.parametrize("impl", ["naive", "fused"])
@pytest.mark.parametrize("batch,dim,scale", [(1, 4, 1.0), (8, 16, 14.3), (33, 32, 100.0)])
def test_clip_loss_matches_numpy(impl, batch, dim, scale):
    images, texts = pairs(batch, dim)
    expected = numpy_info_nce(images, texts, scale)
    value, grads = value_and_grads(clip_loss, images, texts, np.float32(scale), impl=impl, block_size=16)
    np.testing.assert_allclose(value, expected[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["naive", "fused"])
def test_siglip_loss_matches_numpy(impl):
    images, texts = pairs(21, 8, seed=3)
    expected = numpy_sigmoid_loss(images, texts, 10.0, -10.0)
    value, grads = value_and_grads(
        siglip_loss, images, texts, np.float32(10.0), np.float32(-10.0), impl=impl, block_size=8
    )
    np.testing.assert_allclose(value, expected[0], rtol=1e-5)
    for got, want in zip(grads, expected[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss,scalars", [(clip_loss, (17.0,)), (siglip_loss, (9.0, -4.0))])
@pytest.mark.parametrize("batch,block", [(100, 32), (64, 64), (40, 128)])
def test_fused_equals_naive_for_batches_that_do_not_fill_the_tiles(loss, scalars, batch, block):
    images, texts = pairs(batch, 24, seed=batch)
    args = (images, texts, *[np.float32(s) for s in scalars])
    naive_value, naive_grads = value_and_grads(loss, *args, impl="naive")
    fused_value, fused_grads = value_and_grads(loss, *args, impl="fused", block_size=block)
    np.testing.assert_allclose(fused_value, naive_value, rtol=1e-5)
    for fused, naive in zip(fused_grads, naive_grads):
        np.testing.assert_allclose(fused, naive, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(naive))))


def test_bfloat16_embeddings_accumulate_in_float32():
    images, texts = pairs(96, 32, seed=5)
    low = [jnp.asarray(x, jnp.bfloat16) for x in (images, texts)]
    value, grads = value_and_grads(clip_loss, *low, np.float32(20.0), impl="fused", block_size=32)
    assert value.dtype == jnp.float32 and grads[0].dtype == jnp.bfloat16 and grads[2].dtype == jnp.float32
    # The oracle sees exactly the bf16 values, in float64.
    expected = numpy_info_nce(*[np.asarray(x, np.float32) for x in low], 20.0)
    np.testing.assert_allclose(value, expected[0], rtol=1e-5)
    for got, want in zip(grads, expected[1:]):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=3e-2, atol=3e-2 * np.abs(want).max())


@pytest.mark.parametrize("loss,scalars", [(clip_loss, (14.0,)), (siglip_loss, (10.0, -6.0))])
def test_sharded_over_8_devices_equals_one_device(loss, scalars):
    mesh = make_mesh(ConfigDict({"data": 4, "fsdp": 2}))
    images, texts = pairs(8 * 12, 16, seed=11)  # 12 rows per device; block 8 leaves a partial tile
    scalars = [np.float32(s) for s in scalars]
    single_value, single_grads = value_and_grads(loss, images, texts, *scalars, impl="fused", block_size=8)
    sharding = batch_sharding(mesh)
    fn = jax.jit(
        jax.value_and_grad(
            lambda *a: loss(*a, impl="fused", block_size=8, mesh=mesh), argnums=tuple(range(2 + len(scalars)))
        )
    )
    value, grads = fn(jax.device_put(images, sharding), jax.device_put(texts, sharding), *scalars)
    assert grads[0].sharding.is_equivalent_to(sharding, 2)  # gradients come back split like the rows
    np.testing.assert_allclose(value, single_value, rtol=1e-5)
    for sharded, single in zip(grads, single_grads):
        np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)


def test_no_batch_by_batch_buffer_in_the_compiled_program():
    batch, dim, block = 4096, 16, 256
    images, texts = (jnp.asarray(x) for x in pairs(batch, dim))
    grad = jax.value_and_grad(lambda x, y, s: clip_loss(x, y, s, impl="fused", block_size=block), argnums=(0, 1, 2))
    compiled = jax.jit(grad).lower(images, texts, jnp.float32(10.0)).compile()
    assert largest_buffer(compiled.as_text()) <= max(block * block, batch * dim)
    assert compiled.memory_analysis().temp_size_in_bytes < batch * batch * 4 / 50
    # The oracle does build one, so the inspection can tell.
    naive = jax.value_and_grad(lambda x, y, s: clip_loss(x, y, s, impl="naive"), argnums=(0, 1, 2))
    assert largest_buffer(jax.jit(naive).lower(images, texts, jnp.float32(10.0)).compile().as_text()) >= batch * batch


def test_no_local_rows_by_batch_buffer_when_sharded():
    mesh = make_mesh(ConfigDict({"data": 8, "fsdp": 1}))
    batch, dim, block = 2048, 16, 64  # 256 rows per device
    sharding = batch_sharding(mesh)
    images, texts = (jax.device_put(x, sharding) for x in pairs(batch, dim))
    grad = jax.value_and_grad(
        lambda x, y, s: clip_loss(x, y, s, impl="fused", block_size=block, mesh=mesh), argnums=(0, 1, 2)
    )
    text = jax.jit(grad).lower(images, texts, jnp.float32(10.0)).compile().as_text()
    assert largest_buffer(text) <= batch * dim  # the gathered texts; a [256, 2048] buffer would be 8x that
    assert "all-gather" in text and "reduce-scatter" in text


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="impl"):
        clip_loss(jnp.ones((2, 2)), jnp.ones((2, 2)), 1.0, impl="fancy")
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        clip_loss(jnp.ones((2, 2)), jnp.ones((3, 2)), 1.0)
