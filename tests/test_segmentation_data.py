"""Segmentation data: ADE20K's release layout built from scikit-image's photos, label decoding and reduction, and
mmseg's training pipeline (resize, cat_max_ratio crop, flip, photometric distortion, padding) and test resize.

The label PNGs are made by hand: a 6-pixel border of 0 ("other"), inside it class 1 ("wall") where the photo
is dark and 3 ("sky") where it is bright, and two rectangles of classes 13 ("person") and 150 ("flag").
"""

import functools
import os

import cv2
import numpy as np
import pytest
from ml_collections import ConfigDict

from clipjax.config import merge_onto_defaults
from clipjax.data.images import BadImage, decode_image
from clipjax.data.segmentation import (
    ADE20K_CLASSES,
    ADE20K_SCALE,
    Ade20kSource,
    SyntheticSegmentation,
    ade_labels,
    choose_crop,
    decode_label_png,
    photometric_distortion,
    random_resize,
    rescale_size,
    segmentation_dataset,
    segmentation_eval_example,
    segmentation_source,
    segmentation_train_example,
)
from clipjax.data.synthetic import CATEGORIES
from clipjax.data.transforms import padding_pixel
from clipjax.errors import ConfigError
from clipjax.ops.labels import IGNORE_LABEL
from tests.photos import photo, raw_label

# (split, stem, scikit-image photo)
FILES = (
    ("training", "ADE_train_00000001", "coffee"),  # 400 x 600
    ("training", "ADE_train_00000002", "chelsea"),  # 300 x 451
    ("validation", "ADE_val_00000001", "rocket"),  # 427 x 640
)
TRAIN = functools.partial(
    segmentation_train_example, cat_max_ratio=0.75, flip=True, photometric=True, reduce_zero_label=True
)


def png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image[..., ::-1])
    assert ok
    return data.tobytes()


@pytest.fixture
def ade_root(tmp_path) -> str:
    """tmp_path/ADEChallengeData2016/{images,annotations}/{training,validation}/<stem>.{jpg,png}."""
    base = tmp_path / "ADEChallengeData2016"
    for split, stem, name in FILES:
        for kind, suffix, data in (
            ("images", ".jpg", jpeg(photo(name))),
            ("annotations", ".png", png(raw_label(name))),
        ):
            os.makedirs(base / kind / split, exist_ok=True)
            (base / kind / split / (stem + suffix)).write_bytes(data)
    return str(tmp_path)


def positional(height: int, width: int) -> dict[str, np.ndarray]:
    """A synthetic-form record whose pixels spell their own (row + 1, col + 1) (no 0: 0 is padding)."""
    rows, cols = np.mgrid[1 : height + 1, 1 : width + 1]
    image = np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    return {"image": image, "semantic": cols.astype(np.int32)}


def test_classes_are_the_150_scene_parsing_names_and_ignore_is_255():
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:8] == ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed")
    assert (ADE20K_CLASSES[12], ADE20K_CLASSES[44], ADE20K_CLASSES[89]) == (
        "person",
        "chest of drawers",
        "television receiver",
    )
    assert ADE20K_CLASSES[-3:] == ("glass", "clock", "flag")
    assert all(name == name.strip() for name in ADE20K_CLASSES)
    assert IGNORE_LABEL == 255  # mmseg's ignore_index


def test_source_lists_sorted_records_from_either_root(ade_root):
    for root in (ade_root, os.path.join(ade_root, "ADEChallengeData2016")):
        train = Ade20kSource(root, "training")
        assert len(train) == 2 and train.names == ["ADE_train_00000001", "ADE_train_00000002"]
        assert train.classes == ADE20K_CLASSES and "2 images" in train.description
        for index, (_, stem, name) in enumerate(FILES[:2]):
            record = train[index]
            assert record["name"] == stem and isinstance(record["image"], bytes)
            np.testing.assert_array_equal(decode_label_png(record["label_png"]), raw_label(name))
            assert np.abs(decode_image(record["image"]).astype(int) - photo(name)).mean() < 4  # JPEG loss only
        validation = Ade20kSource(root, "validation")
        assert len(validation) == 1 and validation[0]["name"] == "ADE_val_00000001"


