"""Device prefetch: the loop gets the batches a plain grain iterator gives, in order, placed on the mesh; the
position a checkpoint records is the loop's, not the read-ahead thread's; errors arrive where they happened."""

import time

import grain
import jax
import numpy as np
import pytest

from clipjax.data.skips import SKIPPED
from clipjax.parallel import batch_sharding, make_mesh
from clipjax.train.prefetch import DevicePrefetcher
from tests.helpers import tiny_config


class BadRecord(Exception):
    pass


def host_batch(i: int, fail_at: int | None = None) -> dict:
    """Batch i of 8 rows: images filled with i, and a skip count on every third batch."""
    if i == fail_at:
        raise BadRecord(f"batch {i}")
    batch = {"image": np.full((8, 2, 2, 3), i, np.uint8), "index": np.full((8,), i, np.int32)}
    if i % 3 == 0:
        batch[SKIPPED] = {"corrupt_image": i}
    return batch


def batches(fail_at: int | None = None) -> grain.IterDataset:
    return grain.MapDataset.range(20).map(lambda i: host_batch(i, fail_at)).to_iter_dataset()


@pytest.fixture(scope="module")
def sharding():
    return batch_sharding(make_mesh(tiny_config({"data": -1, "fsdp": 1}).mesh))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_batches_arrive_in_order_on_the_mesh_with_the_loops_position(sharding, depth):
    prefetcher = DevicePrefetcher(iter(batches()), sharding, depth)
    reference = iter(batches())  # a plain iterator moved in step with the loop: the oracle of positions
    try:
        assert prefetcher.get_state() == reference.get_state()
        for i in range(7):
            batch, skipped = next(prefetcher)
            next(reference)
            assert batch["image"].shape == (8, 2, 2, 3) and batch["image"].sharding == sharding
            np.testing.assert_array_equal(np.asarray(batch["index"]), np.full((8,), i))
            assert skipped == ({"corrupt_image": i} if i % 3 == 0 else {})
            assert SKIPPED not in batch
            assert prefetcher.get_state() == reference.get_state()
        if depth:  # the thread has read ahead of the loop, and the recorded position did not move with it
            time.sleep(0.2)
            assert prefetcher._iterator.get_state() != prefetcher.get_state()

        # Resuming a fresh iterator at the recorded position gives the batch the loop would have got next.
        resumed = iter(batches())
        resumed.set_state(prefetcher.get_state())
        assert int(next(resumed)["index"][0]) == 7
        assert int(np.asarray(next(prefetcher)[0]["index"])[0]) == 7
    finally:
        prefetcher.close()


@pytest.mark.parametrize("depth", [0, 2])
def test_an_error_reading_ahead_is_raised_at_its_own_batch(sharding, depth):
    prefetcher = DevicePrefetcher(iter(batches(fail_at=4)), sharding, depth)
    try:
        got = [int(np.asarray(next(prefetcher)[0]["index"])[0]) for _ in range(4)]
        assert got == [0, 1, 2, 3]
        with pytest.raises(BadRecord, match="batch 4"):
            next(prefetcher)
        if depth:
            with pytest.raises(StopIteration):
                next(prefetcher)
    finally:
        prefetcher.close()


def test_the_end_of_the_data_ends_the_iteration(sharding):
    prefetcher = DevicePrefetcher(iter(batches()), sharding, 2)
    try:
        assert len(list(prefetcher)) == 20
    finally:
        prefetcher.close()


def test_close_stops_a_thread_blocked_on_a_full_queue(sharding):
    prefetcher = DevicePrefetcher(iter(batches()), sharding, 1)
    next(prefetcher)
    time.sleep(0.1)  # the thread now waits to queue the batch after the next one
    prefetcher.close()
    assert not prefetcher._thread.is_alive()
    with pytest.raises(ValueError, match="at least 0"):
        DevicePrefetcher(iter(batches()), sharding, -1)
    assert jax.device_count() == 8  # the sharding above spans every simulated device
