"""Layer-wise lr decay: layer indices of ViT (patch and conv stem) and MCi trees against hand-written tables,
the scales, and the optimizer's updates against plain AdamW times the scale and a numpy AdamW step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from clipjax.models import VisionTransformer
from clipjax.models.mci import build_mci
from clipjax.train.layer_decay import layer_ids, layer_lr_scales
from clipjax.train.optim import lr_schedule, make_optimizer, weight_decay_mask


def abstract_params(module, size: int) -> dict:
    """The module's parameter tree as ShapeDtypeStructs (no compute), from a [1, size, size, 3] input."""
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]


def tiny_vit(depth: int, stem: str = "patch") -> VisionTransformer:
    return VisionTransformer(width=8, depth=depth, num_heads=2, mlp_dim=16, patch_size=8, embed_dim=4, stem=stem)


def flat(tree) -> dict[str, object]:
    """{"image/encoder/block_0/attn/qkv/kernel": leaf, ...}."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


def expect(ids, table: dict[str, int]) -> None:
    """Every leaf's id is the table's value for the longest path prefix of it listed there."""
    for path, layer in flat(ids).items():
        prefix = max((p for p in table if path == p or path.startswith(p + "/")), key=len)
        assert layer == table[prefix], f"{path}: {layer} != {table[prefix]} (from {prefix})"


def head(num_classes: int = 3, width: int = 4) -> dict:
    return {
        "kernel": jax.ShapeDtypeStruct((width, num_classes), jnp.float32),
        "bias": jax.ShapeDtypeStruct((num_classes,), jnp.float32),
    }


def test_vit_classifier_layers_count_blocks_numerically():
    depth = 11  # block_10 must come after block_9, not after block_1
    params = {"image": abstract_params(tiny_vit(depth), 16), "head": head(), "fc_norm": {"scale": head()["bias"]}}
    ids, layers = layer_ids(params)
    assert layers == 11
    table = {
        "image/patch_embed": 0,
        "image/cls_token": 0,
        "image/pos_embed": 0,
        "image/ln_pre": 0,
        "image/encoder/block_0": 1,
        "image/encoder/block_1": 2,
        "image/encoder/block_2": 3,
        "image/encoder/block_3": 4,
        "image/encoder/block_4": 5,
        "image/encoder/block_5": 6,
        "image/encoder/block_6": 7,
        "image/encoder/block_7": 8,
        "image/encoder/block_8": 9,
        "image/encoder/block_9": 10,
        "image/encoder/block_10": 11,
        "image/ln_post": 12,
        "image/proj": 12,
        "head": 12,
        "fc_norm": 12,
    }
    assert set(flat(params["image"])) >= {"patch_embed/kernel", "encoder/block_10/mlp/fc2/kernel", "proj/kernel"}
    expect(ids, table)
    assert jax.tree.structure(ids) == jax.tree.structure(params)


def test_conv_stem_vit_inside_clip_puts_the_stem_at_0_and_the_text_tower_with_the_head():
    params = {
        "image": abstract_params(tiny_vit(2, stem="conv"), 16),
        "text": {"encoder": {"block_0": {"w": jax.ShapeDtypeStruct((2, 2), jnp.float32)}}},
        "logit_scale": jax.ShapeDtypeStruct((), jnp.float32),
    }
    assert {"stem_conv_0", "stem_norm_0", "stem_conv_1", "stem_norm_1"} <= set(params["image"])
    ids, layers = layer_ids(params)
    assert layers == 2
    table = {
        "image/stem_conv_0": 0,
        "image/stem_norm_0": 0,
        "image/stem_conv_1": 0,
        "image/stem_norm_1": 0,
        "image/patch_embed": 0,
        "image/cls_token": 0,
        "image/pos_embed": 0,
        "image/ln_pre": 0,
        "image/encoder/block_0": 1,
        "image/encoder/block_1": 2,
        "image/ln_post": 3,
        "image/proj": 3,
        "text": 3,
        "logit_scale": 3,
    }
    expect(ids, table)


def test_mci0_numbers_blocks_across_stages_with_downsampling_at_each_stage_start():
    params = {"image": abstract_params(build_mci("mci0", num_classes=8), 64), "head": head(width=8)}
    ids, layers = layer_ids(params)
    assert layers == 20  # depths (2, 6, 10, 2)
    table = {
        "image/stem_0": 0,
        "image/stem_1": 0,
        "image/stem_2": 0,
        "image/stages_0/blocks_0": 1,
        "image/stages_0/blocks_1": 2,
        "image/stages_1/downsample": 3,
        "image/stages_1/blocks_0": 3,
        "image/stages_1/blocks_1": 4,
        "image/stages_1/blocks_2": 5,
        "image/stages_1/blocks_3": 6,
        "image/stages_1/blocks_4": 7,
        "image/stages_1/blocks_5": 8,
        "image/stages_2/downsample": 9,
        "image/stages_2/blocks_0": 9,
        "image/stages_2/blocks_1": 10,
        "image/stages_2/blocks_2": 11,
        "image/stages_2/blocks_3": 12,
        "image/stages_2/blocks_4": 13,
        "image/stages_2/blocks_5": 14,
        "image/stages_2/blocks_6": 15,
        "image/stages_2/blocks_7": 16,
        "image/stages_2/blocks_8": 17,
        "image/stages_2/blocks_9": 18,
        "image/stages_3/downsample": 19,
        "image/stages_3/pos_emb": 19,
        "image/stages_3/blocks_0": 19,
        "image/stages_3/blocks_1": 20,
        "image/final_conv": 21,
        "image/head": 21,
        "head": 21,
    }
    assert set(params["image"]) == {f"stem_{i}" for i in range(3)} | {f"stages_{i}" for i in range(4)} | {
        "final_conv",
        "head",
    }
    expect(ids, table)


def test_scales_are_decay_to_the_distance_from_the_head():
    params = {"image": abstract_params(tiny_vit(3), 16), "head": head()}
    ids, layers = layer_ids(params)
    scales = layer_lr_scales(params, 0.65)
    for layer, scale in zip(jax.tree.leaves(ids), jax.tree.leaves(scales)):
        assert scale.dtype == np.float32 and scale == np.float32(0.65 ** (layers + 1 - layer))
    assert flat(scales)["head/kernel"] == 1.0 and flat(scales)["image/patch_embed/kernel"] == np.float32(0.65**4)
    assert all(s == 1.0 for s in jax.tree.leaves(layer_lr_scales(params, 1.0)))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"text": {}, "logit_scale": 0.0}, "needs the image tower under the key 'image'"),
        ({"image": {"conv": {"kernel": 0.0}}, "head": {}}, "found no ViT .* or MCi .* tower under 'image'"),
        ({"image": {"encoder": {"block_0": {}, "block_2": {}}}}, r"numbered \[0, 2\]"),
    ],
)
def test_unrecognisable_trees_are_a_one_line_value_error(params, message):
    with pytest.raises(ValueError, match=message) as error:
        layer_ids(params)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------------------------
# The optimizer


def optim_config(**overrides) -> ConfigDict:
    config = ConfigDict(
        dict(
            lr=1e-3,
            warmup_steps=1,
            min_lr_ratio=0.0,
            weight_decay=0.2,
            b1=0.9,
            b2=0.95,
            eps=1e-6,
            grad_clip_norm=1.0,
            layer_decay=1.0,
        )
    )
    config.update(overrides)
    return config


def toy_params() -> dict:
    """A hand-made ViT classifier tree (depth 2) with matrices (decayed) and vectors (not decayed) per layer."""
    rng = np.random.default_rng(0)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {
        "image": {
            "patch_embed": {"kernel": normal(2, 2, 3, 4)},
            "cls_token": normal(4),
            "encoder": {f"block_{i}": {"mlp": {"fc1": {"kernel": normal(4, 4), "bias": normal(4)}}} for i in range(2)},
            "ln_post": {"scale": normal(4)},
            "proj": {"kernel": normal(4, 4)},
        },
        "head": {"kernel": normal(4, 3), "bias": normal(3)},
    }


def toy_grads(seed: int, params: dict) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def test_layer_decay_scales_each_adamw_update_including_weight_decay():
    params = toy_params()
    total = 100
    plain = make_optimizer(optim_config(), total, params)
    decayed = make_optimizer(optim_config(layer_decay=0.65), total, params)
    scales = layer_lr_scales(params, 0.65)
    plain_state, decayed_state = plain.init(params), decayed.init(params)
    for step in range(3):
        grads = toy_grads(step, params)
        plain_updates, plain_state = jax.jit(plain.update)(grads, plain_state, params)
        decayed_updates, decayed_state = jax.jit(decayed.update)(grads, decayed_state, params)
        for name, u in flat(decayed_updates).items():
            np.testing.assert_allclose(u, flat(plain_updates)[name] * flat(scales)[name], rtol=1e-6, err_msg=name)
        if step == 0:
            # Numpy AdamW, first step: bias-corrected Adam moves by g / (|g| + eps); the clip scales g by
            # 1 / max(1, |g|); decoupled decay lr * wd * p on matrices only; all times lr(0) * scale.
            norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
            lr = float(lr_schedule(optim_config(), total)(0))
            masks, ps, gs = flat(weight_decay_mask(params)), flat(params), flat(grads)
            for name, u in flat(decayed_updates).items():
                g = np.asarray(gs[name]) / max(1.0, norm)
                adam = g / (np.abs(g) + 1e-6) + (0.2 * np.asarray(ps[name]) if masks[name] else 0.0)
                np.testing.assert_allclose(u, -lr * flat(scales)[name] * adam, rtol=2e-5, err_msg=name)
    head_scale, stem_scale = flat(scales)["head/kernel"], flat(scales)["image/patch_embed/kernel"]
    assert head_scale == 1.0 and stem_scale == np.float32(0.65**3)


def test_layer_decay_one_or_no_params_is_exactly_the_previous_optimizer():
    params, grads = toy_params(), toy_grads(1, toy_params())
    legacy = optim_config()
    del legacy["layer_decay"]  # a config from before the key existed
    config = optim_config()
    previous = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(
            lr_schedule(config, 100), config.b1, config.b2, config.eps, weight_decay=0.2, mask=weight_decay_mask
        ),
    )
    expected, _ = jax.jit(previous.update)(grads, previous.init(params), params)
    for tx in (
        make_optimizer(config, 100, params),
        make_optimizer(legacy, 100),
        make_optimizer(optim_config(layer_decay=0.65), 100),  # no params: as before
    ):
        updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        jax.tree.map(np.testing.assert_array_equal, updates, expected)
        assert jax.tree.structure(tx.init(params)) == jax.tree.structure(previous.init(params))


def test_layer_decay_without_an_image_tower_is_refused():
    with pytest.raises(ValueError, match="image tower under the key 'image'"):
        make_optimizer(optim_config(layer_decay=0.65), 100, {"w": jnp.ones(2)})
