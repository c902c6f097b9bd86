"""The synthetic scenes: determinism, captions that match the picture, consistent dense ground truth."""

import numpy as np
import pytest

from clipjax.data.synthetic import CATEGORIES, COLORS, SIZES, SyntheticScenes, shape_mask


@pytest.fixture(scope="module")
def scenes():
    source = SyntheticScenes(200, image_size=48, max_objects=4, seed=3)
    return source, [source[i] for i in range(200)]


def test_scene_is_a_pure_function_of_seed_split_and_index(scenes):
    source, records = scenes
    again = SyntheticScenes(200, image_size=48, max_objects=4, seed=3)[17]
    for key, value in records[17].items():
        np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(value))
    other_seed = SyntheticScenes(200, image_size=48, seed=4)[17]
    other_split = SyntheticScenes(200, image_size=48, seed=3, split="validation")[17]
    assert not np.array_equal(other_seed["image"], records[17]["image"])
    assert not np.array_equal(other_split["image"], records[17]["image"])


def test_record_types_and_shapes(scenes):
    _, records = scenes
    r = records[0]
    assert r["image"].shape == (48, 48, 3) and r["image"].dtype == np.uint8
    assert r["semantic"].shape == (48, 48) and r["semantic"].dtype == np.int32
    assert r["depth"].shape == (48, 48) and r["depth"].dtype == np.float32
    assert r["boxes"].shape == (4, 4) and r["classes"].shape == (4,) and r["masks"].shape == (4, 48, 48)
    assert isinstance(r["caption_quality"], str) and isinstance(r["caption_noisy"], str)


def test_at_least_ten_categories_all_occur(scenes):
    _, records = scenes
    assert len(CATEGORIES) >= 10
    assert set(int(r["label"]) for r in records) == set(range(len(CATEGORIES)))
    assert {int(c) for r in records for c in r["classes"] if c >= 0} == set(range(len(CATEGORIES)))


def test_label_is_the_category_with_the_largest_visible_area(scenes):
    _, records = scenes
    for r in records:
        n = int(r["num_objects"])
        areas = r["masks"][:n].reshape(n, -1).sum(axis=1)
        assert r["classes"][int(np.argmax(areas))] == r["label"]


def test_instances_semantic_mask_and_boxes_agree(scenes):
    _, records = scenes
    for r in records:
        n = int(r["num_objects"])
        assert 1 <= n <= 4 and (r["classes"][n:] == -1).all() and not r["masks"][n:].any()
        # Instance masks are disjoint (occlusion resolved) and together give the semantic mask.
        assert r["masks"][:n].sum(axis=0).max() <= 1
        rebuilt = np.zeros((48, 48), np.int32)
        for k in range(n):
            rebuilt[r["masks"][k]] = r["classes"][k] + 1
            ys, xs = np.nonzero(r["masks"][k])
            np.testing.assert_array_equal(r["boxes"][k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        np.testing.assert_array_equal(rebuilt, r["semantic"])


def test_depth_puts_objects_in_front_of_the_background(scenes):
    _, records = scenes
    for r in records[:50]:
        objects, background = r["semantic"] > 0, r["semantic"] == 0
        assert (r["depth"] > 0).all() and r["depth"].max() <= 10.0
        if objects.any() and background.any():
            assert r["depth"][objects].max() < r["depth"][background].min()


def test_quality_caption_names_the_label_first_with_true_attributes(scenes):
    _, records = scenes
    for r in records:
        first = r["caption_quality"].split(",")[0].split()
        assert first[0] in ("a", "an") and first[1] in SIZES and first[2] in COLORS
        assert first[3] == CATEGORIES[int(r["label"])]
        # The colour is the one painted: the label object's pixels are closest to that palette entry.
        k = int(np.argmax(r["masks"].reshape(4, -1).sum(axis=1)))
        mean = r["image"][r["masks"][k]].astype(float).mean(axis=0)
        nearest = min(COLORS, key=lambda c: np.linalg.norm(np.asarray(COLORS[c]) - mean))
        assert nearest == first[2]


def test_noisy_captions_are_alt_text_like(scenes):
    _, records = scenes
    noisy = [r["caption_noisy"] for r in records]
    assert all(n != r["caption_quality"] for n, r in zip(noisy, records))
    missing_label = sum(CATEGORIES[int(r["label"])] not in n for n, r in zip(noisy, records))
    assert 0.2 < missing_label / len(records) < 0.7  # often the main object is not even mentioned


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_shape_is_a_compact_blob_of_reasonable_area(category):
    v, u = np.mgrid[-1.2:1.2:241j, -1.2:1.2:241j]
    mask = shape_mask(category, u, v)
    fraction = mask.mean() * (2.4**2) / np.pi  # area relative to the unit circle
    assert 0.3 < fraction <= 1.05
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes(10, split="test")
    with pytest.raises(IndexError):
        SyntheticScenes(10)[10]
