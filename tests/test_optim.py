"""Learning-rate schedule, weight-decay mask and the AdamW update against hand-computed values; the
parameter EMA of TrainState against its recurrence, across skipped steps and through a checkpoint, and
the checkpoint layout of a state without EMA."""

import math
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict

from clipjax.parallel import make_mesh
from clipjax.train.loop import Task, train
from clipjax.train.optim import global_norm, lr_schedule, make_optimizer, weight_decay_mask
from clipjax.train.state import TrainState
from tests.toy_task import Samples, toy_config, toy_task


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
        "qkv": {"kernel": jnp.ones((4, 3, 2, 2)), "bias": jnp.ones((3, 2, 2))},  # a bias of rank 3
        "ln": {"scale": jnp.ones(4)},
        "layer_scale": {"gamma": jnp.ones(4)},  # MobileCLIP's [C, 1, 1], decayed by open_clip's rule
        "cls": jnp.ones(4),
        "logit_scale": jnp.ones(()),
        "pos_embed": jnp.ones((5, 4)),
    }
    assert weight_decay_mask(params) == {
        "dense": {"kernel": True, "bias": False},
        "qkv": {"kernel": True, "bias": False},
        "ln": {"scale": False},
        "layer_scale": {"gamma": True},
        "cls": False,
        "logit_scale": False,
        "pos_embed": True,
    }
    named = weight_decay_mask(params, no_decay=("pos_embed", "cls"))
    assert named["pos_embed"] is False and named["dense"]["kernel"] is True


def test_decay_mask_of_the_real_clip_matches_open_clips_rule():
    """open_clip decays a parameter unless it has fewer than 2 dimensions or "bias", "bn", "ln" or
    "logit_scale" in its name; applied to clipjax's own tree (a tiny ViT + text tower) by name."""
    from clipjax.config import load_config
    from clipjax.models import build_clip

    config = load_config("tests/configs/tiny_pretrain.py")
    model = build_clip(config.model)
    size = config.model.image_size
    shapes = jax.eval_shape(
        model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, 8), jnp.int32)
    )["params"]
    mask = {
        jax.tree_util.keystr(path): m for path, m in jax.tree_util.tree_flatten_with_path(weight_decay_mask(shapes))[0]
    }
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    assert any("qkv" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path) for path, _ in flat)
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        open_clip = not (leaf.ndim < 2 or any(word in name for word in ("bias", "logit_scale", "'ln", "norm")))
        assert mask[name] == open_clip, name


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


# ----------------------------------------------------------------------------------------------------------
# Parameter EMA in TrainState.apply_gradients


def ema_state(ema: bool = True):
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.25, -0.75])}
    tx = make_optimizer(optim_config(warmup_steps=1, lr=0.1), total_steps=10)
    return TrainState.create({"params": params}, tx, jax.random.PRNGKey(0), ema=ema), tx


def test_ema_after_k_updates_is_the_recurrence_and_starts_as_a_copy():
    state, tx = ema_state()
    assert state.ema_params is not state.params
    jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)
    step = jax.jit(lambda s, g: s.apply_gradients(g, jnp.float32(0.0), tx, ema_decay=0.9), donate_argnums=0)
    ema = jax.tree.map(np.array, state.ema_params)
    rng = np.random.default_rng(0)
    for _ in range(4):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), state.params)
        state, _ = step(state, grads)
        new = jax.tree.map(np.array, state.params)
        ema = jax.tree.map(lambda e, p: np.float32(0.9) * e + np.float32(0.1) * p, ema, new)
    assert int(state.step) == 4
    for name in ("w", "b"):
        assert state.ema_params[name].dtype == jnp.float32
        np.testing.assert_allclose(state.ema_params[name], ema[name], rtol=1e-6)
        assert not np.allclose(state.ema_params[name], state.params[name])  # it lags the parameters
    assert state.ema_variables == {"params": state.ema_params}


def test_a_non_finite_step_leaves_params_moments_and_ema_unchanged():
    state, tx = ema_state()
    step = jax.jit(lambda s, g, loss: s.apply_gradients(g, loss, tx, ema_decay=0.5))
    state, _ = step(state, jax.tree.map(jnp.ones_like, state.params), jnp.float32(1.0))
    before = jax.tree.map(np.array, state)
    for grads, loss in (
        ({"w": jnp.full((2, 2), jnp.nan), "b": jnp.zeros(2)}, jnp.float32(1.0)),
        (jax.tree.map(jnp.ones_like, state.params), jnp.float32(jnp.inf)),
        # Finite, but its square overflows float32: no usable update either.
        ({"w": jnp.full((2, 2), 1e20), "b": jnp.zeros(2)}, jnp.float32(1.0)),
    ):
        after, metrics = step(state, grads, loss)
        assert int(metrics["train/skipped_steps"]) == 1 and int(after.step) == int(state.step) + 1
        for kept in ("params", "ema_params"):
            jax.tree.map(np.testing.assert_array_equal, getattr(after, kept), getattr(before, kept))
        (adam, _, schedule), (adam_before, _, schedule_before) = after.opt_state[1], before.opt_state[1]
        jax.tree.map(np.testing.assert_array_equal, adam, adam_before)  # moments and Adam's count
        assert int(schedule.count) == int(schedule_before.count) + 1 == int(after.step)


