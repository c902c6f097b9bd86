"""A toy task for the train loop that compiles in a second: vectors as samples, some of them NaN, unusable or
sending SIGTERM."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from clipjax.data.batching import host_batches
from clipjax.data.skips import skipped
from clipjax.defaults import base_config
from clipjax.train.loop import Task
from clipjax.train.state import TrainState

NUM_SAMPLES = 50


class Samples:
    """Sample i is the vector [i, i, i, i]; a listed index is NaN or unusable (skipped as a corrupt image),
    and one index can send SIGTERM."""

    def __init__(self, nan_at=(), sigterm_at=None, corrupt_at=()):
        self.nan_at, self.sigterm_at, self.corrupt_at = set(nan_at), sigterm_at, set(corrupt_at)

    def __len__(self):
        return NUM_SAMPLES

    def __getitem__(self, index):
        if index == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if index in self.corrupt_at:
            return skipped("corrupt_image")
        value = np.nan if index in self.nan_at else float(index)
        return {"x": np.full(4, value, np.float32), "id": np.int32(index)}


def toy_config(**overrides):
    config = base_config()
    config.update(
        task="toy",
        batch_size=4,
        total_steps=12,
        log_every=2,
        checkpoint_every=3,
        keep_checkpoints=10,
        progress_bar=False,
    )
    config.mesh = ConfigDict({"data": 1, "fsdp": 1})
    config.update(overrides)
    return config


def toy_task(config, samples):
    tx = optax.sgd(0.01)

    def init_state(rng):
        return TrainState.create({"params": {"w": jnp.zeros(4)}}, tx, rng)

    def train_step(state, batch):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((p["w"] - batch["x"]) ** 2))(state.params)
        state, guard = state.apply_gradients(grads, loss, tx)
        return state, {"train/loss": loss, "train/id_sum": jnp.sum(batch["id"]), **guard}

    def dataset(start_sample):
        return host_batches(
            samples,
            lambda record, rng: record,
            seed=config.seed,
            batch_size=config.batch_size,
            process_index=0,
            process_count=1,
            start_sample=start_sample,
        )

    return Task(
        init_state,
        train_step,
        dataset,
        lambda variables: {"eval/w0": float(variables["params"]["w"][0])},
        config.batch_size,
    )