def test_missing_directories_and_unannotated_images_are_one_line_config_errors(ade_root, tmp_path):
    cases = [
        (str(tmp_path / "absent"), "training", "does not exist"),
        (ade_root, "testing", "images/testing does not exist"),
    ]
    for root, split, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            Ade20kSource(root, split)
        assert "\n" not in str(error.value)
    images = os.path.join(ade_root, "ADEChallengeData2016", "images", "training")
    with open(os.path.join(images, "ADE_train_00000003.jpg"), "wb") as f:
        f.write(jpeg(photo("astronaut")))
    with pytest.raises(ConfigError, match="1 ADE20K images .* no annotation PNG: ADE_train_00000003$") as error:
        Ade20kSource(ade_root, "training")
    assert "\n" not in str(error.value)
    for n in range(4, 8):
        with open(os.path.join(images, f"ADE_train_0000000{n}.jpg"), "wb") as f:
            f.write(b"")
    with pytest.raises(ConfigError, match="5 ADE20K images .*: ADE_train_00000003, .*05, \\.\\.\\.$"):
        Ade20kSource(ade_root, "training")
    os.makedirs(os.path.join(ade_root, "ADEChallengeData2016", "images", "empty"))
    os.makedirs(os.path.join(ade_root, "ADEChallengeData2016", "annotations", "empty"))
    with pytest.raises(ConfigError, match="no .jpg images"):
        Ade20kSource(ade_root, "empty")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a png",
        png(raw_label("coffee"))[:300],  # truncated
        png(np.zeros((4, 4, 3), np.uint8)),  # colour
        png(np.zeros((4, 4), np.uint16)),  # 16-bit
    ],
    ids=["empty", "junk", "truncated", "colour", "16-bit"],
)
def test_label_png_that_is_not_8_bit_grey_is_refused(data):
    with pytest.raises(BadImage):
        decode_label_png(data)


def test_label_png_decodes_exactly_and_reduce_zero_label_is_mmsegs():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    decoded = decode_label_png(png(values))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, values)
    raw = np.array([[0, 1, 2, 150, 255]], np.uint8)
    reduced = ade_labels(raw)
    assert reduced.dtype == np.uint8
    np.testing.assert_array_equal(reduced, [[255, 0, 1, 149, 255]])
    np.testing.assert_array_equal(raw, [[0, 1, 2, 150, 255]])  # the input is left alone


def test_training_labels_are_only_input_labels_or_ignore(ade_root):
    source = Ade20kSource(ade_root, "training")
    for seed in range(6):
        record = source[seed % 2]
        allowed = set(np.unique(ade_labels(decode_label_png(record["label_png"])))) | {IGNORE_LABEL}
        out = TRAIN(record, np.random.default_rng(seed), crop_size=160, scale=ADE20K_SCALE)
        assert out["image"].shape == (160, 160, 3) and out["image"].dtype == np.uint8
        assert out["label"].shape == (160, 160) and out["label"].dtype == np.uint8
        assert set(np.unique(out["label"])) <= allowed
        assert 149 in allowed and 0 in allowed and 2 in allowed  # 150, 1 and 3 reduced


