"""The built-in scenes' options: visible depth (perspective), full captions, bag-of-words captions, noisy-caption
knobs, all checked against numpy oracles written from the documented camera and caption rules."""

import numpy as np
import pytest

from clipjax.data.pretrain import pretrain_source, to_pretrain_example
from clipjax.data.synthetic import CATEGORIES, COLORS, SIZES, SyntheticScenes
from clipjax.defaults import base_config
from clipjax.tokenizer import tokenize

SIDE = 48
GRID = (
    ("in the top left", "at the top", "in the top right"),
    ("on the left", "in the center", "on the right"),
    ("in the bottom left", "at the bottom", "in the bottom right"),
)


def oracle_ground_row(depth):
    """The documented camera: horizon 0.3 of the side down, the bottom row 2 m away."""
    return SIDE * (0.3 + 0.7 * 2.0 / depth)


def oracle_ground_depth(row):
    """Depth of the ground seen at pixel row `row` (its centre), 10 m beyond it or above the horizon."""
    below = row + 0.5 - 0.3 * SIDE
    return 10.0 if below <= 0 else min(10.0, 0.7 * 2.0 * SIDE / below)


def oracle_place(x, y):
    return GRID[min(int(3 * y / SIDE), 2)][min(int(3 * x / SIDE), 2)]


@pytest.fixture(scope="module")
def perspective_scenes():
    scenes = SyntheticScenes(40, image_size=SIDE, max_objects=4, seed=5, perspective=True, caption_detail="full")
    return scenes, [scenes[i] for i in range(40)], [scenes.scene_objects(i) for i in range(40)]


def test_depth_shows_in_apparent_size_and_height_in_the_picture(perspective_scenes):
    _, records, objects = perspective_scenes
    for record, scene in zip(records, objects):
        for obj in scene:
            # Apparent size falls as 1 / depth: radius x depth is the size's radius at 3 m, within its 10% jitter.
            assert 0.9 - 1e-6 <= obj.radius * obj.depth / (SIZES[obj.size] * SIDE * 3.0) <= 1.1 + 1e-6
            # It stands on the ground: its lowest point lies on the row where the ground is that far away.
            assert obj.center[1] + obj.radius == pytest.approx(oracle_ground_row(obj.depth), abs=1e-4)
            assert 2.0 <= obj.depth <= 4.5
        # The depth map: each visible object at its own depth, the background the ground's (or 10 m).
        for row in range(int(record["num_objects"])):
            values = np.unique(record["depth"][record["masks"][row]])
            assert len(values) == 1 and any(values[0] == pytest.approx(o.depth) for o in scene)
        background = record["semantic"] == 0
        expected = np.broadcast_to(np.array([oracle_ground_depth(r) for r in range(SIDE)])[:, None], (SIDE, SIDE))
        np.testing.assert_allclose(record["depth"][background], expected[background], rtol=1e-5)


def test_full_captions_count_the_objects_and_place_each_one(perspective_scenes):
    _, records, objects = perspective_scenes
    for record, scene in zip(records, objects):
        caption, bag = record["caption_quality"], record["caption_bag"].split()
        named = len(bag) // 3
        count_word = caption.split()[0]
        assert count_word == ("one", "two", "three", "four")[named - 1]
        assert caption.split(":")[0].startswith(f"{count_word} object{'s' if named > 1 else ''}")
        for obj in scene:
            description = f"{obj.size} {obj.color} {CATEGORIES[obj.category]}"
            if description not in caption or caption.count(description) > 1:
                continue  # hidden (not captioned), or two alike: not attributable
            after = caption.split(description, 1)[1]
            assert after.startswith(" " + oracle_place(*obj.center)), (caption, obj)


def test_bag_of_words_names_the_objects_without_layout(perspective_scenes):
    _, records, objects = perspective_scenes
    layout_words = {"left", "right", "top", "bottom", "center", "above", "below", "front", "behind"}
    for record, scene in zip(records, objects):
        words = record["caption_bag"].split()
        triples = [tuple(words[i : i + 3]) for i in range(0, len(words), 3)]
        truth = {(o.size, o.color, CATEGORIES[o.category]) for o in scene}
        assert triples and all(t in truth for t in triples) and not layout_words & set(words)
        assert all(t[0] in SIZES and t[1] in COLORS for t in triples)
        assert triples == sorted(triples, key=lambda t: (t[2], t[1], t[0]))  # a fixed order: no layout in it


def shapes_named(caption):
    return {word for word in caption.split() if word in CATEGORIES}


def test_noisy_caption_knobs_keep_drop_and_corrupt_shapes():
    """One object per scene, always mentioned (keep 1): its shape is named; with wrong_shape 1 never; with
    other_scene 1 the caption describes another scene's objects, which name its shape about as often as chance."""
    kwargs = dict(image_size=SIDE, max_objects=1, seed=2, noise_keep=(1.0, 1.0))
    count = 100
    truths = [CATEGORIES[SyntheticScenes(count, **kwargs).scene_objects(i)[0].category] for i in range(count)]
    kept = SyntheticScenes(count, **kwargs)
    wrong = SyntheticScenes(count, noise_wrong_shape=1.0, **kwargs)
    other = SyntheticScenes(count, noise_other_scene=1.0, **kwargs)
    assert all(truths[i] in shapes_named(kept[i]["caption_noisy"]) for i in range(count))
    for i in range(count):
        named = shapes_named(wrong[i]["caption_noisy"])
        assert len(named) == 1 and truths[i] not in named
    matches = sum(truths[i] in shapes_named(other[i]["caption_noisy"]) for i in range(count))
    assert matches < 30  # chance: 1 in 10 per object named; the scene's own shape would match every time
    dropped = SyntheticScenes(count, image_size=SIDE, max_objects=1, seed=2, noise_keep=(0.0, 0.0))
    assert not any(shapes_named(dropped[i]["caption_noisy"]) for i in range(count))


def test_the_config_reaches_the_scenes_and_bag_captions_train():
    config = base_config()
    config.model.image_size, config.data.synthetic.num_examples = SIDE, 10
    config.data.synthetic.update(perspective=True, caption_detail="full", noise_wrong_shape=0.25)
    scenes = pretrain_source(config)
    assert scenes.perspective and scenes.caption_detail == "full" and scenes.noise_wrong_shape == 0.25
    record = scenes[3]
    example = to_pretrain_example(record, np.random.default_rng(0), captions="bag", synthetic_prob=0.5,
                                  context_length=40)  # fmt: skip
    np.testing.assert_array_equal(example["text"], tokenize(record["caption_bag"], 40)[0])
