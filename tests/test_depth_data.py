"""Depth data: NYUv2 in BTS's layout built from a real stereo pair, its decoding, and the training crop.

The dataset is scikit-image's Middlebury 2014 "Motorcycle" pair (500 x 741, a quarter of the original
2964 x 1988): depth = focal * baseline / (disparity + doffs) with the calibration scaled by 1/4 for the pixel
quantities, focal 3979.911 / 4 px and doffs 124.343 / 4 px, baseline 0.193001 m. Where the disparity is not
finite the depth is 0 (invalid), as in NYUv2's PNGs; the scene lies at about 2 to 5 m.
"""

import os

import cv2
import numpy as np
import pytest
import skimage.data
from ml_collections import ConfigDict

from clipjax.config import merge_onto_defaults
from clipjax.data.depth import (
    NyuDepthSource,
    decode_depth_png,
    depth_dataset,
    depth_eval_example,
    depth_source,
    depth_train_example,
    photometric_jitter,
)
from clipjax.data.images import BadImage, decode_image
from clipjax.data.synthetic import SyntheticScenes
from clipjax.errors import ConfigError
from tests.photos import motorcycle

# (scene, top, left, height, width): NYU's 640 x 480 twice, and one smaller than a 480 crop on both sides.
CROPS = (("kitchen_0028a", 0, 0, 480, 640), ("bedroom_0004", 20, 101, 480, 640), ("office_0003", 50, 200, 300, 400))


