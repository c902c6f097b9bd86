"""Saving on the CPU backend: orbax writes each replicated array whole, compiling no slicing programs, keeps
its array metadata, and the values read back exactly."""

import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from clipjax.parallel import make_mesh
from clipjax.weights import read_saved_variables, save_converted

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def test_saving_replicated_arrays_over_eight_cpu_devices_compiles_nothing(tmp_path):
    replicated = NamedSharding(make_mesh(ConfigDict({"data": -1, "fsdp": 1})), P())
    rng = np.random.default_rng(0)
    # Sides divisible by the 8 replicas (what replica-parallel saving slices) that no other test uses, so
    # that no program compiled earlier in this process can hide a slicing one.
    host = {"params": {"image": {"w": rng.standard_normal((24, 7)), "b": rng.standard_normal(40)}}}
    host = jax.tree.map(lambda x: x.astype(np.float32), host)
    on_devices = jax.device_put(host, replicated)
    compiled = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE:
            compiled.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        save_converted(str(tmp_path / "saved"), on_devices, ConfigDict({"name": "tiny"}), "clip", "test")
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == []
    # The rest of orbax's array handling is kept: its per-array metadata is written as by default.
    assert os.path.isdir(tmp_path / "saved" / "params" / "array_metadatas")
    saved = read_saved_variables(str(tmp_path / "saved"))
    jax.tree.map(np.testing.assert_array_equal, saved, host)
