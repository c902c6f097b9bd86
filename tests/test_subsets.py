"""Data subsets for scaling studies (config.data.subset_size): nested, deterministic, repeated over epochs."""

import numpy as np
import pytest

from clipjax.config import ConfigError
from clipjax.data.batching import configured_batches
from clipjax.data.subsets import SubsetSource, training_subset
from clipjax.data.synthetic import SyntheticScenes
from clipjax.defaults import base_config
from clipjax.validation import validate


class NumberedRecords:
    """A source whose record i is i (sorted records, as shards, class folders and TFDS splits are)."""

    def __init__(self, count):
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if not 0 <= index < self.count:
            raise IndexError(index)
        return {"record": np.int64(index)}


def subset_records(total, size, seed=0):
    subset = SubsetSource(NumberedRecords(total), size, seed)
    return [int(subset[i]["record"]) for i in range(len(subset))]


def test_subsets_are_nested_and_the_same_every_time():
    small, large = subset_records(10_000, 100), subset_records(10_000, 1_000)
    assert large[:100] == small  # the smaller subset is the larger one's first records
    assert len(set(large)) == 1_000 and all(0 <= r < 10_000 for r in large)
    assert subset_records(10_000, 1_000) == large  # deterministic
    assert subset_records(10_000, 1_000, seed=1) != large  # another order seed, another subset
    # A seeded order, not the sorted records' first ones: a sorted source's head would be one shard or class.
    assert max(small) > 5_000 and sorted(small) != list(range(100))
    # The whole order is a permutation of the records.
    assert sorted(subset_records(500, 500)) == list(range(500))


def test_a_subset_of_a_billion_records_is_computed_per_record():
    subset = SubsetSource(NumberedRecords(1_280_000_000), 12_800_000, seed=0)
    records = [subset.record(i) for i in (0, 1, 12_799_999)]
    assert len(set(records)) == 3 and all(0 <= r < 1_280_000_000 for r in records)
    assert SubsetSource(NumberedRecords(1_280_000_000), 1_280_000, seed=0).record(0) == records[0]


def test_the_built_in_scenes_subset_is_scenes_0_to_n_minus_1():
    scenes = SyntheticScenes(1_000, image_size=16, max_objects=1, seed=3)
    config = base_config()
    config.data.subset_size = 5
    subset = training_subset(scenes, config.data)
    assert len(subset) == 5
    for i in range(5):
        np.testing.assert_array_equal(
            subset[i]["image"], SyntheticScenes(5, image_size=16, max_objects=1, seed=3)[i]["image"]
        )
    config.data.subset_size = None
    assert training_subset(scenes, config.data) is scenes


def test_training_repeats_the_subset_and_resumes_exactly():
    config = base_config()
    config.batch_size = 6
    config.data.subset_size = 9
    source = NumberedRecords(100)
    wanted = set(subset_records(100, 9))
    transform = lambda record, rng: record  # noqa: E731
    dataset = configured_batches(config, source, transform, process_index=0, process_count=1)
    assert dataset.records_per_epoch == 9
    iterator = iter(dataset)
    seen = [int(r) for _ in range(6) for r in next(iterator)["record"]]  # 36 records: 4 epochs of 9
    for epoch in range(4):
        assert sorted(seen[9 * epoch : 9 * epoch + 9]) == sorted(wanted)  # each epoch is the subset once
    assert seen[:9] != seen[9:18]  # in a fresh order
    state = iterator.get_state()
    expected = [next(iterator)["record"] for _ in range(2)]
    resumed = iter(configured_batches(config, source, transform, process_index=0, process_count=1))
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["record"], want)


def test_bad_subsets_are_one_line_errors():
    config = base_config()
    config.data.subset_size = 101
    with pytest.raises(ConfigError, match=r"subset_size=101 must lie in 1\.\.100"):
        training_subset(NumberedRecords(100), config.data)
    for bad in (0, "1.28M", 1e3, True):
        config = base_config()  # a fresh one each time: a ConfigDict keeps the first type a key was given
        config.data.subset_size = bad
        with pytest.raises(ConfigError, match="must be a whole number of records, at least 1"):
            validate(config, num_devices=1, process_count=1)
    config = base_config()
    config.data.subset_size, config.data.subset_seed = 10, 2**32
    with pytest.raises(ConfigError, match="subset_seed=4294967296 must lie in"):
        validate(config, num_devices=1, process_count=1)
    config.data.subset_seed, config.task = 0, "probe"
    with pytest.raises(ConfigError, match="task 'probe' reads no training stream") as error:
        validate(config, num_devices=1, process_count=1)
    assert "\n" not in str(error.value)
