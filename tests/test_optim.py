"""Learning-rate schedule, weight-decay mask and the AdamW update against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from clipjax.train.optim import global_norm, lr_schedule, make_optimizer, weight_decay_mask


def optim_config(**overrides):
    config = ConfigDict(
        dict(
            lr=1e-3, warmup_steps=10, min_lr_ratio=0.0, weight_decay=0.2, b1=0.9, b2=0.95, eps=1e-6, grad_clip_norm=1.0
        )
    )
    config.update(overrides)
    return config


def test_schedule_matches_open_clip_cosine_lr():
    schedule = lr_schedule(optim_config(), total_steps=110)
    for step in range(110):
        if step < 10:
            expected = 1e-3 * (step + 1) / 10
        else:
            expected = 0.5 * (1 + math.cos(math.pi * (step - 10) / 100)) * 1e-3
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)
    floor = lr_schedule(optim_config(min_lr_ratio=0.1), total_steps=110)
    np.testing.assert_allclose(float(floor(110)), 1e-4, rtol=1e-5)


def test_decay_mask_excludes_biases_norms_tokens_and_scale():
    params = {
        "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
        "ln": {"scale": jnp.ones(4)},
        "cls": jnp.ones(4),
        "logit_scale": jnp.ones(()),
        "pos_embed": jnp.ones((5, 4)),
    }
    assert weight_decay_mask(params) == {
        "dense": {"kernel": True, "bias": False},
        "ln": {"scale": False},
        "cls": False,
        "logit_scale": False,
        "pos_embed": True,
    }


def test_first_adamw_step_with_clipping_and_decay():
    params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([[3.0, 4.0]]), "b": jnp.array([0.0])}  # global norm 5 -> clipped to 1
    tx = make_optimizer(optim_config(warmup_steps=1), total_steps=100)
    updates, _ = tx.update(grads, tx.init(params), params)
    lr = 1e-3
    clipped = np.array([[0.6, 0.8]])
    # Adam's first step moves each coordinate by lr * g / (|g| + eps) after bias correction.
    adam = clipped / (np.abs(clipped) + 1e-6)
    expected_w = -lr * (adam + 0.2 * np.array([[1.0, -2.0]]))
    np.testing.assert_allclose(updates["w"], expected_w, rtol=1e-5)
    np.testing.assert_allclose(updates["b"], [0.0], atol=1e-12)  # zero gradient and no decay on biases
    np.testing.assert_allclose(global_norm(grads), 5.0, rtol=1e-6)


def test_zero_clip_norm_disables_clipping():
    params = {"w": jnp.ones(2)}
    tx = make_optimizer(optim_config(grad_clip_norm=0.0, weight_decay=0.0, warmup_steps=1), total_steps=10)
    updates, _ = tx.update({"w": jnp.array([30.0, -40.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-1e-3, 1e-3], rtol=1e-4)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
