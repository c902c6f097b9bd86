"""ViT, text transformer and CLIP: shapes, pooling, attention, causality, presets, remat and dtypes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.defaults import base_config
from clipjax.models import CLIP, TextTransformer, VisionTransformer, build_clip, clamp_logit_scale
from clipjax.models.layers import ACTIVATIONS
from clipjax.models.presets import image_tower_dims, text_tower_dims

TINY_VIT = dict(width=16, depth=3, num_heads=2, mlp_dim=32, patch_size=4, embed_dim=8)
TINY_TEXT = dict(vocab_size=49408, context_length=12, width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8)


@pytest.fixture(scope="module")
def vit_and_params():
    model = VisionTransformer(**TINY_VIT)
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 12, 3))
    params = model.init(jax.random.PRNGKey(0), images)["params"]
    return model, params, images


def test_vit_outputs_and_grid(vit_and_params):
    model, params, images = vit_and_params
    out = model.apply({"params": params}, images, return_layers=(0, -1))
    assert out["grid"] == (4, 3)
    assert out["embedding"].shape == (2, 8)
    assert out["tokens"].shape == (2, 1 + 12, 16)
    assert sorted(out["layers"]) == [0, 2]
    assert out["layers"][2].shape == (2, 13, 16)
    np.testing.assert_allclose(out["pooled"], out["tokens"][:, 0], rtol=1e-6)
    assert out["attention"] == []


def test_vit_mean_pooling_averages_patch_tokens(vit_and_params):
    _, params, images = vit_and_params
    out = VisionTransformer(**TINY_VIT, pool="mean").apply({"params": params}, images)
    np.testing.assert_allclose(out["pooled"], out["tokens"][:, 1:].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_attention_probabilities_are_returned_and_match_the_fused_path(vit_and_params):
    model, params, images = vit_and_params
    fused = model.apply({"params": params}, images)
    explicit = model.apply({"params": params}, images, return_attention=True)
    assert len(explicit["attention"]) == 3
    weights = explicit["attention"][1]
    assert weights.shape == (2, 2, 13, 13) and weights.dtype == jnp.float32
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(explicit["embedding"], fused["embedding"], rtol=1e-5, atol=1e-6)


def test_conv_stem_keeps_the_token_grid():
    model = VisionTransformer(**{**TINY_VIT, "patch_size": 8}, stem="conv")
    images = jnp.ones((1, 32, 16, 3))
    params = model.init(jax.random.PRNGKey(0), images)["params"]
    assert {"stem_conv_0", "stem_conv_1", "stem_norm_0", "stem_norm_1"} <= set(params)
    assert params["patch_embed"]["kernel"].shape == (2, 2, 8, 16)  # width / 2 channels after two stride-2 convs
    out = model.apply({"params": params}, images)
    assert out["grid"] == (4, 2) and out["tokens"].shape == (1, 9, 16)
    with pytest.raises(ValueError, match="power-of-two"):
        VisionTransformer(**{**TINY_VIT, "patch_size": 6}, stem="conv").init(
            jax.random.PRNGKey(0), jnp.ones((1, 12, 12, 3))
        )


def test_vit_rejects_images_not_divisible_by_the_patch(vit_and_params):
    model, params, _ = vit_and_params
    with pytest.raises(ValueError, match="patch size"):
        model.apply({"params": params}, jnp.zeros((1, 10, 12, 3)))


@pytest.fixture(scope="module")
def text_and_params():
    model = TextTransformer(**TINY_TEXT)
    tokens = jnp.array([[49406, 320, 1125, 49407, 0, 0], [49406, 320, 2368, 539, 1125, 49407]], jnp.int32)
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    return model, params, tokens


def test_text_is_causal_and_pooled_at_the_end_token(text_and_params):
    model, params, tokens = text_and_params
    out = model.apply({"params": params}, tokens)
    np.testing.assert_allclose(out["pooled"][0], out["tokens"][0, 3], rtol=1e-6)
    np.testing.assert_allclose(out["pooled"][1], out["tokens"][1, 5], rtol=1e-6)
    # Changing a later token leaves every earlier position unchanged.
    changed = tokens.at[1, 4].set(999)
    out2 = model.apply({"params": params}, changed)
    np.testing.assert_allclose(out2["tokens"][1, :4], out["tokens"][1, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out2["tokens"][1, 4], out["tokens"][1, 4])
    weights = model.apply({"params": params}, tokens, return_attention=True)["attention"][0]
    assert float(jnp.abs(jnp.triu(weights[0, 0], k=1)).max()) == 0.0


def test_text_rejects_more_tokens_than_the_context(text_and_params):
    model, params, _ = text_and_params
    with pytest.raises(ValueError, match="context_length"):
        model.apply({"params": params}, jnp.ones((1, 13), jnp.int32))


def test_clip_embeddings_are_unit_and_scale_starts_at_one_over_temperature():
    model = CLIP(image=VisionTransformer(**TINY_VIT), text=TextTransformer(**TINY_TEXT))
    images, tokens = jnp.ones((3, 8, 8, 3)), jnp.ones((3, 5), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), images, tokens)["params"]
    image_emb, text_emb, scale = model.apply({"params": params}, images, tokens)
    assert image_emb.dtype == text_emb.dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(image_emb, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(text_emb, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)
    clamped = clamp_logit_scale({**params, "logit_scale": jnp.float32(9.0)}, 100.0)
    np.testing.assert_allclose(jnp.exp(clamped["logit_scale"]), 100.0, rtol=1e-5)


def test_presets_and_overrides():
    config = base_config().model
    assert image_tower_dims(config) == dict(width=768, depth=12, heads=12, mlp_dim=3072, patch_size=16)
    assert text_tower_dims(config) == dict(width=512, depth=12, heads=8, mlp_dim=2048)
    config.name = "vit_l14"
    config.image.depth = 6
    assert image_tower_dims(config) == dict(width=1024, depth=6, heads=16, mlp_dim=4096, patch_size=14)


def test_vit_b16_parameter_count_matches_clip():
    # OpenAI's ViT-B/16 image tower has 86.2M parameters (the paper's table: 86.3M with the head).
    config = base_config().model
    model = build_clip(config)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 77), jnp.int32))
    )["params"]
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    assert 86.0e6 < count(shapes["image"]) < 86.4e6
    assert 63.0e6 < count(shapes["text"]) < 63.5e6


def test_remat_and_bfloat16_keep_float32_params_and_close_outputs():
    config = base_config().model
    config.update(name="vit_ti16", image_size=16, embed_dim=8)
    config.image.update(width=16, depth=2, heads=2, mlp_dim=32, patch_size=8)
    config.text.update(width=16, depth=2, heads=2, mlp_dim=32, context_length=8)
    images, tokens = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 3)), jnp.ones((2, 8), jnp.int32)
    reference = build_clip(config)
    params = jax.jit(reference.init)(jax.random.PRNGKey(0), images, tokens)["params"]

    def loss_and_grads(model):  # jitted: op by op, the remat and bfloat16 passes take most of a minute
        def loss(p):
            image_emb, text_emb, _ = model.apply({"params": p}, images, tokens)
            return jnp.sum(image_emb * text_emb)

        return jax.jit(jax.value_and_grad(loss))(params)

    value, grads = loss_and_grads(reference)
    config.remat = "full"
    remat_value, remat_grads = loss_and_grads(build_clip(config))
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads)

    config.remat, config.dtype = "none", "bfloat16"
    low = build_clip(config)
    low_params = jax.eval_shape(low.init, jax.random.PRNGKey(0), images, tokens)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(low_params))
    low_value, _ = loss_and_grads(low)
    np.testing.assert_allclose(low_value, value, rtol=0.05, atol=0.05)


def test_activations_are_their_formulas():
    x = np.linspace(-4.0, 4.0, 101)
    erf = np.vectorize(math.erf)
    expected = {
        "gelu": 0.5 * x * (1 + erf(x / math.sqrt(2))),
        "quick_gelu": x / (1 + np.exp(-1.702 * x)),
        "gelu_tanh": 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    }
    assert sorted(ACTIVATIONS) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(ACTIVATIONS[name](jnp.asarray(x, jnp.float32)), values, rtol=1e-5, atol=1e-6)
    assert np.abs(expected["gelu_tanh"] - expected["gelu"]).max() > 1e-4  # two different functions
