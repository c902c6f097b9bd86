"""Scanned transformer blocks (config.model.scan): the same function as unscanned blocks, in the other
parameter layout, through the real sharded pretraining step, checkpoint transfer, layer decay and FSDP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.config import load_config
from clipjax.errors import ConfigError
from clipjax.models import build_clip
from clipjax.models.layers import DropPath, Encoder
from clipjax.models.scan_layout import match_block_layout, stack_blocks, unstack_blocks
from clipjax.parallel import make_mesh, state_shardings
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.layer_decay import layer_lr_scales
from clipjax.train.loop import shard_functions
from clipjax.train.optim import make_optimizer, weight_decay_mask
from clipjax.train.transplant import transplant
from clipjax.validation import validate
from tests.helpers import tiny_config


def _stacked(params: dict) -> dict:
    """An unscanned Encoder's params -> the scanned layout, written out with jnp.stack (the oracle)."""
    depth = len(params)
    return {"blocks": jax.tree.map(lambda *a: jnp.stack(a), *[params[f"block_{i}"] for i in range(depth)])}


def test_scanned_encoder_computes_the_unscanned_function():
    # With remat and a causal mask; the plain blocks without either run in the pretraining step test below.
    remat, causal = "dots", True
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    plain = Encoder(3, 2, 32, remat=remat, causal=causal)
    scanned = Encoder(3, 2, 32, remat=remat, causal=causal, scan=True)
    params = jax.jit(plain.init)(jax.random.PRNGKey(1), x)["params"]
    stacked = _stacked(params)
    shapes = jax.tree.map(jnp.shape, jax.eval_shape(scanned.init, jax.random.PRNGKey(1), x)["params"])
    assert shapes == jax.tree.map(jnp.shape, stacked)

    def run(model, p):
        return model.apply({"params": p}, x, return_layers=(0, -1), return_attention=True)

    (y, layers, attention), (ys, layers_s, attention_s) = (
        jax.jit(run, static_argnums=0)(plain, params),
        jax.jit(run, static_argnums=0)(scanned, stacked),
    )
    np.testing.assert_allclose(ys, y, rtol=1e-5, atol=1e-6)
    assert sorted(layers_s) == sorted(layers) == [0, 2]
    for i in layers:
        np.testing.assert_allclose(layers_s[i], layers[i], rtol=1e-5, atol=1e-6)
    assert len(attention_s) == len(attention) == 3
    for a, b in zip(attention, attention_s):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)

    def loss(model, p):
        return jnp.sum(model.apply({"params": p}, x)[0] ** 2)

    grads = jax.jit(jax.grad(loss, 1), static_argnums=0)(plain, params)
    grads_s = jax.jit(jax.grad(loss, 1), static_argnums=0)(scanned, stacked)
    for a, b in zip(jax.tree.leaves(_stacked(grads)), jax.tree.leaves(grads_s)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())  # float32 summation order


def test_traced_drop_rate_draws_and_scales_as_the_static_one():
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 3, 4))
    rngs = {"dropout": jax.random.PRNGKey(5)}
    for rate in (0.25, 1.0):
        static = DropPath(rate).apply({}, x, rngs=rngs)
        traced = jax.jit(lambda r: DropPath().apply({}, x, r, rngs=rngs))(jnp.float32(rate))
        np.testing.assert_array_equal(traced, static)
    # A traced rate of 1 drops everything and its gradient stays finite (no 1 / 0 behind the mask).
    grad = jax.grad(lambda v: DropPath().apply({}, v, jnp.float32(1.0), rngs=rngs).sum())(x)
    np.testing.assert_array_equal(grad, np.zeros_like(x))


def test_scanned_encoder_applies_each_blocks_own_drop_rate():
    # Rates (0, 1): the last block's residual branches always drop, so the output is the first block's.
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 16))
    scanned = Encoder(2, 2, 32, scan=True, drop_path=(0.0, 1.0))
    params = jax.jit(scanned.init)(jax.random.PRNGKey(1), x)["params"]
    apply = jax.jit(lambda model, p, **rngs: model.apply({"params": p}, x, rngs=rngs)[0], static_argnums=0)
    y = apply(scanned, params, dropout=jax.random.PRNGKey(2))
    expected = apply(Encoder(1, 2, 32), {"block_0": unstack_blocks(params)["block_0"]})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(y, apply(scanned, params))  # evaluation keeps both blocks


def test_layouts_convert_both_ways_and_only_where_the_target_differs():
    config = tiny_config({"data": 1, "fsdp": 1})
    plain_model = build_clip(config.model)
    config.model.scan = True
    scanned_model = build_clip(config.model)
    images, tokens = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8), jnp.int32)
    plain = jax.tree.map(np.asarray, jax.jit(plain_model.init)(jax.random.PRNGKey(0), images, tokens))
    scanned_shapes = jax.eval_shape(scanned_model.init, jax.random.PRNGKey(0), images, tokens)

    stacked = match_block_layout(plain, scanned_shapes)
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(np.shape, scanned_shapes)
    np.testing.assert_array_equal(
        stacked["params"]["text"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"][1],
        plain["params"]["text"]["encoder"]["block_1"]["mlp"]["fc1"]["kernel"],
    )
    back = match_block_layout(stacked, plain)
    jax.tree.map(np.testing.assert_array_equal, back, plain)
    assert match_block_layout(plain, plain) == plain  # same layout: the same arrays, untouched
    with pytest.raises(ValueError, match="not an unscanned encoder"):
        stack_blocks({"ln": 1})

    # A transfer into the scanned tower computes the embeddings the unscanned weights compute.
    loaded, report = transplant(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), scanned_shapes), plain)
    assert not [p for p in report.initialised if "/image/" in p]
    probe = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 16, 3))
    encode = jax.jit(lambda m, v: m.apply(v, probe, method="encode_image"), static_argnums=0)
    np.testing.assert_allclose(encode(scanned_model, loaded), encode(plain_model, plain), rtol=1e-5, atol=1e-6)


