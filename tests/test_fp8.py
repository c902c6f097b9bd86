"""FP8 products (clipjax.models.fp8) against a NumPy oracle that rounds with ml_dtypes' FP8 types."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from clipjax.data.transforms import normalize_images
from clipjax.errors import ConfigError
from clipjax.models.fp8 import (
    E4M3,
    E5M2,
    FP8_STATS,
    advance_amax_histories,
    dense_product,
    fp8_dot_general,
    fp8_matmul,
    fp8_matmul_delayed,
    quantize,
)
from clipjax.models.presets import build_clip
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.optim import make_optimizer
from clipjax.train.state import TrainState
from clipjax.train.step import training_step
from clipjax.validation import validate
from tests.helpers import tiny_config

ORACLE_TYPES = {E4M3: ml_dtypes.float8_e4m3fn, E5M2: ml_dtypes.float8_e5m2}


def oracle_rounding(x: np.ndarray, fp8_dtype) -> np.ndarray:
    """x rounded to the FP8 format at the smallest power-of-two scale that fits its maximum, in float64."""
    fp8 = ORACLE_TYPES[fp8_dtype]
    amax = np.abs(x).max()
    scale = 2.0 ** np.ceil(np.log2(amax / float(ml_dtypes.finfo(fp8).max))) if amax > 0 else 1.0
    return (x / scale).astype(fp8).astype(np.float64) * scale


def normal(shape, seed, std=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * std).astype(np.float32)


@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2])
def test_quantize_rounds_to_the_format_at_a_power_of_two_scale(fp8_dtype):
    largest = float(ml_dtypes.finfo(ORACLE_TYPES[fp8_dtype]).max)
    for std in (37.0, 1e-3):  # activations' and gradients' magnitudes
        x = normal((64, 48), 0, std=std)
        q, scale = quantize(jnp.asarray(x), fp8_dtype)
        assert q.dtype == fp8_dtype and scale.dtype == jnp.float32
        assert float(scale) == 2.0 ** round(np.log2(float(scale)))  # exactly a power of two
        assert largest / 2 < np.abs(x).max() / float(scale) <= largest  # the top of the range is used
        np.testing.assert_array_equal(np.asarray(q, np.float64) * float(scale), oracle_rounding(x, fp8_dtype))
    # All zeros: scale 1, no NaN; the maximum itself converts without overflowing.
    q0, scale0 = quantize(jnp.zeros((3, 3)), fp8_dtype)
    assert float(scale0) == 1.0 and not np.any(np.asarray(q0, np.float32))
    exact = jnp.asarray([largest * 4.0, -1.0], jnp.float32)
    q1, scale1 = quantize(exact, fp8_dtype)
    assert float(q1[0].astype(jnp.float32)) * float(scale1) == largest * 4.0


@pytest.mark.parametrize("recipe", ["switchback", "all"])
def test_fp8_matmul_values_and_gradients_match_the_oracle(recipe):
    x, w, g = normal((96, 40), 1, std=3.0), normal((40, 24), 2, std=0.2), normal((96, 24), 3, std=1e-3)
    out, backward = jax.vjp(lambda a, b: fp8_matmul(a, b, recipe), jnp.asarray(x), jnp.asarray(w))
    x_grad, w_grad = backward(jnp.asarray(g))
    xq, wq, gq = oracle_rounding(x, E4M3), oracle_rounding(w, E4M3), oracle_rounding(g, E5M2)
    np.testing.assert_allclose(out, xq @ wq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_grad, gq @ wq.T, rtol=1e-5, atol=1e-9)
    # SwitchBack's weight gradient sees the unrounded input and gradient; "all" rounds both.
    expected_w_grad = x.astype(np.float64).T @ g if recipe == "switchback" else xq.T @ gq
    np.testing.assert_allclose(w_grad, expected_w_grad, rtol=1e-5, atol=1e-8)
    # The rounding is real: products differ from the exact ones, by about FP8's relative precision.
    exact = x.astype(np.float64) @ w
    error = np.abs(np.asarray(out) - exact).max() / np.abs(exact).max()
    assert 1e-4 < error < 0.1
    # A non-finite input stays visible (the update guard skips the step), not rounded into finite numbers.
    for bad in (np.inf, np.nan):
        x_bad = jnp.asarray(x).at[0, 0].set(bad)
        assert not np.isfinite(np.asarray(fp8_matmul(x_bad, jnp.asarray(w), recipe))).all()


def oracle_at_scale(x: np.ndarray, fp8_dtype, scale: float) -> np.ndarray:
    """x rounded to the FP8 format at a given scale, saturating at its largest value, in float64."""
    fp8 = ORACLE_TYPES[fp8_dtype]
    largest = float(ml_dtypes.finfo(fp8).max)
    return np.clip(x / scale, -largest, largest).astype(fp8).astype(np.float64) * scale


def test_delayed_scaling_rounds_at_the_historys_scale_and_reports_this_steps_maxima():
    x, w, g = normal((96, 40), 10, std=3.0), normal((40, 24), 11, std=0.2), normal((96, 24), 12, std=1e-3)
    largest = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)
    # Earlier steps saw inputs up to 50 (scale 2^-3) and gradients up to 0.3 (E5M2: scale 2^-17).
    histories = np.array([[0.0, 50.0, 20.0], [0.3, 0.0, 0.1]], np.float32)
    x_scale, g_scale = 2.0**-3, 2.0**-17
    run = jax.vjp(lambda a, b, h: fp8_matmul_delayed(a, b, h, "all"), jnp.asarray(x), jnp.asarray(w), histories)
    out, backward = run
    x_grad, w_grad, maxima = backward(jnp.asarray(g))
    xq, gq = oracle_at_scale(x, E4M3, x_scale), oracle_at_scale(g, E5M2, g_scale)
    wq = oracle_rounding(w, E4M3)  # weights: current scaling
    np.testing.assert_allclose(out, xq @ wq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_grad, gq @ wq.T, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(w_grad, xq.T @ gq, rtol=1e-5, atol=1e-8)
    # This step's maxima (of the rounded tensors) in column 0, nothing else.
    np.testing.assert_array_equal(maxima[:, 1:], 0.0)
    assert float(maxima[0, 0]) == np.abs(xq).max() and float(maxima[1, 0]) == np.abs(gq).max()
    assert np.abs(xq).max() < largest * x_scale  # nothing saturated at these scales
    # advance: the maxima in front, the oldest entry dropped; a non-finite maximum is recorded as 0.
    advanced = advance_amax_histories(jnp.asarray(histories), maxima.at[1, 0].set(jnp.nan))
    np.testing.assert_array_equal(advanced, np.array([[maxima[0, 0], 0.0, 50.0], [0.0, 0.3, 0.0]], np.float32))

    # A history below this step's values: they saturate at the largest value, and the maximum reported is
    # twice the range, so the next scale is one power of two larger.
    small = np.array([[1.0, 0.0, 0.0], [0.3, 0.0, 0.0]], np.float32)  # scale 2^-8: range up to 1.75
    out, backward = jax.vjp(lambda a, h: fp8_matmul_delayed(a, jnp.asarray(w), h, "switchback"), jnp.asarray(x), small)
    _, maxima = backward(jnp.asarray(g))
    np.testing.assert_allclose(out, oracle_at_scale(x, E4M3, 2.0**-8) @ wq, rtol=1e-5, atol=1e-6)
    assert float(maxima[0, 0]) == 2 * largest * 2.0**-8
    # Gradients below the range: all rounded to zero, and the smallest subnormal at this scale reported, so
    # the next scale is the format's whole range (2^32) smaller and holds them.
    tiny = g * 1e-8
    _, backward = jax.vjp(lambda h: fp8_matmul_delayed(jnp.asarray(x), jnp.asarray(w), h, "all"), small)
    (maxima,) = backward(jnp.asarray(tiny))
    smallest = float(ml_dtypes.finfo(ml_dtypes.float8_e5m2).smallest_subnormal)
    assert float(maxima[1, 0]) == smallest * 2.0**-17 > np.abs(tiny).max()
    next_scale = 2.0 ** np.ceil(np.log2(smallest * 2.0**-17 / float(ml_dtypes.finfo(ml_dtypes.float8_e5m2).max)))
    assert np.abs(oracle_at_scale(tiny, E5M2, next_scale)).max() > 0
    # No history yet (all zero): scale 1. NaN reaches the output; infinity saturates like any large value.
    zero = jnp.zeros((2, 3))
    np.testing.assert_allclose(
        fp8_matmul_delayed(jnp.asarray(x), jnp.asarray(w), zero, "all"),
        oracle_at_scale(x, E4M3, 1.0) @ wq,
        rtol=1e-5,
        atol=1e-6,
    )
    x_nan, x_inf = jnp.asarray(x).at[0, 0].set(jnp.nan), jnp.asarray(x).at[0, 0].set(jnp.inf)
    assert np.isnan(np.asarray(fp8_matmul_delayed(x_nan, jnp.asarray(w), zero, "all"))[0]).all()
    assert np.isfinite(np.asarray(fp8_matmul_delayed(x_inf, jnp.asarray(w), zero, "all"))).all()


def count_fp8_products(f, *args) -> int:
    """How many products of f's lowered program (its backward pass included) take two FP8 operands."""
    lines = jax.jit(f).lower(*args).as_text().splitlines()
    return sum(line.split(" : (")[-1].count("xf8E") == 2 for line in lines if "stablehlo.dot_general" in line)