@pytest.mark.parametrize("channel", [0, 1], ids=["rows", "cols"])
def test_image_and_label_stay_aligned_through_crop_and_flip(channel):
    record = positional(70, 90)
    record["semantic"] = record["image"][..., channel].astype(np.int32)
    flipped = 0
    for seed in range(12):
        out = segmentation_train_example(
            record,
            np.random.default_rng(seed),
            crop_size=48,
            scale=None,
            ratio_range=(1.0, 1.0),
            flip=True,
            photometric=False,
            reduce_zero_label=False,
        )
        np.testing.assert_array_equal(out["label"], out["image"][..., channel])
        rows, cols = out["image"][..., 0].astype(int) - 1, out["image"][..., 1].astype(int) - 1
        if cols[0, 0] > cols[0, -1]:
            flipped += 1
            cols = cols[:, ::-1]
        window = np.mgrid[rows[0, 0] : rows[0, 0] + 48, cols[0, 0] : cols[0, 0] + 48]
        np.testing.assert_array_equal(np.stack([rows, cols]), window)  # one contiguous window, not resampled
    assert 0 < flipped < 12


def test_resize_follows_mmcvs_keep_ratio_rule():
    # min(long bound / long side, short bound / short side), each side rounded half up.
    assert rescale_size(400, 600, (2048, 512)) == (512, 768)  # the short side binds
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # the long side binds: 100 * 2.048 = 204.8
    assert rescale_size(600, 400, (512, 2048)) == (768, 512)  # the order of the bounds does not matter
    assert rescale_size(30, 41, 1.5) == (45, 62)  # a plain factor: 61.5 rounds up
    image, label = photo("coffee"), ade_labels(raw_label("coffee"))
    for ratio, size in ((0.5, (256, 384)), (0.75, (384, 576)), (1.5, (768, 1152)), (2.0, (1024, 1536))):
        # The scale is (2048, 512) * ratio truncated: 0.75 gives (1536, 384), whose short bound binds.
        resized, resized_label = random_resize(image, label, ADE20K_SCALE, ratio)
        assert resized.shape == (*size, 3) and resized_label.shape == size
        assert set(np.unique(resized_label)) <= set(np.unique(label))
    np.testing.assert_array_equal(random_resize(image, label, ADE20K_SCALE, 0.5)[0], cv2.resize(image, (384, 256)))
    resized, resized_label = random_resize(image[:30, :41], label[:30, :41], None, 1.5)
    assert resized.shape == (45, 62, 3) and resized_label.shape == (45, 62)
    same, same_label = random_resize(image, label, None, 1.0)
    assert same is image and same_label is label


def test_cat_max_ratio_rejects_crops_dominated_by_one_class():
    # Columns < 24 alternate classes 1 and 2, the rest is class 5: a 32-wide window at left offset l holds
    # (8 + l) / 32 of class 5, so only l < 16 is mixed enough. Rows are 40: offsets 0..8.
    label = np.full((40, 64), 5, np.uint8)
    label[:, :24] = 1 + np.arange(24) % 2
    label[:3] = IGNORE_LABEL  # ignored pixels do not count

    def top_share(top: int, left: int) -> float:
        counts = np.bincount(label[top : top + 32, left : left + 32].ravel(), minlength=256)[:IGNORE_LABEL]
        return counts.max() / counts.sum()

    chosen = [choose_crop(label, 32, np.random.default_rng(seed), 0.75) for seed in range(30)]
    assert all(top_share(*window) < 0.75 for window in chosen)
    assert len(set(chosen)) > 5
    unfiltered = [choose_crop(label, 32, np.random.default_rng(seed), 1.0) for seed in range(30)]
    assert sum(top_share(*window) >= 0.75 for window in unfiltered) >= 5
    # No acceptable window at all: the last one tried, anywhere; a side shorter than the crop is not cropped.
    for uniform in (np.full((40, 64), 5, np.uint8), np.full((40, 64), IGNORE_LABEL, np.uint8)):
        top, left = choose_crop(uniform, 32, np.random.default_rng(0), 0.75)
        assert 0 <= top <= 8 and 0 <= left <= 32
    assert {choose_crop(label[:20], 32, np.random.default_rng(seed))[0] for seed in range(10)} == {0}