def test_layer_decay_scales_of_stacked_blocks_are_the_blocks_scales():
    config = tiny_config({"data": 1, "fsdp": 1})
    config.model.image.depth = 3
    images, tokens = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8), jnp.int32)
    plain = jax.eval_shape(build_clip(config.model).init, jax.random.PRNGKey(0), images, tokens)["params"]
    config.model.scan = True
    scanned = jax.eval_shape(build_clip(config.model).init, jax.random.PRNGKey(0), images, tokens)["params"]
    plain_scales, scanned_scales = layer_lr_scales(plain, 0.5), layer_lr_scales(scanned, 0.5)
    for key in ("qkv", "out"):
        blocks = scanned_scales["image"]["encoder"]["blocks"]["attn"][key]["kernel"]
        rank = scanned["image"]["encoder"]["blocks"]["attn"][key]["kernel"].ndim
        assert blocks.shape == (3,) + (1,) * (rank - 1) and blocks.dtype == np.float32
        # Block i (layer i + 1 of L + 1 = 4) learns at 0.5 ** (4 - (i + 1)): 1/8, 1/4, 1/2.
        np.testing.assert_array_equal(blocks.ravel(), [0.125, 0.25, 0.5])
        for i in range(3):
            assert plain_scales["image"]["encoder"][f"block_{i}"]["attn"][key]["kernel"] == blocks[i].item()
    assert scanned_scales["image"]["patch_embed"]["kernel"] == plain_scales["image"]["patch_embed"]["kernel"]


def test_weight_decay_mask_judges_stacked_parameters_by_one_blocks_rank():
    leaf = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    params = {
        "encoder": {"blocks": {"ln": {"scale": leaf(3, 8)}, "fc": {"kernel": leaf(3, 8, 8), "bias": leaf(3, 8)}}},
        "ln_post": {"scale": leaf(8)},
        "proj": leaf(8, 4),
    }
    mask = weight_decay_mask(params)
    assert mask == {
        "encoder": {"blocks": {"ln": {"scale": False}, "fc": {"kernel": True, "bias": False}}},
        "ln_post": {"scale": False},
        "proj": True,
    }


def test_fsdp_keeps_the_scanned_depth_axis_whole():
    mesh = make_mesh(load_config("configs/demo.py", [("mesh.fsdp", "2"), ("mesh.data", "-1")]).mesh)
    leaf = jax.ShapeDtypeStruct((16, 8, 4), jnp.float32)  # depth 16 is the largest divisible axis
    shardings = state_shardings({"encoder": {"blocks": {"k": leaf}, "block_0": {"k": leaf}}}, mesh, 1)
    assert shardings["encoder"]["blocks"]["k"].spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    assert shardings["encoder"]["block_0"]["k"].spec == jax.sharding.PartitionSpec("fsdp", None, None)


def test_real_sharded_step_with_scan_matches_the_unscanned_step():
    config = tiny_config({"data": 4, "fsdp": 2})
    mesh = make_mesh(config.mesh)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 1000, (16, 8)).astype(np.int32)
    tokens[:, -1] = 49407
    batch = {"image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), "text": tokens}

    def one_step(scan: bool, params=None):
        config.model.scan = scan
        model = build_clip(config.model)
        tx = make_optimizer(config.optim, config.total_steps)
        init, step, _ = shard_functions(
            make_init_state(model, tx, config), make_train_step(model, tx, config, mesh), mesh, config
        )
        state = init(jax.random.PRNGKey(0))
        if params is not None:
            placed = jax.tree.map(lambda a, s: jax.device_put(a, s.sharding), params, state.params)
            state = state.replace(params=placed)
        before = jax.tree.map(np.asarray, state.params)
        state, metrics = step(state, batch)
        return before, jax.tree.map(np.asarray, state.params), float(metrics["train/loss"])

    before, after, loss = one_step(False)
    config.model.scan = True
    scanned_shapes = jax.eval_shape(
        build_clip(config.model).init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8), jnp.int32)
    )["params"]
    _, after_s, loss_s = one_step(True, match_block_layout(before, scanned_shapes))
    np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
    jax.tree.map(
        # atol: 1% of the first AdamW update (lr 1e-3); a wrongly decayed norm scale is off by 2e-4.
        lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5),
        after,
        match_block_layout(after_s, after),
    )


def test_scan_with_vitdet_windows_is_a_config_error():
    config = load_config("configs/detect/demo.py", [("model.scan", "True")])
    with pytest.raises(ConfigError, match="config.model.scan=True cannot step ViTDet"):
        validate(config, num_devices=1, process_count=1)