@pytest.mark.parametrize(("recipe", "products"), [("switchback", 2), ("all", 3)])
def test_a_dense_training_step_runs_the_recipes_products_in_fp8(recipe, products):
    x, w = jnp.asarray(normal((8, 16), 4)), jnp.asarray(normal((16, 4), 5))
    grads = jax.grad(lambda a, b: jnp.sum(fp8_matmul(a, b, recipe) ** 2), argnums=(0, 1))
    assert count_fp8_products(grads, x, w) == products


def test_fp8_dense_general_layers_match_the_reshaped_product():
    """The qkv projection (features (3, heads, d)) and the output projection (axis (-2, -1)) as Flax builds
    them: the same parameters as without FP8, the reshaped FP8 product's values, close to the exact layer."""
    x = jnp.asarray(normal((2, 5, 16), 6))
    for layer, inputs in [
        (dict(features=(3, 2, 8)), x),
        (dict(features=16, axis=(-2, -1)), jnp.asarray(normal((2, 5, 2, 8), 7))),
    ]:
        plain = nn.DenseGeneral(**layer)
        fp8 = nn.DenseGeneral(**layer, dot_general=fp8_dot_general("switchback"))
        params = plain.init(jax.random.PRNGKey(0), inputs)
        assert jax.tree.structure(fp8.init(jax.random.PRNGKey(0), inputs)) == jax.tree.structure(params)
        kernel, bias = params["params"]["kernel"], params["params"]["bias"]
        depth = np.prod(kernel.shape[: kernel.ndim - bias.ndim])
        flat = fp8_matmul(inputs.reshape(-1, depth), kernel.reshape(depth, -1), "switchback")
        out = fp8.apply(params, inputs)
        np.testing.assert_allclose(out, flat.reshape(out.shape) + bias, rtol=1e-6, atol=1e-6)
        exact = plain.apply(params, inputs)
        assert float(jnp.abs(out - exact).max() / jnp.abs(exact).max()) < 0.1
        # Delayed scaling: the same parameters beside a [2, H] history; applied to variables without one
        # (weights saved without delayed scaling), the layer scales by the current maxima.
        delayed = nn.DenseGeneral(**layer, **dense_product("switchback", 5))
        variables = delayed.init(jax.random.PRNGKey(0), inputs)
        assert jax.tree.structure(variables["params"]) == jax.tree.structure(params["params"])
        assert jax.tree.map(jnp.shape, variables[FP8_STATS]) == {"DelayedScalingProduct_0": {"amax_history": (2, 5)}}
        np.testing.assert_array_equal(delayed.apply(params, inputs), out)


