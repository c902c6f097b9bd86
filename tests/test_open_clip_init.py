"""Towers trained from scratch start as open_clip's do: every weight's spread (and whether it is a normal or a
uniform draw) against open_clip's own freshly built text and vision transformers, parameter by parameter."""

import jax
import jax.numpy as jnp
import numpy as np
import open_clip.transformer as oc
import torch

from clipjax.models import TextTransformer, VisionTransformer

WIDTH, DEPTH, HEADS, MLP = 96, 6, 2, 384


def kurtosis(x: np.ndarray) -> float:
    """E[x^4] / E[x^2]^2: 3 for a normal draw, 1.8 for a uniform one."""
    x = x.astype(np.float64).ravel()
    return float(np.mean(x**4) / np.mean(x**2) ** 2)


def assert_same_draw(ours: np.ndarray, theirs: np.ndarray, name: str) -> None:
    assert ours.size == theirs.size, name
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.06, err_msg=name)
    assert abs(kurtosis(ours) - kurtosis(theirs)) < 0.35, (name, kurtosis(ours), kurtosis(theirs))


def torch_params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {name: p.detach().numpy() for name, p in module.named_parameters()}


def test_text_tower_starts_as_open_clips():
    theirs = torch_params(
        oc.TextTransformer(context_length=77, vocab_size=2000, width=WIDTH, heads=HEADS, layers=DEPTH, output_dim=64)
    )
    model = TextTransformer(2000, 77, WIDTH, DEPTH, HEADS, MLP, embed_dim=64)
    ours = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 77), jnp.int32))["params"]
    block = lambda i: ours["encoder"][f"block_{i}"]  # noqa: E731
    pairs = {
        "token_embedding.weight": ours["token_embed"]["embedding"],
        "positional_embedding": ours["pos_embed"],
        "text_projection": ours["proj"]["kernel"],
    }
    for i in (0, DEPTH - 1):
        pairs |= {
            f"transformer.resblocks.{i}.attn.in_proj_weight": block(i)["attn"]["qkv"]["kernel"],
            f"transformer.resblocks.{i}.attn.out_proj.weight": block(i)["attn"]["out"]["kernel"],
            f"transformer.resblocks.{i}.mlp.c_fc.weight": block(i)["mlp"]["fc1"]["kernel"],
            f"transformer.resblocks.{i}.mlp.c_proj.weight": block(i)["mlp"]["fc2"]["kernel"],
        }
    for name, value in pairs.items():
        assert_same_draw(np.asarray(value), theirs[name], name)


def test_vision_tower_in_the_clip_layout_starts_as_open_clips():
    theirs = torch_params(
        oc.VisionTransformer(
            image_size=32, patch_size=8, width=WIDTH, layers=DEPTH, heads=HEADS, mlp_ratio=MLP / WIDTH, output_dim=64
        )
    )
    model = VisionTransformer(WIDTH, DEPTH, HEADS, MLP, patch_size=8, embed_dim=64)
    ours = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    block = ours["encoder"]["block_0"]
    pairs = {
        "class_embedding": ours["cls_token"],
        "positional_embedding": ours["pos_embed"],
        "proj": ours["proj"]["kernel"],
        "transformer.resblocks.0.attn.in_proj_weight": block["attn"]["qkv"]["kernel"],
        "transformer.resblocks.0.attn.out_proj.weight": block["attn"]["out"]["kernel"],
        "transformer.resblocks.0.mlp.c_fc.weight": block["mlp"]["fc1"]["kernel"],
        "transformer.resblocks.0.mlp.c_proj.weight": block["mlp"]["fc2"]["kernel"],
    }
    for name, value in pairs.items():
        value = np.asarray(value)
        if value.size < 1000:  # the CLS token: too few values for a spread within 6%; its scale only
            np.testing.assert_allclose(value.std(), theirs[name].std(), rtol=0.3, err_msg=name)
            continue
        assert_same_draw(value, theirs[name], name)
