"""Pretraining with an MCi image tower: BatchNorm with the global batch's statistics on a 4 x 2 mesh (a numpy
oracle); frozen statistics when asked; and the paper-style MCi configs."""

import os

import jax
import numpy as np
import pytest

from clipjax.config import load_config
from clipjax.models.clip import CLIP
from clipjax.models.mci import MCi
from clipjax.models.presets import build_clip
from clipjax.parallel import batch_sharding, make_mesh, put_batch
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.loop import shard_functions
from clipjax.train.optim import make_optimizer
from clipjax.validation import validate
from tests.helpers import tiny_config


def tiny_mci_clip(config):
    """build_clip's text tower with a one-block-per-stage MCi image tower (32 px images)."""
    clip = build_clip(config.model)
    image = MCi(depths=(1, 1, 1, 1), widths=(8, 16, 16, 32), num_classes=config.model.embed_dim)
    return CLIP(image=image, text=clip.text, temperature_init=config.model.temperature_init)


def one_step(mesh_axes, devices, batch_norm, tiny_mci=True):
    """One pretraining step of a tiny CLIP whose image tower has BatchNorm: (state before, state after, metrics).
    The tower is a one-block-per-stage MCi, or (`tiny_mci=False`, faster to compile) a ViT with MobileCLIP-B's
    BatchNorm conv stem."""
    config = tiny_config(mesh_axes)
    config.model.update(image_size=32, batch_norm=batch_norm)
    if not tiny_mci:
        config.model.image.update(stem="mci", patch_size=16)
    config.data.normalize = "none"
    mesh = make_mesh(config.mesh, devices)
    model = tiny_mci_clip(config) if tiny_mci else build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    init, step, _ = shard_functions(
        make_init_state(model, tx, config), make_train_step(model, tx, config, mesh), mesh, config
    )
    state = init(jax.random.PRNGKey(0))
    before = jax.tree.map(np.asarray, state)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 1000, (16, 8)).astype(np.int32)
    tokens[:, -1] = 49407
    batch = {"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), "text": tokens}
    after, metrics = step(state, put_batch(batch, batch_sharding(mesh)))
    return before, jax.tree.map(np.asarray, after), metrics


@pytest.fixture(scope="module")
def trained():
    return one_step({"data": 4, "fsdp": 2}, jax.devices(), "train")


def test_batch_statistics_are_those_of_the_global_batch_on_a_mesh(trained):
    before, after, metrics = trained
    assert np.isfinite(metrics["train/loss"])
    stats = lambda state: state.model_state["batch_stats"]["image"]  # noqa: E731
    # Every running average moved (momentum 0.1 towards the batch's statistics) ...
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), stats(after), stats(before))
    assert min(jax.tree.leaves(moved)) > 1e-6 and max(jax.tree.leaves(moved)) > 1e-3
    # ... towards those of all 16 images, where each of the 8 devices holds 2: stem_0's scale branch is a
    # 1x1 conv (no bias) then BatchNorm, of the images themselves.
    rng = np.random.default_rng(0)
    rng.integers(1, 1000, (16, 8))  # the tokens drawn first in one_step
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8).astype(np.float32) / 255.0
    kernel = before.params["image"]["stem_0"]["conv_scale"]["conv"]["kernel"][0, 0]  # [3, 8]
    pre = images[:, ::2, ::2, :] @ kernel  # stride 2, no padding needed for 1x1
    for name, batch_value in [("mean", pre.mean((0, 1, 2))), ("var", pre.var((0, 1, 2)))]:
        old, new = (stats(state)["stem_0"]["conv_scale"]["bn"][name] for state in (before, after))
        want = 0.9 * old + 0.1 * batch_value
        np.testing.assert_allclose(new, want, rtol=1e-4, atol=1e-6)
        # Statistics of one device's 2 images would be far off.
        local = 0.9 * old + 0.1 * getattr(pre[:2], name)((0, 1, 2))
        assert np.max(np.abs(local - want)) > 100 * np.max(np.abs(new - want))


def test_frozen_batch_norm_keeps_the_statistics():
    # The switch is the step's, whatever the tower: a ViT with a BatchNorm stem compiles faster than MCi.
    before, after, metrics = one_step({"data": 1, "fsdp": 1}, jax.devices()[:1], "frozen", tiny_mci=False)
    assert before.model_state["batch_stats"]["image"] and np.isfinite(metrics["train/loss"])
    jax.tree.map(np.testing.assert_array_equal, before.model_state, after.model_state)
    assert not np.array_equal(
        before.params["image"]["stem_conv_0"]["kernel"], after.params["image"]["stem_conv_0"]["kernel"]
    )


@pytest.mark.parametrize("name", ["mci0", "mci1", "mci2"])
def test_mci_pretraining_configs_follow_mobileclip(repo_root, name):
    paths = [("data.path", "/x"), ("data.synthetic_path", "/y"), ("eval.zeroshot.path", "/t")]
    config = load_config(os.path.join(repo_root, "configs", "pretrain", f"mci_datacompdr.py:model={name}"), paths)
    validate(config, num_devices=64, process_count=8)
    assert (config.model.name, config.model.image_size, config.data.normalize) == (name, 256, "none")
    assert (config.model.batch_norm, config.batch_size, config.data.captions) == ("train", 65_536, "both")
    assert (config.optim.lr, config.optim.weight_decay, config.optim.b2) == (1e-3, 0.2, 0.95)
