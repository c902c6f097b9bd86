"""Device mesh from the config, sharding rules for parameters and batches, host-to-device batch placement.

The mesh has axes (data, fsdp). The batch is split over both axes, so every device holds
batch_size / num_devices examples. Parameters and optimizer state are replicated over `data` and split
over `fsdp` along their largest dimension that divides evenly (ZeRO-3 style); the compiler inserts the
all-gathers before use and the reduce-scatters of gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from clipjax.models.scan_layout import in_scanned_blocks

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: ConfigDict, num_devices: int) -> dict[str, int]:
    """Resolves the axis sizes of `config.mesh` (at most one -1, which takes the devices left over).

    Raises:
      ValueError: the sizes do not multiply to `num_devices`.
    """
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if len(free) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"mesh sizes {sizes}: use positive sizes and at most one -1")
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh sizes {sizes} do not divide the {num_devices} devices")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh sizes {sizes} multiply to {math.prod(sizes.values())}, not the {num_devices} devices")
    return sizes


def make_mesh(mesh_config: ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes (data, fsdp) over `devices` (default: all devices of all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(mesh_shape(mesh_config, len(devices)).values())
    try:
        # Orders devices so the inner (fsdp) axis lands on the fastest links of TPU slices and GPU nodes.
        device_array = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of ways the batch is split."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
    """Partition spec splitting the largest dimension divisible by `fsdp_size`, or replicating.

    Arrays with fewer than `min_size` elements, and arrays with no divisible dimension, stay replicated.
    """
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return P()
    candidates = [(size, axis) for axis, size in enumerate(shape) if size % fsdp_size == 0]
    if not candidates:
        return P()
    _, axis = max(candidates)
    spec: list[str | None] = [None] * len(shape)
    spec[axis] = "fsdp"
    return P(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh, min_size: int) -> Any:
    """NamedShardings for every leaf of a pytree of arrays or ShapeDtypeStructs, by the fsdp rule.

    The rule depends only on a leaf's shape and path, so optimizer moments get the same layout as their
    parameters. A scanned encoder's stacked arrays (under encoder/blocks) follow the rule for one block and
    keep the [depth] axis whole: each scan step slices one block, which a split depth axis would turn into an
    all-gather of every block.
    """
    fsdp_size = mesh.shape["fsdp"]

    def sharding(path: tuple, leaf: Any) -> NamedSharding:
        if in_scanned_blocks(path):
            return NamedSharding(mesh, P(None, *fsdp_spec(leaf.shape[1:], fsdp_size, min_size)))
        return NamedSharding(mesh, fsdp_spec(leaf.shape, fsdp_size, min_size))

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Builds global arrays from this host's part of the batch (its slice of the leading dimension).

    Args:
      batch: numpy arrays [batch_size / process_count, ...] read by this host.
      sharding: usually `batch_sharding(mesh)`.

    Returns:
      jax.Arrays of global shape [batch_size, ...], each device holding its rows.
    """
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}