def png16(millimetres: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", millimetres)
    assert ok
    return data.tobytes()


@pytest.fixture
def nyu_root(tmp_path) -> str:
    """BTS's layout: <scene>/rgb_<n>.jpg, <scene>/sync_depth_<n>.png and nyu_train.txt listing them."""
    image, millimetres = motorcycle()
    lines = []
    for n, (scene, top, left, height, width) in enumerate(CROPS):
        os.makedirs(tmp_path / scene, exist_ok=True)
        window = np.s_[top : top + height, left : left + width]
        cv2.imwrite(str(tmp_path / scene / f"rgb_{n:05d}.jpg"), image[window][..., ::-1])
        cv2.imwrite(str(tmp_path / scene / f"sync_depth_{n:05d}.png"), millimetres[window])
        slash = "/" if n % 2 == 0 else ""  # BTS's train file starts its paths with "/", its test file does not
        lines.append(f"{slash}{scene}/rgb_{n:05d}.jpg {slash}{scene}/sync_depth_{n:05d}.png 518.8579")
    lines.insert(1, "/kitchen_0028a/rgb_00099.jpg None 518.8579")  # BTS's train file has such lines
    (tmp_path / "nyu_train.txt").write_text("\n".join(lines) + "\n\n")
    return str(tmp_path)


def positional(height: int, width: int) -> dict[str, np.ndarray]:
    """A synthetic-form record whose pixels spell their own (row + 1, col + 1) and whose depth encodes the
    same position, so any crop or flip can be traced back; 0 in the image means padding."""
    rows, cols = np.mgrid[1 : height + 1, 1 : width + 1]
    image = np.stack([rows & 255, cols & 255, (rows >> 8) * 16 + (cols >> 8)], axis=-1).astype(np.uint8)
    return {"image": image, "depth": (rows * 4096 + cols).astype(np.float32)}


def traced(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the record pixel each output pixel came from (-1 for padding)."""
    image = image.astype(np.int64)
    rows = image[..., 0] + (image[..., 2] >> 4) * 256 - 1
    cols = image[..., 1] + (image[..., 2] & 15) * 256 - 1
    return rows, cols


def test_depth_png_decodes_to_metres_exactly(nyu_root):
    millimetres = motorcycle()[1]
    np.testing.assert_array_equal(decode_depth_png(png16(millimetres)), millimetres.astype(np.float32) / 1000)
    extremes = np.array([[0, 1, 65535]], np.uint16)
    decoded = decode_depth_png(png16(extremes))
    assert decoded.dtype == np.float32 and decoded.shape == (1, 3)
    np.testing.assert_array_equal(decoded, extremes.astype(np.float32) / 1000)
    with open(os.path.join(nyu_root, "bedroom_0004", "sync_depth_00001.png"), "rb") as f:
        decoded = decode_depth_png(f.read())
    np.testing.assert_array_equal(decoded, millimetres[20:500, 101:741].astype(np.float32) / 1000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a png",
        png16(motorcycle()[1])[:5000],  # truncated
        png16(np.zeros((4, 4), np.uint8)),  # 8-bit
        png16(np.zeros((4, 4, 3), np.uint16)),  # 16-bit colour
    ],
    ids=["empty", "junk", "truncated", "8-bit", "colour"],
)
def test_depth_png_that_is_not_16_bit_grey_is_refused(data):
    with pytest.raises(BadImage):
        decode_depth_png(data)


def test_split_file_lists_pairs_with_or_without_a_leading_slash_and_leaves_out_none(nyu_root):
    source = NyuDepthSource(nyu_root, "nyu_train.txt")
    assert len(source) == len(CROPS) and source.skipped_missing_depth == 1
    assert "3 pairs" in source.description
    image, millimetres = motorcycle()
    for n, (_, top, left, height, width) in enumerate(CROPS):
        record = source[n]
        assert isinstance(record["image"], bytes) and isinstance(record["depth_png"], bytes)
        assert record["focal"] == pytest.approx(518.8579)
        window = np.s_[top : top + height, left : left + width]
        example = depth_eval_example(record)
        assert example["image"].dtype == np.uint8 and example["depth"].dtype == np.float32
        np.testing.assert_array_equal(example["depth"], millimetres[window].astype(np.float32) / 1000)
        assert np.abs(example["image"].astype(int) - image[window]).mean() < 4  # JPEG loss only
    # An absolute split file path works as well as one relative to the root.
    assert len(NyuDepthSource(nyu_root, os.path.join(nyu_root, "nyu_train.txt"))) == len(CROPS)


def test_missing_root_split_file_or_files_and_malformed_lines_are_config_errors(nyu_root, tmp_path):
    with pytest.raises(ConfigError, match="nyu_test.txt does not exist"):
        NyuDepthSource(nyu_root, "nyu_test.txt")
    with pytest.raises(ConfigError, match="root"):
        NyuDepthSource(str(tmp_path / "absent"), "nyu_train.txt")
    split = os.path.join(nyu_root, "bad.txt")
    for text, message in (
        ("a.jpg b.png 518.8\nonly_one_field\n", "bad.txt line 2"),
        ("a.jpg b.png not_a_focal\n", "bad.txt line 1"),
        ("a.jpg b.png 1.0 extra\n", "bad.txt line 1"),
        ("\n", "no image-depth pairs"),
        ("elsewhere/rgb.jpg elsewhere/depth.png 518.8\n", "not under the NYUv2 root"),
    ):
        with open(split, "w") as f:
            f.write(text)
        with pytest.raises(ConfigError, match=message) as error:
            NyuDepthSource(nyu_root, "bad.txt")
        assert "\n" not in str(error.value)


def test_crop_cuts_the_same_window_from_image_and_depth_without_resampling(nyu_root):
    record = NyuDepthSource(nyu_root, "nyu_train.txt")[1]  # 640 x 480: only the column offset is random
    image = decode_image(record["image"])
    depth = decode_depth_png(record["depth_png"])
    present = np.unique(depth)
    offsets = set()
    for seed in range(6):
        out = depth_train_example(record, np.random.default_rng(seed), crop_size=480, flip=False, photometric=False)
        assert out["image"].shape == (480, 480, 3) and out["depth"].shape == (480, 480)
        assert out["image"].dtype == np.uint8 and out["depth"].dtype == np.float32
        # The window is wherever the image crop matches the decoded image exactly; the depth must be that slice.
        matches = [c for c in range(641 - 480) if np.array_equal(image[:, c : c + 480], out["image"])]
        assert len(matches) == 1
        np.testing.assert_array_equal(out["depth"], depth[:, matches[0] : matches[0] + 480])
        # Never interpolated: every value was in the map, and invalid pixels stay exactly 0.
        assert np.isin(out["depth"], present).all()
        assert (out["depth"] == 0).sum() == (depth[:, matches[0] : matches[0] + 480] == 0).sum() > 0
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_flip_mirrors_image_and_depth_together():
    record = positional(40, 50)
    flipped = 0
    for seed in range(16):
        out = depth_train_example(record, np.random.default_rng(seed), crop_size=32, flip=True, photometric=False)
        rows, cols = traced(out["image"])
        np.testing.assert_array_equal(out["depth"], record["depth"][rows, cols])  # aligned pixel for pixel
        if cols[0, 0] > cols[0, -1]:
            flipped += 1
            cols = cols[:, ::-1]
        window = np.mgrid[rows[0, 0] : rows[0, 0] + 32, cols[0, 0] : cols[0, 0] + 32]
        np.testing.assert_array_equal(np.stack([rows, cols]), window)  # contiguous, no resampling
    assert 0 < flipped < 16


def test_a_side_shorter_than_the_crop_is_padded_with_black_and_invalid_depth(nyu_root):
    record = positional(20, 50)  # rows padded, columns cropped
    out = depth_train_example(record, np.random.default_rng(3), crop_size=32, flip=False, photometric=False)
    inside = out["image"].any(axis=(1, 2))
    assert inside.sum() == 20 and np.ptp(np.flatnonzero(inside)) == 19  # the 20 rows, contiguous
    assert (out["image"][~inside] == 0).all() and (out["depth"][~inside] == 0).all()
    rows, cols = traced(out["image"][inside])
    np.testing.assert_array_equal(rows[:, 0], np.arange(20))
    np.testing.assert_array_equal(out["depth"][inside], record["depth"][rows, cols])

    nyu = NyuDepthSource(nyu_root, "nyu_train.txt")[2]  # 400 x 300 under a 480 crop: padded on both sides
    depth = decode_depth_png(nyu["depth_png"])
    out = depth_train_example(nyu, np.random.default_rng(0), crop_size=480, flip=False, photometric=False)
    top, left = (int(np.flatnonzero(out["image"].any(axis=axis))[0]) for axis in ((1, 2), (0, 2)))
    np.testing.assert_array_equal(out["depth"][top : top + 300, left : left + 400], depth)
    np.testing.assert_array_equal(out["image"][top : top + 300, left : left + 400], decode_image(nyu["image"]))
    assert (out["depth"] != 0).sum() == (depth != 0).sum()


def test_photometric_jitter_changes_the_image_only(nyu_root):
    record = NyuDepthSource(nyu_root, "nyu_train.txt")[0]
    jittered = 0
    for seed in range(8):
        plain = depth_train_example(record, np.random.default_rng(seed), crop_size=480, flip=True, photometric=False)
        out = depth_train_example(record, np.random.default_rng(seed), crop_size=480, flip=True, photometric=True)
        np.testing.assert_array_equal(out["depth"], plain["depth"])
        if not np.array_equal(out["image"], plain["image"]):
            jittered += 1
            # A monotone map per channel: the same input value gives the same output value.
            for c in range(3):
                values, first = np.unique(plain["image"][..., c], return_index=True)
                mapped = out["image"][..., c].ravel()[first]
                np.testing.assert_array_equal(
                    mapped[np.searchsorted(values, plain["image"][..., c])], out["image"][..., c]
                )
                assert (np.diff(mapped.astype(int)) >= 0).all()
    assert 0 < jittered < 8


def test_photometric_jitter_is_btss_gamma_brightness_and_colour():
    image = skimage.data.astronaut()
    out = photometric_jitter(image, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    gamma, brightness, colours = rng.uniform(0.9, 1.1), rng.uniform(0.75, 1.25), rng.uniform(0.9, 1.1, size=3)
    expected = np.clip((image / 255.0) ** gamma * brightness * colours, 0, 1) * 255
    assert out.dtype == np.uint8 and np.abs(out - expected).max() <= 0.51


def test_undecodable_files_and_mismatched_sizes_are_skipped_in_training_and_raise_in_evaluation(nyu_root):
    record = NyuDepthSource(nyu_root, "nyu_train.txt")[0]
    small_depth = png16(np.ones((10, 10), np.uint16))
    for bad, reason in (
        ({**record, "image": record["image"][:100]}, "corrupt_image"),
        ({**record, "depth_png": b"junk"}, "corrupt_depth"),
        ({**record, "depth_png": png16(np.ones((480, 640), np.uint8))}, "corrupt_depth"),
        ({**record, "depth_png": small_depth}, "corrupt_depth"),
    ):
        out = depth_train_example(bad, np.random.default_rng(0), crop_size=64, flip=True, photometric=True)
        assert out == {"__skipped__": reason}
        with pytest.raises(BadImage):
            depth_eval_example(bad)


def test_synthetic_scenes_go_through_the_same_transform():
    scenes = SyntheticScenes(4, image_size=48, max_objects=3)
    for i in range(4):
        record = scenes[i]
        out = depth_train_example(record, np.random.default_rng(i), crop_size=48, flip=True, photometric=False)
        if not np.array_equal(out["image"], record["image"]):
            record = {"image": record["image"][:, ::-1], "depth": record["depth"][:, ::-1]}
        np.testing.assert_array_equal(out["image"], record["image"])
        np.testing.assert_array_equal(out["depth"], record["depth"])
        small = depth_train_example(scenes[i], np.random.default_rng(i), crop_size=32, flip=False, photometric=True)
        assert small["image"].shape == (32, 32, 3) and small["depth"].shape == (32, 32)
        assert np.isin(small["depth"], scenes[i]["depth"]).all()
        assert depth_eval_example(scenes[i])["depth"].shape == (48, 48)


def config_for(kind: str, path: str = "") -> ConfigDict:
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
                    "train_split": "nyu_train.txt",
                    "eval_split": "nyu_train.txt",
                    "flip": True,
                    "num_threads": 1,
                    "num_workers": 0,
                    "synthetic": {"num_examples": 10, "max_objects": 2},
                },
                "finetune": {"eval_examples": None},
                "depth": {"photometric": True},
            }
        )
    )


def test_sources_and_batches_from_the_config(nyu_root):
    config = config_for("synthetic")
    train, held_out = depth_source(config, "train"), depth_source(config, "eval")
    assert (len(train), train.split, len(held_out), held_out.split) == (10, "train", 200, "validation")
    batch = next(iter(depth_dataset(config, train, process_index=0, process_count=1)))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["depth"].shape == (4, 32, 32) and batch["depth"].dtype == np.float32

    nyu = depth_source(config_for("nyu", nyu_root), "train")
    assert isinstance(nyu, NyuDepthSource) and len(nyu) == len(CROPS)
    batch = next(iter(depth_dataset(config_for("nyu", nyu_root), nyu, process_index=0, process_count=1)))
    assert batch["depth"].shape == (4, 32, 32) and (batch["depth"] >= 0).all()

    with pytest.raises(ConfigError, match="'synthetic', 'nyu'"):
        depth_source(config_for("tfds", nyu_root), "train")
    with pytest.raises(ConfigError, match="config.data.path"):
        depth_source(config_for("nyu"), "train")