def test_a_side_shorter_than_the_crop_is_padded_with_black_and_ignore():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (20, 30, 3), dtype=np.uint8)
    semantic = rng.integers(0, 4, (20, 30), dtype=np.int32)
    out = segmentation_train_example(
        {"image": image, "semantic": semantic},
        np.random.default_rng(1),
        crop_size=32,
        scale=None,
        ratio_range=(1.0, 1.0),
        flip=False,
        photometric=False,
        reduce_zero_label=False,
    )
    np.testing.assert_array_equal(out["image"][:20, :30], image)
    np.testing.assert_array_equal(out["label"][:20, :30], semantic)
    assert (out["image"][20:] == 0).all() and (out["image"][:, 30:] == 0).all()
    assert (out["label"][20:] == IGNORE_LABEL).all() and (out["label"][:, 30:] == IGNORE_LABEL).all()


def test_photometric_distortion_changes_the_image_only(ade_root):
    record = Ade20kSource(ade_root, "training")[0]
    changed = 0
    for seed in range(8):
        plain = TRAIN(record, np.random.default_rng(seed), crop_size=128, scale=(1024, 256), photometric=False)
        out = TRAIN(record, np.random.default_rng(seed), crop_size=128, scale=(1024, 256), photometric=True)
        np.testing.assert_array_equal(out["label"], plain["label"])
        changed += not np.array_equal(out["image"], plain["image"])
    assert changed >= 5  # unchanged only when all four ops are skipped (1/16)


