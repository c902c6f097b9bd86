"""Mesh construction, sharding rules, and one train step on 1 device versus 8 devices (mesh 4 x 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from clipjax.models import build_clip
from clipjax.parallel import batch_sharding, fsdp_spec, make_mesh, mesh_shape, put_batch
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.loop import shard_functions
from clipjax.train.optim import make_optimizer
from tests.helpers import tiny_config


def test_mesh_shape_fills_the_free_axis():
    assert mesh_shape(ConfigDict({"data": -1, "fsdp": 2}), 8) == {"data": 4, "fsdp": 2}
    assert mesh_shape(ConfigDict({"data": 2, "fsdp": -1}), 8) == {"data": 2, "fsdp": 4}
    for bad in ({"data": 3, "fsdp": -1}, {"data": -1, "fsdp": -1}, {"data": 2, "fsdp": 2}, {"data": 0, "fsdp": 8}):
        with pytest.raises(ValueError):
            mesh_shape(ConfigDict(bad), 8)


def test_fsdp_rule_splits_the_largest_divisible_dimension():
    assert fsdp_spec((768, 3072), 4, 1024) == P(None, "fsdp")
    assert fsdp_spec((49408, 512), 8, 1024) == P("fsdp", None)
    assert fsdp_spec((6, 5), 4, 1) == P()  # nothing divides
    assert fsdp_spec((512,), 4, 1024) == P()  # too small to be worth it
    assert fsdp_spec((768, 768), 1, 1) == P()  # no fsdp axis


def one_step(config, devices, batch):
    mesh = make_mesh(config.mesh, devices)
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    init, step, target = shard_functions(
        make_init_state(model, tx, config), make_train_step(model, tx, config, mesh), mesh, config
    )
    state = init(jax.random.PRNGKey(0))
    before = jax.tree.map(np.asarray, state)  # the step donates (and so deletes) the state it is given
    new_state, metrics = step(state, put_batch(batch, batch_sharding(mesh)))
    return before, new_state, metrics, jax.tree.map(lambda leaf: leaf.sharding, target)


def test_train_step_is_the_same_on_one_device_and_on_a_4x2_mesh():
    assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices"
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        "text": np.concatenate(
            [np.full((16, 1), 49406), rng.integers(1, 1000, (16, 5)), np.full((16, 1), 49407), np.zeros((16, 1))], 1
        ).astype(np.int32),
    }
    before1, after1, metrics1, _ = one_step(tiny_config({"data": 1, "fsdp": 1}), jax.devices()[:1], batch)
    before8, after8, metrics8, shardings8 = one_step(tiny_config({"data": 4, "fsdp": 2}), jax.devices(), batch)

    # Parameters really are split over fsdp on the 8-device mesh, and start out identical.
    qkv = shardings8.params["image"]["encoder"]["block_0"]["attn"]["qkv"]["kernel"]
    assert "fsdp" in qkv.spec
    jax.tree.map(np.testing.assert_array_equal, before1.params, before8.params)

    for key in metrics1:
        np.testing.assert_allclose(metrics8[key], metrics1[key], rtol=2e-5, err_msg=key)
    assert float(metrics1["train/loss"]) > 1.0  # a real loss over 16 pairs, not a degenerate one
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), after1.params, before1.params)
    assert max(jax.tree.leaves(moved)) > 1e-4
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
        after1.params,
        after8.params,
    )
    assert int(after8.step) == 1


def test_the_jitted_step_donates_every_state_buffer_to_the_new_state():
    # Donation lets XLA write the new parameters and moments over the old ones: without it the step would
    # hold two copies of the state (for ViT-B/16, 2.4 GB of parameters and AdamW moments per copy).
    config = tiny_config({"data": 4, "fsdp": 2})
    mesh = make_mesh(config.mesh)
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    _, step, target = shard_functions(
        make_init_state(model, tx, config), make_train_step(model, tx, config, mesh), mesh, config
    )
    sharding = batch_sharding(mesh)
    batch = {
        "image": jax.ShapeDtypeStruct((16, 16, 16, 3), np.uint8, sharding=sharding),
        "text": jax.ShapeDtypeStruct((16, 8), np.int32, sharding=sharding),
    }
    text = step.lower(target, batch).as_text()
    # One input-output alias per state array; the batch is not donated.
    assert text.count("tf.aliasing_output") == len(jax.tree.leaves(target)) > 100
