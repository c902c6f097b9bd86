"""Stochastic depth (drop path) of the image towers: off without a "dropout" rng or at rate 0 (bit-identical
outputs), per-sample Bernoulli masks with timm's 1 / (1 - rate) scaling, timm's linear per-block rates and
placement (ViT and MCi), deterministic per key, and the same masks when nn.remat recomputes a block."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from clipjax.defaults import base_config
from clipjax.models import VisionTransformer
from clipjax.models.layers import (
    LAYER_NORM_EPS,
    DropPath,
    EncoderBlock,
    MlpBlock,
    SelfAttention,
    drop_path_rates,
)
from clipjax.models.mci import MCI_PRESETS, build_mci
from clipjax.models.presets import build_image_tower

TINY_VIT = dict(width=16, depth=3, num_heads=2, mlp_dim=32, patch_size=4, embed_dim=8)


@pytest.fixture(scope="module")
def vit_params():
    images = jax.random.normal(jax.random.key(1), (8, 16, 12, 3))
    params = VisionTransformer(**TINY_VIT).init(jax.random.key(0), images)["params"]
    return params, images


def traced_init(module: nn.Module, *args) -> tuple[dict[tuple[str, ...], float], dict]:
    """Traces `module.init` abstractly (no compute): ({path of every DropPath called: its rate}, variable
    shapes)."""
    sites = {}

    def record(f, f_args, f_kwargs, context):
        if isinstance(context.module, DropPath) and context.method_name == "__call__":
            sites[context.module.path] = context.module.rate
        return f(*f_args, **f_kwargs)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    return sites, shapes


MCI_IMAGES = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)


@functools.cache
def traced_mci0(rate: float) -> tuple[dict[tuple[str, ...], float], dict]:
    """`traced_init` of mci0 (8-d output) at stochastic depth `rate`, on 64x64 images (cached: tracing is slow)."""
    return traced_init(build_mci("mci0", num_classes=8, drop_path=rate), MCI_IMAGES)


def timm_model(name: str, rate: float):
    """timm's model `name` with drop_path_rate `rate`, on the meta device (structure only: nothing allocated)."""
    timm = pytest.importorskip("timm")
    return timm.create_model(name, drop_path_rate=rate, device="meta")


# ---------------------------------------------------------------------------------------------------------
# DropPath alone