def test_the_learning_rate_after_a_skipped_step_is_the_scheduled_rate_of_the_step():
    """A skipped step moves the schedule on, as train/lr logs it: the next update's size is lr(step)."""
    params = {"w": jnp.zeros((1, 1))}
    tx = make_optimizer(optim_config(warmup_steps=10, weight_decay=0.0), total_steps=100)
    state = TrainState.create({"params": params}, tx, jax.random.PRNGKey(0))
    step = jax.jit(lambda s, g: s.apply_gradients({"w": g}, jnp.float32(0.0), tx))
    state, _ = step(state, jnp.full((1, 1), jnp.nan))
    state, _ = step(state, jnp.full((1, 1), jnp.nan))
    state, metrics = step(state, jnp.ones((1, 1)))
    assert int(metrics["train/skipped_steps"]) == 2
    # The first update Adam takes moves by lr * g / (|g| + eps): lr of step 2 (3e-4), not of step 0 (1e-4).
    np.testing.assert_allclose(float(state.params["w"][0, 0]), -1e-3 * 3 / 10 / (1 + 1e-6), rtol=1e-5)


def test_ema_off_keeps_ema_params_none():
    state, tx = ema_state(ema=False)
    leaves = len(jax.tree.leaves(state))
    state, _ = jax.jit(lambda s: s.apply_gradients(s.params, jnp.float32(0.0), tx, ema_decay=0.9))(state)
    assert state.ema_params is None and len(jax.tree.leaves(state)) == leaves
    with pytest.raises(ValueError, match="keeps no parameter EMA"):
        state.ema_variables  # noqa: B018


def test_the_ema_is_checkpointed_and_a_resumed_run_ends_with_the_same_average(tmp_path):
    def run(workdir, total_steps):
        config = toy_config(total_steps=total_steps)
        tx = optax.sgd(0.01)

        def init_state(rng):
            return TrainState.create({"params": {"w": jnp.zeros(4)}}, tx, rng, ema=True)

        def train_step(state, batch):
            loss, grads = jax.value_and_grad(lambda p: jnp.mean((p["w"] - batch["x"]) ** 2))(state.params)
            return state.apply_gradients(grads, loss, tx, ema_decay=0.8)

        task = Task(init_state, train_step, toy_task(config, Samples()).dataset, lambda variables: {}, 4)
        train(config, str(workdir), make_mesh(config.mesh, jax.devices()[:1]), task)
        path = os.path.join(os.path.abspath(workdir), "checkpoints", str(total_steps), "state")
        return ocp.StandardCheckpointer().restore(path)

    whole = run(tmp_path / "whole", 9)
    run(tmp_path / "cut", 6)
    resumed = run(tmp_path / "cut", 9)
    assert not np.allclose(whole["ema_params"]["w"], whole["params"]["w"])
    np.testing.assert_array_equal(resumed["ema_params"]["w"], whole["ema_params"]["w"])
    np.testing.assert_array_equal(resumed["params"]["w"], whole["params"]["w"])


def test_without_ema_the_checkpoint_layout_is_the_one_before_the_field_existed(tmp_path):
    @flax.struct.dataclass
    class OldTrainState:  # TrainState as it was before ema_params
        step: jax.Array
        params: Any
        opt_state: Any
        model_state: Any
        rng: jax.Array
        skipped_steps: jax.Array
        bad_streak: jax.Array

    state, _ = ema_state(ema=False)
    old = OldTrainState(**{name: getattr(state, name) for name in OldTrainState.__dataclass_fields__})
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "old", old)
    checkpointer.wait_until_finished()
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    restored = checkpointer.restore(tmp_path / "old", target)
    assert isinstance(restored, TrainState) and restored.ema_params is None
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths == [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(old)[0]]


def test_poly_schedule_is_linear_warmup_then_mmsegs_polynomial_decay():
    from ml_collections import ConfigDict

    from clipjax.train.optim import lr_schedule

    optim = ConfigDict({"lr": 1e-3, "warmup_steps": 10, "min_lr_ratio": 0.1, "schedule": "poly", "poly_power": 0.9})
    schedule = lr_schedule(optim, 110)
    for step in (0, 5, 9, 10, 35, 60, 109, 110, 200):
        if step < 10:
            want = 1e-3 * (step + 1) / 10
        else:
            progress = min((step - 10) / 100, 1.0)
            want = 1e-4 + (1e-3 - 1e-4) * (1 - progress) ** 0.9
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5), step


def test_step_schedule_is_warmup_then_detectron2s_multi_step_decay():
    from ml_collections import ConfigDict

    from clipjax.train.optim import lr_schedule

    optim = ConfigDict(
        {"lr": 1e-4, "warmup_steps": 10, "min_lr_ratio": 0.0, "schedule": "step", "step_boundaries": (0.5, 0.9),
         "step_factor": 0.1}
    )  # fmt: skip
    schedule = lr_schedule(optim, 1000)
    # Boundaries at steps 500 and 900 (fractions of all steps, warmup included, as ViTDet's 88.9% / 96.3%).
    wants = {0: 1e-5, 9: 1e-4, 10: 1e-4, 499: 1e-4, 500: 1e-5, 899: 1e-5, 900: 1e-6, 1500: 1e-6}
    for step, want in wants.items():
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5), step
