"""The grain pretraining pipeline: caption policies, per-host sharding and exact resume."""

import numpy as np
import pytest

from clipjax.data.pretrain import pretrain_dataset, pretrain_source
from clipjax.data.synthetic import SyntheticScenes
from clipjax.defaults import base_config
from clipjax.tokenizer import tokenize


def small_config(**data):
    config = base_config()
    config.batch_size = 8
    config.model.image_size = 16
    config.model.text.context_length = 40
    config.data.synthetic.num_examples = 50
    config.data.update(data)
    return config


def first_batches(config, count, process_index=0, process_count=1):
    iterator = iter(
        pretrain_dataset(config, pretrain_source(config), process_index=process_index, process_count=process_count)
    )
    return [next(iterator) for _ in range(count)]


def find_record(image, source):
    """The index of the scene whose image this is."""
    matches = [i for i in range(len(source)) if np.array_equal(source[i]["image"], image)]
    assert len(matches) == 1
    return matches[0]


@pytest.mark.parametrize("captions", ["real", "synthetic", "both"])
def test_caption_policies_pair_each_image_with_its_own_captions(captions):
    config = small_config(captions=captions)
    batch = first_batches(config, 1)[0]
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["text"].shape == (8, 40) and batch["text"].dtype == np.int32
    assert ("text_synthetic" in batch) == (captions == "both")
    source = SyntheticScenes(50, image_size=16)
    for row in range(8):
        record = source[find_record(batch["image"][row], source)]
        expected = record["caption_quality"] if captions == "synthetic" else record["caption_noisy"]
        np.testing.assert_array_equal(batch["text"][row], tokenize(expected, 40)[0])
        if captions == "both":
            np.testing.assert_array_equal(batch["text_synthetic"][row], tokenize(record["caption_quality"], 40)[0])


def test_mixed_captions_take_the_synthetic_one_at_the_configured_rate():
    config = small_config(captions="mixed", synthetic_prob=0.25)
    source = SyntheticScenes(50, image_size=16)
    synthetic = total = 0
    for batch in first_batches(config, 12):
        for image, text in zip(batch["image"], batch["text"]):
            record = source[find_record(image, source)]
            synthetic += np.array_equal(text, tokenize(record["caption_quality"], 40)[0])
            total += 1
    assert 0.1 < synthetic / total < 0.4


def test_hosts_read_disjoint_halves_of_the_global_batch():
    config = small_config()
    single = first_batches(config, 3)
    host0 = first_batches(config, 3, process_index=0, process_count=2)
    host1 = first_batches(config, 3, process_index=1, process_count=2)
    for whole, part0, part1 in zip(single[:1], host0[:1], host1[:1]):
        assert part0["image"].shape[0] == part1["image"].shape[0] == 4
        images = lambda b: {b["image"][i].tobytes() for i in range(len(b["image"]))}  # noqa: E731
        assert not images(part0) & images(part1)
        assert images(part0) | images(part1) == images(whole)


def test_restored_iterator_continues_with_the_same_batches():
    config = small_config()
    iterator = iter(pretrain_dataset(config, pretrain_source(config), process_index=0, process_count=1))
    for _ in range(8):  # past one epoch of 50 examples, so the reshuffle is covered too
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    resumed = iter(pretrain_dataset(config, pretrain_source(config), process_index=0, process_count=1))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_epochs_are_reshuffled():
    config = small_config()
    batches = first_batches(config, 12)  # 96 examples: the first 48 lie in epoch 1, the next 48 in epoch 2
    source = SyntheticScenes(50, image_size=16)
    order = [find_record(image, source) for batch in batches for image in batch["image"]]
    assert sorted(order[:50]) == list(range(50))
    assert order[50:96] != order[:46]


def test_start_sample_continues_the_global_order_on_any_number_of_hosts():
    config = small_config()
    source = pretrain_source(config)
    whole = first_batches(config, 4)  # global elements 0..31, 8 a batch
    images = lambda b: [b["image"][i].tobytes() for i in range(len(b["image"]))]  # noqa: E731
    expected = images(whole[2]) + images(whole[3])  # elements 16..31
    for hosts in (1, 2):
        config.batch_size = 16
        parts = [
            next(iter(pretrain_dataset(config, source, process_index=p, process_count=hosts, start_sample=16)))
            for p in range(hosts)
        ]
        assert sorted(sum((images(part) for part in parts), [])) == sorted(expected)
