"""Which attention kernel runs, the odd-length padding cuDNN needs, and the FLOP formula behind MFU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.config import load_config
from clipjax.defaults import base_config
from clipjax.errors import ConfigError
from clipjax.models import build_clip
from clipjax.models.flops import clip_forward_flops, clip_train_flops_per_image, transformer_forward_flops
from clipjax.models.layers import attention_implementation, fused_attention
from clipjax.validation import validate


@pytest.mark.parametrize(
    "requested, dtype, head_dim, platform, expected",
    [
        ("auto", jnp.bfloat16, 64, "cuda", "cudnn"),
        ("auto", jnp.float16, 32, "cuda", "cudnn"),
        ("auto", jnp.float32, 64, "cuda", "xla"),  # cuDNN's flash attention is half precision only
        ("auto", jnp.bfloat16, 12, "cuda", "xla"),  # head dim not a multiple of 8
        ("auto", jnp.bfloat16, 256, "cuda", "xla"),
        ("auto", jnp.bfloat16, 64, "rocm", "xla"),
        ("auto", jnp.bfloat16, 64, "tpu", "xla"),
        ("auto", jnp.bfloat16, 64, "cpu", "xla"),
        ("xla", jnp.bfloat16, 64, "cuda", "xla"),
        ("cudnn", jnp.bfloat16, 64, "cuda", "cudnn"),
    ],
)
def test_attention_implementation_picks_cudnn_only_where_it_runs(requested, dtype, head_dim, platform, expected):
    assert attention_implementation(requested, dtype, head_dim, platform) == expected


def test_explicit_cudnn_where_it_cannot_run_names_every_reason():
    with pytest.raises(ValueError, match="CUDA GPU.*'tpu'.*bfloat16 or float16.*float32.*head dim.*12"):
        attention_implementation("cudnn", jnp.float32, 12, "tpu")
    with pytest.raises(ValueError, match="not one of"):
        attention_implementation("flash", jnp.bfloat16, 64, "cuda")


def test_config_asking_for_cudnn_on_this_cpu_is_a_one_line_config_error():
    config = base_config()
    config.model.attention = "cudnn"
    config.model.dtype = "bfloat16"
    with pytest.raises(ConfigError, match=r"config.model.attention='cudnn' \(text tower\).*CUDA GPU") as e:
        validate(config, num_devices=1, process_count=1)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("n, causal", [(197, False), (77, True), (9, True)])
def test_odd_length_padding_changes_neither_output_nor_gradients(n, causal):
    # The padded path is what cuDNN runs (JAX's cuDNN training kernels need an even length); checked
    # here through XLA's kernel, which takes the same lengths and masks.
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, n, 3, 16)) for i in range(3))

    def loss(q, k, v, pad):
        return jnp.sum(fused_attention(q, k, v, causal, "xla", pad_odd=pad) ** 2)

    # Jitted: op by op, the gradients alone took seconds per case.
    attend = jax.jit(lambda q, k, v, pad: fused_attention(q, k, v, causal, "xla", pad_odd=pad), static_argnums=3)
    grads = jax.jit(jax.grad(loss, (0, 1, 2)), static_argnums=3)
    plain = attend(q, k, v, False)
    padded = attend(q, k, v, True)
    assert padded.shape == plain.shape == (2, n, 3, 16)
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(q, k, v, False), grads(q, k, v, True)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # Against a softmax written out in numpy, so both paths are checked, not only their agreement.
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
    if causal:
        logits = np.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(plain, np.einsum("bhqk,bkhd->bqhd", weights, v), rtol=1e-4, atol=1e-5)


def test_vit_b16_flops_match_the_published_count():
    # REFERENCE.md / the throughput issue: 41.1 GFLOP forward per pair, 123.3 per training step.
    config = load_config("configs/pretrain/vit_b16_datacompdr.py", [])
    flops = clip_forward_flops(config.model)
    assert flops["image"] + flops["text"] == pytest.approx(41.1e9, rel=2e-3)
    assert clip_train_flops_per_image(config.model) == pytest.approx(123.3e9, rel=2e-3)
    assert clip_train_flops_per_image(config.model, 2) == pytest.approx(3 * (flops["image"] + 2 * flops["text"]))
    # One block of width w over n tokens, counted by hand: 4 w x w projections, the MLP, q.k and weights.v.
    w, m, n = 8, 32, 5
    assert transformer_forward_flops(n, w, 1, m) == n * (2 * 4 * w * w + 2 * 2 * w * m) + 2 * 2 * n * n * w
    # MobileCLIP-B's stem in place of the 16x16 patch embedding (224 px): a 4x4/4 conv 3 -> 192 over 56 x 56
    # outputs, a 2x2/2 conv 192 -> 192 over 28 x 28 and a 2x2/2 patch embedding 192 -> 768 over 14 x 14.
    config.model.image.stem = "mci"
    stem = 2 * (56 * 56 * 48 * 192 + 28 * 28 * 4 * 192 * 192 + 14 * 14 * 4 * 192 * 768)
    assert stem == 520_224_768
    patch_embedding = 2 * 14 * 14 * 16 * 16 * 3 * 768
    assert clip_forward_flops(config.model)["image"] - flops["image"] == stem - patch_embedding


def test_flop_formula_agrees_with_xla_on_a_matmul_dominated_clip():
    config = base_config()
    config.model.update(name="vit_s16", image_size=64, embed_dim=128)
    config.model.image.update(width=256, depth=2, heads=4, mlp_dim=1024)
    config.model.text.update(width=256, depth=2, heads=4, mlp_dim=1024, context_length=16)
    model = build_clip(config.model)
    images = jnp.zeros((4, 64, 64, 3))
    tokens = jnp.zeros((4, 16), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, tokens)
    cost = jax.jit(model.apply).lower(variables, images, tokens).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    formula = clip_forward_flops(config.model)
    # XLA also counts norms, GELU and softmax, a few percent at these widths; the formula only matmuls.
    assert 4 * (formula["image"] + formula["text"]) == pytest.approx(cost["flops"], rel=0.06)
    assert 4 * (formula["image"] + formula["text"]) < cost["flops"]


def test_no_flop_formula_for_convolutional_towers():
    config = base_config()
    config.model.name = "mci2"
    with pytest.raises(ValueError, match="mci2"):
        clip_forward_flops(config.model)
    config.model.name, config.model.image.stem = "vit_b16", "conv"
    with pytest.raises(ValueError, match="stem"):
        clip_forward_flops(config.model)