def test_drop_path_statistics_on_ones():
    rate, n = 0.25, 4096
    x = jnp.ones((n, 3, 5), jnp.float32)
    out = np.asarray(DropPath(rate).apply({}, x, rngs={"dropout": jax.random.key(7)}))
    assert out.shape == x.shape and out.dtype == np.float32
    flat = out.reshape(n, -1)
    assert (flat == flat[:, :1]).all(), "a sample is dropped or kept as a whole"
    dropped = flat[:, 0] == 0
    # Binomial std of the fraction is sqrt(0.25 * 0.75 / 4096) ~ 0.007; 0.03 is > 4 std.
    assert abs(dropped.mean() - rate) < 0.03
    np.testing.assert_allclose(flat[~dropped], 1 / (1 - rate), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.04  # the scaling keeps the expectation


def test_drop_path_is_the_identity_without_rng_or_rate():
    x = jax.random.normal(jax.random.key(0), (4, 6, 8), jnp.bfloat16)
    assert DropPath(0.5).apply({}, x) is x  # no "dropout" rng: evaluation
    assert DropPath(0.0).apply({}, x, rngs={"dropout": jax.random.key(1)}) is x
    out = DropPath(0.5).apply({}, x, rngs={"dropout": jax.random.key(1)})
    assert out.dtype == jnp.bfloat16
    assert (DropPath(1.0).apply({}, x, rngs={"dropout": jax.random.key(1)}) == 0).all()
    with pytest.raises(ValueError, match="drop path rate"):
        DropPath(1.5).apply({}, x, rngs={"dropout": jax.random.key(1)})


def test_drop_path_rates_are_timms_linspace():
    for rate, depth in [(0.1, 12), (0.3, 5), (0.2, 1), (0.0, 4)]:
        np.testing.assert_allclose(drop_path_rates(rate, depth), np.linspace(0, rate, depth), rtol=0, atol=0)
    assert drop_path_rates(0.2, 1) == (0.0,)
    with pytest.raises(ValueError):
        drop_path_rates(-0.1, 3)


# ---------------------------------------------------------------------------------------------------------
# ViT


def test_encoder_block_drops_whole_residual_branches():
    """Oracle built from the block's parts: each sample is x, x + 2 attn, x + 2 mlp, or both (rate 0.5)."""
    x = jax.random.normal(jax.random.key(0), (8, 13, 16))  # the tiny ViT's token shape: eager ops are cached
    block = EncoderBlock(num_heads=2, mlp_dim=32, drop_path=0.5)
    params = block.init(jax.random.key(1), x)["params"]
    out, _ = block.apply({"params": params}, x, rngs={"dropout": jax.random.key(2)})

    def ln(name, h):
        return nn.LayerNorm(epsilon=LAYER_NORM_EPS).apply({"params": params[name]}, h)

    def attn(h):
        return SelfAttention(2).apply({"params": params["attn"]}, ln("ln_1", h))[0]

    def mlp(h):
        return MlpBlock(32).apply({"params": params["mlp"]}, ln("ln_2", h))

    kept_attn = x + 2 * attn(x)
    candidates = {  # (attention kept, mlp kept) -> block output
        (False, False): x,
        (True, False): kept_attn,
        (False, True): x + 2 * mlp(x),
        (True, True): kept_attn + 2 * mlp(kept_attn),
    }
    seen = set()
    for i in range(x.shape[0]):
        match = [k for k, c in candidates.items() if np.allclose(out[i], c[i], rtol=1e-5, atol=1e-5)]
        assert len(match) == 1, f"sample {i} is none of the four branch combinations"
        seen.add(match[0])
    assert len(seen) == 4  # every combination occurs in 8 samples at rate 0.5 (with this key)


def test_vit_is_unchanged_without_rng_or_rate(vit_params):
    params, images = vit_params
    want = VisionTransformer(**TINY_VIT).apply({"params": params}, images)["embedding"]
    no_rng = VisionTransformer(**TINY_VIT, drop_path=0.3).apply({"params": params}, images)["embedding"]
    rate_0 = VisionTransformer(**TINY_VIT).apply({"params": params}, images, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_array_equal(no_rng, want)
    np.testing.assert_array_equal(rate_0["embedding"], want)


def test_vit_drop_path_is_random_per_key_and_deterministic(vit_params):
    params, images = vit_params
    model = VisionTransformer(**TINY_VIT, drop_path=0.5)
    eval_out = model.apply({"params": params}, images)["embedding"]

    def run(seed):
        return model.apply({"params": params}, images, rngs={"dropout": jax.random.key(seed)})["embedding"]

    a, a_again, b = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, a_again)
    assert not np.allclose(a, eval_out) and not np.allclose(a, b)
    assert np.isfinite(a).all()


def test_vit_rates_and_sites_match_numpy_and_timm():
    model = VisionTransformer(width=16, depth=12, num_heads=2, mlp_dim=32, patch_size=4, embed_dim=8, drop_path=0.1)
    sites, _ = traced_init(model, jnp.zeros((1, 8, 8, 3)))
    want = np.linspace(0, 0.1, 12)
    assert len(sites) == 24
    for i in range(12):
        for branch in (1, 2):
            assert sites[("encoder", f"block_{i}", f"drop_path_{branch}")] == pytest.approx(want[i], abs=1e-12)
    blocks = timm_model("vit_tiny_patch16_224", 0.1).blocks  # depth 12, like `model`
    assert len(blocks) == 12
    for i, block in enumerate(blocks):
        timm_rate = getattr(block.drop_path1, "drop_prob", 0.0)  # timm uses nn.Identity at rate 0
        assert timm_rate == getattr(block.drop_path2, "drop_prob", 0.0)
        assert sites[("encoder", f"block_{i}", "drop_path_1")] == pytest.approx(timm_rate, rel=1e-6)


def test_vit_gradients_under_remat_use_the_forward_masks(vit_params):
    """nn.remat recomputes each block in the backward pass: it must see the rng and draw the same masks."""
    params, images = vit_params
    rngs = {"dropout": jax.random.key(3)}
    remat = VisionTransformer(**TINY_VIT, drop_path=0.5, remat="full")
    # The rng reaches the rematerialised blocks: the forward pass is the non-remat one with the same key.
    eval_out = VisionTransformer(**TINY_VIT).apply({"params": params}, images)["embedding"]
    remat_out = remat.apply({"params": params}, images, rngs=rngs)["embedding"]
    assert not np.allclose(remat_out, eval_out)

    def grads(model):  # jitted: op by op this test took tens of seconds
        loss = lambda p: (model.apply({"params": p}, images, rngs=rngs)["embedding"] ** 2).sum()  # noqa: E731
        return jax.jit(jax.grad(loss))(params)

    # Masks redrawn differently in the recomputation would give other gradients than the plain backward pass.
    full, none = grads(remat), grads(VisionTransformer(**TINY_VIT, drop_path=0.5))
    for g_full, g_none in zip(jax.tree.leaves(full), jax.tree.leaves(none)):
        assert np.isfinite(g_full).all()
        np.testing.assert_allclose(g_full, g_none, rtol=1e-4, atol=1e-5 * np.abs(g_none).max())


def test_parameter_trees_are_unchanged(vit_params):
    params, images = vit_params
    with_dp = jax.eval_shape(VisionTransformer(**TINY_VIT, drop_path=0.2).init, jax.random.key(0), images)
    assert jax.tree.structure(with_dp["params"]) == jax.tree.structure(params)
    plain, dropped = traced_mci0(0.0)[1], traced_mci0(0.1)[1]
    assert jax.tree.map(lambda a: a.shape, plain) == jax.tree.map(lambda a: a.shape, dropped)


def test_build_image_tower_passes_drop_path():
    config = base_config()
    config.model.drop_path = 0.1
    for name in ("vit_ti16", "mci0"):
        config.model.name = name
        assert build_image_tower(config.model).drop_path == 0.1
    old = config.model.to_dict()
    del old["drop_path"]  # a config saved before the key existed
    assert build_image_tower(ConfigDict(old)).drop_path == 0.0


# ---------------------------------------------------------------------------------------------------------
# MCi


def test_mci_rates_and_sites_match_timm_fastvit():
    """One linspace over all 20 blocks of mci0; RepMixer blocks drop only the ConvFFN branch, attention blocks
    both branches; nothing in the token mixers, positional encoding or downsampling."""
    sites = traced_mci0(0.1)[0]
    depths = MCI_PRESETS["mci0"]["depths"]
    want = np.linspace(0, 0.1, sum(depths))
    expected, index = {}, 0
    for stage, depth in enumerate(depths):
        for j in range(depth):
            names = ("drop_path_1", "drop_path_2") if stage == 3 else ("drop_path",)
            for name in names:
                expected[(f"stages_{stage}", f"blocks_{j}", name)] = want[index]
            index += 1
    assert sites.keys() == expected.keys()
    for path, rate in expected.items():
        assert sites[path] == pytest.approx(rate, abs=1e-12)
    timm_sites = {}
    for name, module in timm_model("fastvit_mci0", 0.1).named_modules():
        parts = name.split(".")
        if parts[0] == "stages" and parts[-1].startswith("drop_path"):
            ours = (
                f"stages_{parts[1]}",
                f"blocks_{parts[3]}",
                parts[-1].replace("path1", "path_1").replace("path2", "path_2"),
            )
            timm_sites[ours] = getattr(module, "drop_prob", 0.0)  # timm uses nn.Identity at rate 0
    assert timm_sites.keys() == sites.keys()
    for path, rate in timm_sites.items():
        assert sites[path] == pytest.approx(rate, rel=1e-6, abs=1e-9)


def mci0_variables() -> dict:
    """Synthetic mci0 variables, without running its (slow, on CPU) init: LeCun-normal kernels, zero biases,
    identity BatchNorms, and layer scales of 0.1 (timm's 1e-5 would make the residual branches negligible)."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "gamma":
            return jnp.full(leaf.shape, 0.1, leaf.dtype)
        if name in ("var", "scale"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("mean", "bias"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, traced_mci0(0.1)[1])


def test_mci_drop_path_runs_and_differs_from_evaluation():
    images = jax.random.uniform(jax.random.key(0), MCI_IMAGES.shape)
    model = build_mci("mci0", num_classes=8, drop_path=0.1)
    variables = mci0_variables()
    apply = jax.jit(lambda m, v, **rngs: m.apply(v, images, rngs=rngs)["embedding"], static_argnums=0)
    want = apply(build_mci("mci0", num_classes=8), variables)
    np.testing.assert_array_equal(apply(model, variables), want)  # no rng: evaluation
    got = apply(model, variables, dropout=jax.random.key(1))
    assert np.isfinite(got).all()
    # Rounding alone would stay near 1e-6 of the scale; dropped branches move the embedding by percents.
    assert np.abs(got - want).max() > 1e-3 * np.abs(want).max()