def test_photometric_distortion_keeps_grey_grey_and_shifts_colours():
    # Brightness and contrast treat channels alike and grey has no saturation or hue: grey stays grey.
    grey = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 3, axis=2)
    colour = photo("astronaut")[::8, ::8].copy()
    outcomes = set()
    for seed in range(20):
        out = photometric_distortion(grey, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == grey.shape
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        # Brightness within +-32, contrast within [0.5, 1.5]: the grey ramp's values stay monotone.
        assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()
        jittered = photometric_distortion(colour, np.random.default_rng(seed))
        outcomes.add(np.array_equal(jittered, colour))
    assert outcomes == {True, False}


def test_evaluation_resizes_the_image_and_keeps_the_label_at_full_resolution(ade_root):
    record = Ade20kSource(ade_root, "validation")[0]
    example = segmentation_eval_example(record, scale=ADE20K_SCALE, reduce_zero_label=True)
    # rocket is 427 x 640: factor min(2048 / 640, 512 / 427) = 1.199; 640 * 1.199 = 767.4.
    assert example["image"].shape == (512, 767, 3) and example["image"].dtype == np.uint8
    np.testing.assert_array_equal(
        example["image"], cv2.resize(decode_image(record["image"]), (767, 512), interpolation=cv2.INTER_LINEAR)
    )
    np.testing.assert_array_equal(example["label"], ade_labels(raw_label("rocket")))
    unscaled = segmentation_eval_example(record, scale=None, reduce_zero_label=False)
    assert unscaled["image"].shape == (427, 640, 3)
    np.testing.assert_array_equal(unscaled["label"], raw_label("rocket"))


def test_undecodable_files_are_skipped_in_training_and_raise_in_evaluation(ade_root):
    record = Ade20kSource(ade_root, "training")[0]
    for bad, reason in (
        ({**record, "image": record["image"][:100]}, "corrupt_image"),
        ({**record, "label_png": b"junk"}, "corrupt_label"),
        ({**record, "label_png": png(np.zeros((400, 600, 3), np.uint8))}, "corrupt_label"),
        ({**record, "label_png": png(np.zeros((10, 10), np.uint8))}, "corrupt_label"),
    ):
        assert TRAIN(bad, np.random.default_rng(0), crop_size=64, scale=ADE20K_SCALE) == {"__skipped__": reason}
        with pytest.raises(BadImage):
            segmentation_eval_example(bad, scale=ADE20K_SCALE, reduce_zero_label=True)


def test_synthetic_scenes_keep_their_labels():
    scenes = SyntheticSegmentation(4, image_size=48, max_objects=3)
    assert scenes.classes == ["background", *CATEGORIES]
    for i in range(4):
        record = scenes[i]
        same = segmentation_train_example(
            record,
            np.random.default_rng(i),
            crop_size=48,
            scale=None,
            ratio_range=(1.0, 1.0),
            flip=False,
            photometric=False,
            reduce_zero_label=False,
        )
        np.testing.assert_array_equal(same["image"], record["image"])
        np.testing.assert_array_equal(same["label"], record["semantic"])  # background 0 stays class 0
        out = segmentation_train_example(
            record,
            np.random.default_rng(i),
            crop_size=40,
            scale=None,
            flip=True,
            photometric=True,
            reduce_zero_label=False,
        )
        assert out["image"].shape == (40, 40, 3) and out["label"].shape == (40, 40)
        assert set(np.unique(out["label"])) <= set(np.unique(record["semantic"])) | {IGNORE_LABEL}
        example = segmentation_eval_example(record, scale=None, reduce_zero_label=False)
        np.testing.assert_array_equal(example["label"], record["semantic"])


def config_for(kind: str, path: str = "", train_split: str = "train") -> ConfigDict:
    # Onto the defaults: the keys a test does not set (e.g. the scenes' options) take their default values.
    return merge_onto_defaults(
        ConfigDict(
            {
                "seed": 0,
                "batch_size": 4,
                "model": {"image_size": 32},
                "data": {
                    "kind": kind,
                    "path": path,
                    "train_split": train_split,
                    "eval_split": "validation",
                    "flip": True,
                    "normalize": "clip",
                    "num_threads": 1,
                    "num_workers": 0,
                    "synthetic": {"num_examples": 10, "max_objects": 2},
                },
                "finetune": {"eval_examples": None},
                "segmentation": {
                    "scale": (256, 64),
                    "ratio_range": (0.5, 2.0),
                    "cat_max_ratio": 0.75,
                    "photometric": True,
                },
            }
        )
    )


def test_sources_and_batches_from_the_config(ade_root):
    config = config_for("synthetic")
    train, held_out = segmentation_source(config, "train"), segmentation_source(config, "eval")
    assert (len(train), train.split, len(held_out), held_out.split) == (10, "train", 200, "validation")
    assert held_out.classes == ["background", *CATEGORIES]
    batch = next(iter(segmentation_dataset(config, train, process_index=0, process_count=1)))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.uint8
    assert set(np.unique(batch["label"])) <= set(range(len(CATEGORIES) + 1)) | {IGNORE_LABEL}
    # The synthetic scenes label every pixel, so "ignore" marks the padding: the pixel "clip" maps to 0.
    padding = batch["label"] == IGNORE_LABEL
    assert padding.any()
    np.testing.assert_array_equal(batch["image"][padding], np.broadcast_to(padding_pixel("clip"), (padding.sum(), 3)))

    ade = segmentation_source(config_for("ade20k", ade_root), "train")  # "train" stands for "training"
    assert isinstance(ade, Ade20kSource) and len(ade) == 2 and ade.classes == ADE20K_CLASSES
    assert len(segmentation_source(config_for("ade20k", ade_root), "eval")) == 1
    assert len(segmentation_source(config_for("ade20k", ade_root, "training"), "train")) == 2
    batch = next(iter(segmentation_dataset(config_for("ade20k", ade_root), ade, process_index=0, process_count=1)))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["label"].shape == (4, 32, 32)
    assert set(np.unique(batch["label"])) <= {0, 2, 12, 149, IGNORE_LABEL}  # reduced: 1, 3, 13, 150 and 0

    with pytest.raises(ConfigError, match="'synthetic', 'ade20k'"):
        segmentation_source(config_for("nyu", ade_root), "train")
    with pytest.raises(ConfigError, match="config.data.path"):
        segmentation_source(config_for("ade20k"), "train")