def test_unsupported_dimension_numbers_and_recipes_are_named():
    with pytest.raises(ValueError, match="dense layer's dimension numbers"):
        fp8_dot_general("all")(jnp.ones((4, 3)), jnp.ones((4, 5)), (((0,), (0,)), ((), ())))
    with pytest.raises(ValueError, match="'fp16' is not one of"):
        fp8_dot_general("fp16")
    with pytest.raises(ValueError, match="'fp16' is not one of"):
        dense_product("fp16", 16)
    with pytest.raises(ValueError, match="amax_history -1 is negative"):
        dense_product("all", -1)
    assert dense_product("none", 16) == {}


def test_fp8_clip_has_the_same_parameters_and_close_embeddings():
    config = tiny_config({"data": -1})
    images = jnp.asarray(np.random.default_rng(8).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    tokens = jnp.asarray(np.random.default_rng(9).integers(1, 100, (4, 8)), jnp.int32)
    plain = build_clip(config.model)
    params = jax.jit(plain.init)(jax.random.PRNGKey(0), images, tokens)
    config.model.fp8_matmuls = "all"
    fp8 = build_clip(config.model)
    assert jax.tree.structure(jax.eval_shape(fp8.init, jax.random.PRNGKey(0), images, tokens)) == jax.tree.structure(
        params
    )
    exact, rounded = (jax.jit(model.apply)(params, images, tokens)[:2] for model in (plain, fp8))
    for e, r in zip(exact, rounded):
        cosine = jnp.sum(e * r, axis=-1)  # both unit rows
        assert float(cosine.min()) > 0.99 and float(jnp.abs(e - r).max()) > 0
    config.model.fp8_matmuls = "fp16"
    with pytest.raises(ConfigError, match="config.model.fp8_matmuls"):
        validate(config, num_devices=1, process_count=1)


def test_a_pretraining_step_with_delayed_scaling_records_each_layers_maxima():
    config = tiny_config({"data": 1})
    config.model.update(fp8_matmuls="all", fp8_amax_history=3)
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    state = jax.jit(make_init_state(model, tx, config))(jax.random.PRNGKey(0))
    histories = state.model_state[FP8_STATS]
    # One [2, 3] history per dense layer of each block (qkv, attention out, fc1, fc2), starting at zero.
    assert len(jax.tree.leaves(histories)) == 4 * (config.model.image.depth + config.model.text.depth)
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(histories))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 1000, (16, 8)).astype(np.int32)
    tokens[:, -1] = 49407
    batch = {"image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), "text": tokens}
    step = jax.jit(make_train_step(model, tx, config))
    first, _ = step(state, batch)
    second, metrics = step(first, batch)
    assert np.isfinite(metrics["train/loss"])

    def qkv_history(s):
        return np.asarray(
            s.model_state[FP8_STATS]["image"]["encoder"]["block_0"]["attn"]["qkv"]["DelayedScalingProduct_0"][
                "amax_history"
            ]
        )

    # Oracle: block 0's LayerNorm output, the qkv input, from the initial parameters; the first step ran
    # at scale 1, so its recorded maximum is that maximum rounded to E4M3.
    images = normalize_images(jnp.asarray(batch["image"]), config.data.normalize)
    capture = functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"])
    _, captured = jax.jit(capture)(state.variables, images, tokens)
    ln_1 = captured["intermediates"]["image"]["encoder"]["block_0"]["ln_1"]["__call__"][0]
    expected = float(np.float32(np.abs(np.asarray(ln_1)).max()).astype(ml_dtypes.float8_e4m3fn))
    np.testing.assert_allclose(qkv_history(first)[0], [expected, 0.0, 0.0], rtol=1e-6)
    assert qkv_history(first)[1, 0] > 0 and not np.any(qkv_history(first)[1, 1:])  # the gradient's maximum
    # The second step shifts the first's maxima back and records its own.
    np.testing.assert_array_equal(qkv_history(second)[:, 1], qkv_history(first)[:, 0])
    assert np.all(qkv_history(second)[:, 0] > 0) and not np.any(qkv_history(second)[:, 2])
    # The parameters and optimizer moved as in any step; the histories are not parameters.
    assert jax.tree.structure(second.params) == jax.tree.structure(state.params)
    config.model.fp8_amax_history = -1
    with pytest.raises(ConfigError, match="config.model.fp8_amax_history=-1 must be a non-negative integer"):
        validate(config, num_devices=1, process_count=1)


def test_the_finetuning_step_advances_delayed_scaling_histories_beside_the_update():
    config = tiny_config({"data": 1})
    config.data.normalize = "none"
    model = nn.Dense(3, **dense_product("all", 2))
    images = np.random.default_rng(13).integers(0, 256, (8, 2, 2, 3), dtype=np.uint8)
    batch = {"image": images, "label": np.arange(8) % 3}

    def loss_fn(params, model_state, batch, rng):
        logits = model.apply({"params": params, **model_state}, batch["image"].reshape(8, -1))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), (model_state, {})

    tx = make_optimizer(config.optim, config.total_steps)
    state = TrainState.create(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12))), tx, jax.random.PRNGKey(1))
    new_state, metrics = jax.jit(training_step(config, tx, loss_fn))(state, batch)
    history = np.asarray(new_state.model_state[FP8_STATS]["DelayedScalingProduct_0"]["amax_history"])
    # The input's maximum (scale 1: the pixels in [0, 1] round to E4M3 as they are) and the gradient's.
    largest_pixel = float(np.float32(images.max() / 255.0).astype(ml_dtypes.float8_e4m3fn))
    assert history[0, 0] == largest_pixel and history[1, 0] > 0 and not np.any(history[:, 1])
    assert np.isfinite(metrics["train/loss"]) and int(metrics["train/skipped_steps"]) == 0
    assert not np.allclose(new_state.params["kernel"], state.params["kernel"])  # the update happened too
