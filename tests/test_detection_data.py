"""Instance segmentation data: the COCO source and its masks (on the scikit-image fixture of tests/coco_fixture.py),
ViTDet's large-scale jitter against an oracle, the evaluation resize, the synthetic scenes' COCO ground truth,
and the pipeline's skipping of corrupt images.

The LSJ oracle: a record's image is replaced by one whose pixels spell their own (row, column), so the transformed
image itself says where each output pixel came from (bilinear and area resampling reproduce a linear ramp
exactly). The test fits that map, samples the full-resolution masks through it by nearest neighbour, and checks
the example's boxes and box-cropped masks against the result.
"""

import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from ml_collections import ConfigDict
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from clipjax.config import merge_onto_defaults
from clipjax.data.coco import CocoSource, instance_masks
from clipjax.data.detection import (
    SyntheticDetection,
    category_ids,
    detection_dataset,
    detection_eval_example,
    detection_ground_truth,
    detection_source,
    detection_train_example,
    synthetic_ground_truth,
)
from clipjax.data.images import BadImage, decode_image
from clipjax.data.synthetic import CATEGORIES
from clipjax.data.transforms import BLACK, padding_pixel
from clipjax.errors import ConfigError
from tests.coco_fixture import file_name, make_coco, uncompressed_rle

COCO_IDS = [1, 5, 10, 17, 47, 50, 90]
NAMES = ["person", "airplane", "traffic light", "cat", "cup", "spoon", "toothbrush"]
TRAFFIC_LIGHT = NAMES.index("traffic light")  # only ever a crowd in the fixture
MEAN_PIXEL = padding_pixel("clip")  # (123, 117, 104): CLIP's mean colour, which "clip" normalisation maps to about 0


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> str:
    return make_coco(str(tmp_path_factory.mktemp("coco")))


@pytest.fixture(scope="module")
def small_coco_root(tmp_path_factory) -> str:
    """The fixture at 128 pixels: positional images then count in steps of 2, half a source pixel."""
    return make_coco(str(tmp_path_factory.mktemp("coco128")), size=128)


def load_json(root: str, split: str) -> dict:
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


def step_of(height: int, width: int) -> int:
    """The largest whole step by which uint8 values can count the pixels of the longer side."""
    return 255 // (max(height, width) - 1)


def positional(height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: (row, column, 7) times the step at every pixel (sides up to 256), so that resampled
    values say where they came from to a fraction of a pixel on small images."""
    rows, cols = np.mgrid[:height, :width] * step_of(height, width)
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def inside_polygon(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool [H, W]: even-odd rule at the pixel centres, independent of pycocotools."""
    ys, xs = np.mgrid[:height, :width].astype(np.float64) + 0.5
    inside = np.zeros((height, width), bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        if y0 != y1:
            inside ^= ((y0 > ys) != (y1 > ys)) & (xs < (x1 - x0) * (ys - y0) / (y1 - y0) + x0)
    return inside


def near_outline(polygon: np.ndarray, height: int, width: int, reach: float = 1.0) -> np.ndarray:
    """bool [H, W]: pixel centres within `reach` of an edge of the polygon."""
    points = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float64) + 0.5
    near = np.zeros((height, width), bool)
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):
        t = np.clip(((points - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-12), 0, 1)
        near |= np.linalg.norm(points - (a + t[..., None] * (b - a)), axis=-1) <= reach
    return near


def tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def paste(target: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """bool [size, size]: an M x M box-cropped mask resized back into its box."""
    x0, y0, x1, y1 = box.astype(int)
    frame = np.zeros((size, size), bool)
    frame[y0:y1, x0:x1] = cv2.resize(target.astype(np.float32), (x1 - x0, y1 - y0)) >= 0.5
    return frame


def exact_axis(values: np.ndarray, source: int, step: int) -> tuple[float, float]:
    """(slope, intercept) of the source coordinate shown along one output axis of a positional image.

    The LSJ map is source = (i + offset + 0.5) / s - 0.5 (i mirrored, i -> content - 1 - i, when flipped), with
    s = resized / source for whole pixel counts `resized` and `offset`: a least-squares fit of the shown values
    (rounded to 1 / step by the resampling) narrows those down, the map closest to the values is returned
    exactly, and every value must lie within a unit of it: the image went through that map.
    """
    index = np.arange(len(values), dtype=np.float64)
    usable = (values > 1 / step) & (values < source - 1 - 1 / step)  # the resampling clamps at the edges
    slope, intercept = np.polyfit(index[usable], values[usable], 1)
    last = len(values) - 1 if slope < 0 else 0  # the output pixel showing the window's first source column
    candidates = []
    for resized in range(max(round(source / abs(slope)) - 3, 1), round(source / abs(slope)) + 4):
        scale = resized / source
        guess = round((intercept + last * slope + 0.5) * scale - 0.5)
        for offset in range(guess - 2, guess + 3):
            exact_slope = np.sign(slope) / scale
            exact_intercept = (offset + 0.5) / scale - 0.5 - last * exact_slope
            errors = np.abs(values - (exact_slope * index + exact_intercept))[usable]
            candidates.append((float(np.mean(errors**2)), errors.max(), exact_slope, exact_intercept))
    _, worst, exact_slope, exact_intercept = min(candidates)
    assert worst <= 1.0, (slope, intercept, worst)
    return exact_slope, exact_intercept


def oracle_masks(example: dict, masks: np.ndarray, size: int) -> np.ndarray:
    """bool [K, S, S]: the full masks [K, H, W] sampled by nearest neighbour where the positional image says each
    output pixel came from."""
    height, width = example["image_size"]
    step = step_of(*masks.shape[1:])
    rows = example["image"][:height, :width, 0].astype(np.float64).mean(axis=1) / step
    cols = example["image"][:height, :width, 1].astype(np.float64).mean(axis=0) / step
    (ay, by), (ax, bx) = exact_axis(rows, masks.shape[1], step), exact_axis(cols, masks.shape[2], step)
    ys = np.floor(ay * np.arange(height) + by + 0.5).astype(int)
    xs = np.floor(ax * np.arange(width) + bx + 0.5).astype(int)
    valid = ((ys >= 0) & (ys < masks.shape[1]))[:, None] & ((xs >= 0) & (xs < masks.shape[2]))[None, :]
    sampled = masks[:, np.clip(ys, 0, masks.shape[1] - 1)][:, :, np.clip(xs, 0, masks.shape[2] - 1)] & valid
    frame = np.zeros((len(masks), size, size), bool)
    frame[:, :height, :width] = sampled
    return frame


def check_against_oracle(example: dict, classes: np.ndarray, masks: np.ndarray, size: int, max_instances: int):
    """The example's instances are the oracle's (non-empty) ones, boxes within 1 px, pasted masks IoU > 0.9."""
    oracle = oracle_masks(example, masks, size)
    present = [k for k in range(len(oracle)) if oracle[k].sum() >= 4]
    count = int((example["classes"] >= 0).sum())
    assert min(len(present), max_instances) <= count <= max_instances
    matched = set()
    for row in range(count):
        box, target = example["boxes"][row], example["masks"][row]
        assert np.array_equal(box, np.round(box)) and box[2] > box[0] and box[3] > box[1]
        pasted = paste(target, box, size)
        candidates = [k for k in range(len(oracle)) if classes[k] == example["classes"][row] and oracle[k].any()]
        k = max(candidates, key=lambda c: iou(pasted, oracle[c]), default=None)
        if k is None or iou(pasted, oracle[k]) == 0:
            # A sliver of a few pixels: where the sampling positions tie, it exists in one and not the other.
            assert (box[2] - box[0]) * (box[3] - box[1]) <= 4
            continue
        matched.add(k)
        np.testing.assert_allclose(box, tight_box(oracle[k]), atol=1.0)
        # Masks are compared from 150 pixels on: below, one row or column of the outline, sampled differently
        # where a sampling position ties (the oracle knows the map from whole uint8 steps, cv2 samples at 1/1024
        # pixel), weighs more than a tenth. An M x M mask cannot hold every outline of a box much larger than M:
        # the bar is then what the oracle's own mask cut to its box, resampled to M x M and pasted back, reaches.
        if oracle[k].sum() >= 150:
            x0, y0, x1, y1 = tight_box(oracle[k]).astype(int)
            own = cv2.resize(oracle[k, y0:y1, x0:x1].astype(np.float32), target.shape, interpolation=cv2.INTER_AREA)
            limit = iou(paste(own >= 0.5, tight_box(oracle[k]), size), oracle[k])
            assert iou(pasted, oracle[k]) > min(0.9, limit - 0.03), (row, iou(pasted, oracle[k]), limit)
    if len(present) <= max_instances:
        assert set(present) <= matched


def check_layout(example: dict, size: int, max_instances: int, mask_size: int) -> None:
    """Fixed shapes and dtypes; zero image padding past image_size; padding rows -1 / zero."""
    expected = {
        "image": ((size, size, 3), np.uint8),
        "image_size": ((2,), np.int32),
        "boxes": ((max_instances, 4), np.float32),
        "classes": ((max_instances,), np.int32),
        "masks": ((max_instances, mask_size, mask_size), np.uint8),
    }
    assert {k: (v.shape, v.dtype) for k, v in example.items()} == expected
    height, width = example["image_size"]
    assert 1 <= height <= size and 1 <= width <= size
    assert not example["image"][height:].any() and not example["image"][:, width:].any()
    valid = example["classes"] >= 0
    count = int(valid.sum())
    assert valid[:count].all() and not valid[count:].any()  # instances first, then padding
    assert not example["boxes"][count:].any() and not example["masks"][count:].any()
    assert set(np.unique(example["masks"])) <= {0, 1}
    assert all(example["masks"][row].any() for row in range(count))
    boxes = example["boxes"][:count]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


def test_coco_categories_map_both_ways(coco_root):
    source = CocoSource(coco_root, "train2017")
    assert source.classes == NAMES and source.category_ids == category_ids(source) == COCO_IDS
    assert source.annotation_file == os.path.join(coco_root, "annotations", "instances_train2017.json")
    # Every record's contiguous category goes back to the JSON's id, and every id to its index.
    raw = load_json(coco_root, "train2017")
    by_image = {}
    for ann in raw["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for index in range(len(source)):
        record = source[index]
        anns = by_image[record["image_id"]]
        assert [COCO_IDS[a["category"]] for a in record["annotations"]] == [a["category_id"] for a in anns]
        assert [a["category"] for a in record["annotations"]] == [COCO_IDS.index(a["category_id"]) for a in anns]
        assert [a["bbox"] for a in record["annotations"]] == [a["bbox"] for a in anns]
    scenes = SyntheticDetection(2, image_size=32)
    assert scenes.classes == list(CATEGORIES) and category_ids(scenes) == list(range(1, 11))


def test_source_keeps_annotated_training_images_and_every_evaluation_image(coco_root):
    train, validation = CocoSource(coco_root, "train"), CocoSource(coco_root, "validation")  # generic names
    # camera (50) has only a crowd annotation: left out of training, as detectron2 filters empty images.
    assert [train[i]["image_id"] for i in range(len(train))] == [9, 25, 30] and "3 images" in train.description
    assert [validation[i]["image_id"] for i in range(len(validation))] == [7, 42]  # coins has no annotation
    everything = CocoSource(coco_root, "train2017", drop_empty=False)
    assert [everything[i]["image_id"] for i in range(len(everything))] == [9, 25, 30, 50]
    for record in (train[0], validation[0], everything[3]):
        assert record["name"] == file_name(record["image_id"]) and isinstance(record["image"], bytes)
        pixels = decode_image(record["image"])
        assert pixels.shape == (record["height"], record["width"], 3) and max(pixels.shape) == 256
    assert validation[0]["annotations"] == []
    assert [a["iscrowd"] for a in validation[1]["annotations"]] == [0, 1]


def test_missing_paths_are_one_line_config_errors(tmp_path):
    root = make_coco(str(tmp_path / "coco"))
    os.rename(os.path.join(root, "val2017"), os.path.join(root, "moved"))
    os.remove(os.path.join(root, "train2017", file_name(25)))
    for args, message in (
        ((str(tmp_path / "absent"), "train2017"), "COCO root .*absent does not exist"),
        ((root, "test2017"), "instances_test2017.json does not exist"),
        ((root, "val2017"), "image folder .*val2017 does not exist"),
        ((root, "train2017"), "1 images of .* are not in .*train2017: 000000000025.jpg$"),
    ):
        with pytest.raises(ConfigError, match=message) as error:
            CocoSource(*args)
        assert "\n" not in str(error.value)


def test_polygon_masks_match_an_independent_rasterisation(coco_root):
    raw = load_json(coco_root, "train2017")
    sizes = {image["id"]: (image["height"], image["width"]) for image in raw["images"]}
    polygons = [a for a in raw["annotations"] if isinstance(a["segmentation"], list)]
    assert len(polygons) == 4 and any(len(a["segmentation"]) == 2 for a in polygons)  # the cup's body and handle
    for ann in polygons:
        height, width = sizes[ann["image_id"]]
        (mask,) = instance_masks([ann], height, width)
        outlines = [np.reshape(p, (-1, 2)) for p in ann["segmentation"]]
        expected = np.logical_or.reduce([inside_polygon(o, height, width) for o in outlines])
        boundary = np.logical_or.reduce([near_outline(o, height, width) for o in outlines])
        assert iou(mask, expected) > 0.97
        assert not ((mask ^ expected) & ~boundary).any()  # they differ only on pixels the outline crosses
        assert abs(int(mask.sum()) - ann["area"]) == 0
        x, y, w, h = ann["bbox"]  # the vertices' box; the mask's pixels lie within it, give or take a pixel
        np.testing.assert_allclose(tight_box(mask), [x, y, x + w, y + h], atol=1.0)
    assert instance_masks([], 5, 7).shape == (0, 5, 7)
    degenerate = instance_masks([{"segmentation": [[1, 1, 4, 4]]}, {"segmentation": [[1, 1, 6, 1, 6, 4]]}], 8, 8)
    assert not degenerate[0].any() and degenerate[1].any()  # 2 points are not a polygon (nor a box)


def test_rle_masks_round_trip(coco_root):
    rng = np.random.default_rng(0)
    blob = cv2.GaussianBlur(rng.random((37, 53)), (0, 0), 3) > 0.5
    blob[0, 0] = True  # the counts then start with an empty run of 0s
    compressed = mask_util.encode(np.asfortranarray(blob.astype(np.uint8)))
    masks = instance_masks(
        [
            {"segmentation": uncompressed_rle(blob)},
            {"segmentation": compressed},
            {"segmentation": {**compressed, "counts": compressed["counts"].decode("ascii")}},  # as JSON holds it
        ],
        37,
        53,
    )
    assert masks.dtype == bool and masks.shape == (3, 37, 53)
    for mask in masks:
        np.testing.assert_array_equal(mask, blob)
    # The fixture's RLEs (the spoon compressed, the crowds uncompressed) decode to their outlines' pixels.
    for split, kinds in (("train2017", {str, list}), ("val2017", {list})):
        raw = load_json(coco_root, split)
        sizes = {image["id"]: (image["height"], image["width"]) for image in raw["images"]}
        rles = [a for a in raw["annotations"] if isinstance(a["segmentation"], dict)]
        assert {type(a["segmentation"]["counts"]) for a in rles} == kinds
        for ann in rles:
            (mask,) = instance_masks([ann], *sizes[ann["image_id"]])
            assert mask.sum() == ann["area"] > 0
            assert (ann["iscrowd"] == 1) == isinstance(ann["segmentation"]["counts"], list)
            reencoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            np.testing.assert_array_equal(mask_util.decode(reencoded).astype(bool), mask)


def test_lsj_on_coco_keeps_boxes_masks_and_pixels_aligned(small_coco_root):
    source = CocoSource(small_coco_root, "train2017")
    size, flipped, cropped, shrunk = 128, 0, 0, 0
    for seed in range(16):
        record = source[seed % len(source)]
        record = {**record, "image": positional(record["height"], record["width"])}
        annotations = [a for a in record["annotations"] if not a["iscrowd"]]
        classes = np.array([a["category"] for a in annotations])
        masks = instance_masks(annotations, record["height"], record["width"])
        example = detection_train_example(
            record, np.random.default_rng(seed), image_size=size, max_instances=6, mask_size=28, flip=True
        )
        check_layout(example, size, 6, 28)
        check_against_oracle(example, classes, masks, size, 6)
        height, width = example["image_size"]
        columns = example["image"][0, :width, 1].astype(int)
        flipped += columns[0] > columns[-1]
        cropped += bool(example["image"][:height, :width, :2].min() > 0)
        shrunk += max(height, width) < size
    assert 0 < flipped < 16 and cropped > 0 and shrunk > 0


def test_lsj_on_synthetic_scenes_matches_the_oracle():
    scenes = SyntheticDetection(10, image_size=64, max_objects=6, seed=3)
    for index in range(10):
        record = scenes[index]
        count = int(record["num_objects"])
        masks, classes = record["masks"][:count], record["classes"][:count]
        record = {**record, "image": positional(64, 64)}
        example = detection_train_example(
            record, np.random.default_rng(index), image_size=96, max_instances=8, mask_size=28, flip=True
        )
        check_layout(example, 96, 8, 28)
        check_against_oracle(example, classes, masks, 96, 8)


def rectangles_record(height: int, width: int, rects: list[tuple[int, int, int, int]]) -> dict:
    """A synthetic-form record: a positional image and one instance per (x0, y0, x1, y1) rectangle, class i."""
    masks = np.zeros((len(rects), height, width), bool)
    for mask, (x0, y0, x1, y1) in zip(masks, rects):
        mask[y0:y1, x0:x1] = True
    return {
        "image": positional(height, width),
        "classes": np.arange(len(rects), dtype=np.int32),
        "masks": masks,
        "num_objects": np.int32(len(rects)),
    }


def test_unscaled_examples_are_exact_crops_flips_and_keep_the_largest_instances():
    # 2 x 10, 20 x 20, 4 x 4, 30 x 12 and an L shape.
    rects = [(5, 5, 7, 15), (30, 10, 50, 30), (0, 0, 4, 4), (20, 25, 50, 37)]
    record = rectangles_record(40, 60, rects)
    el = np.zeros((40, 60), bool)
    el[2:38, 52:56] = True  # the L: a bar down the right ...
    el[34:38, 30:56] = True  # ... and a foot to the left at the bottom
    record["masks"] = np.concatenate([record["masks"], el[None]])
    record["classes"] = np.arange(5, dtype=np.int32)
    record["num_objects"] = np.int32(5)
    exact = {"image_size": 60, "mask_size": 8, "scale_range": (1.0, 1.0)}
    step = step_of(40, 60)
    seen = set()
    for seed in range(8):
        out = detection_train_example(record, np.random.default_rng(seed), max_instances=5, flip=True, **exact)
        mirrored = out["image"][0, 0, 1] == 59 * step
        seen.add(bool(mirrored))
        np.testing.assert_array_equal(out["image"][:40, :60], record["image"][:, ::-1] if mirrored else record["image"])
        boxes = np.array([tight_box(m) for m in record["masks"]])
        if mirrored:
            boxes[:, [0, 2]] = 60 - boxes[:, [2, 0]]
        np.testing.assert_array_equal(out["boxes"], boxes)
        assert (out["masks"][:4] == 1).all()  # a rectangle fills its box
        np.testing.assert_array_equal(out["classes"], np.arange(5))
    assert seen == {True, False}
    # Two kept: the two largest (the 20 x 20 square and the 30 x 12 bar), in their original order.
    out = detection_train_example(record, np.random.default_rng(0), max_instances=2, flip=False, **exact)
    np.testing.assert_array_equal(out["classes"], [1, 3])
    np.testing.assert_array_equal(out["boxes"], [rects[1], rects[3]])
    # r = 2 with S = 30 scales by 2 * 30 / 60 = 1: a plain 30 x 30 window. Boxes are the tight boxes of what is
    # left, which for the L can be tighter than its clipped box; instances outside the window are dropped.
    windows, tighter = set(), 0
    for seed in range(10):
        out = detection_train_example(
            record, np.random.default_rng(seed), image_size=30, max_instances=5, mask_size=8, scale_range=(2.0, 2.0),
            flip=False,
        )  # fmt: skip
        top, left = int(out["image"][0, 0, 0]) // step, int(out["image"][0, 0, 1]) // step
        windows.add((top, left))
        np.testing.assert_array_equal(out["image"], record["image"][top : top + 30, left : left + 30])
        expected = [(k, tight_box(m[top : top + 30, left : left + 30])) for k, m in enumerate(record["masks"])
                    if m[top : top + 30, left : left + 30].any()]  # fmt: skip
        count = len(expected)
        np.testing.assert_array_equal(out["classes"][:count], [k for k, _ in expected])
        np.testing.assert_array_equal(out["boxes"][:count], [box for _, box in expected])
        assert (out["classes"][count:] == -1).all()
        clipped = np.clip(tight_box(el) - [left, top, left, top], 0, 30)
        tighter += any(k == 4 and not np.array_equal(box, clipped) for k, box in expected)
    assert len(windows) > 3 and all(0 <= top <= 10 and 0 <= left <= 30 for top, left in windows)
    assert tighter > 0


def test_crowds_are_dropped_and_a_crowd_only_image_gives_padding(coco_root):
    rocket = CocoSource(coco_root, "val2017")[1]
    assert [a["category"] for a in rocket["annotations"]] == [NAMES.index("airplane"), TRAFFIC_LIGHT]
    whole = detection_train_example(
        rocket, np.random.default_rng(0), image_size=256, max_instances=4, mask_size=14, scale_range=(1, 1), flip=True
    )
    np.testing.assert_array_equal(whole["classes"], [NAMES.index("airplane"), -1, -1, -1])
    for seed in range(6):
        out = detection_train_example(
            rocket, np.random.default_rng(seed), image_size=96, max_instances=4, mask_size=14, flip=True
        )
        assert TRAFFIC_LIGHT not in out["classes"]
    camera = CocoSource(coco_root, "train2017", drop_empty=False)[3]
    assert [a["iscrowd"] for a in camera["annotations"]] == [1]
    out = detection_train_example(
        camera, np.random.default_rng(0), image_size=64, max_instances=3, mask_size=8, flip=True
    )
    check_layout(out, 64, 3, 8)
    assert (out["classes"] == -1).all()


def test_evaluation_resizes_the_longer_side_and_pads(coco_root):
    validation = CocoSource(coco_root, "val2017")
    for record, size, content in ((validation[1], 128, (86, 128)), (validation[0], 300, (237, 300))):
        # rocket 171 x 256 halved (85.5 rounds up); coins 202 x 256 enlarged by 300 / 256 (236.7).
        example = detection_eval_example(record, image_size=size, pad_pixel=MEAN_PIXEL)
        assert {k: (v.shape, v.dtype) for k, v in example.items()} == {
            "image": ((size, size, 3), np.uint8),
            "image_size": ((2,), np.int32),
            "scale": ((), np.float32),
            "original_size": ((2,), np.int32),
            "image_id": ((), np.int64),
        }
        assert tuple(example["image_size"]) == content and example["image_id"] == record["image_id"]
        assert tuple(example["original_size"]) == (record["height"], record["width"])
        np.testing.assert_allclose(example["scale"], size / 256, rtol=1e-6)
        original = decode_image(record["image"])
        # PIL's bilinear resize (detectron2's, antialiased when it shrinks) gives nearly the same pixels.
        reference = np.asarray(Image.fromarray(original).resize(content[::-1], Image.BILINEAR))
        assert np.abs(example["image"][: content[0], : content[1]].astype(int) - reference).mean() < 3
        assert (example["image"][content[0] :] == MEAN_PIXEL).all()
        assert (example["image"][:, content[1] :] == MEAN_PIXEL).all()
    scene = SyntheticDetection(5, image_size=64, split="validation")[4]
    example = detection_eval_example(scene, image_size=96, pad_pixel=BLACK)
    assert example["image_id"] == 4 and example["scale"] == 1.5 and tuple(example["image_size"]) == (96, 96)
    assert tuple(example["original_size"]) == (64, 64)


def test_synthetic_ground_truth_loads_in_pycocotools_and_decodes_to_the_scene_masks(capsys):
    scenes = SyntheticDetection(6, image_size=48, max_objects=4, split="validation")
    truth = json.loads(json.dumps(synthetic_ground_truth(scenes, 5)))  # JSON-serialisable as it is
    coco = COCO()
    coco.dataset = truth
    coco.createIndex()
    assert sorted(coco.getImgIds()) == [0, 1, 2, 3, 4]
    assert coco.getCatIds() == list(range(1, 11))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    assert min(coco.getAnnIds()) == 1
    for index in range(5):
        record = scenes[index]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[index]))
        assert len(anns) == record["num_objects"]
        for k, ann in enumerate(anns):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), record["masks"][k])
            x0, y0, x1, y1 = record["boxes"][k]
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0] and ann["area"] == record["masks"][k].sum()
            assert category_ids(scenes)[record["classes"][k]] == ann["category_id"] and ann["iscrowd"] == 0
    # The ground truth scored as its own detections is perfect, in boxes and masks.
    detections = [{**ann, "score": 1.0} for ann in truth["annotations"]]
    for kind in ("bbox", "segm"):
        evaluation = COCOeval(coco, coco.loadRes([{k: v for k, v in d.items() if k != "id"} for d in detections]), kind)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0)
    capsys.readouterr()


def test_undecodable_images_are_skipped_in_training_and_raise_in_evaluation(coco_root):
    record = CocoSource(coco_root, "train2017")[0]
    train = {"image_size": 64, "max_instances": 3, "mask_size": 8, "flip": True}
    for bad, reason in (
        ({**record, "image": record["image"][:300]}, "corrupt_image"),
        ({**record, "image": b""}, "corrupt_image"),
        ({**record, "height": record["height"] + 1}, "corrupt_label"),  # masks would not line up
    ):
        assert detection_train_example(bad, np.random.default_rng(0), **train) == {"__skipped__": reason}
    with pytest.raises(BadImage):
        detection_eval_example({**record, "image": record["image"][:300]}, image_size=64, pad_pixel=BLACK)


def config_for(kind: str, path: str = "") -> ConfigDict:
    # Onto the defaults: the keys a test does not set (e.g. the scenes' options) take their default values.
    return merge_onto_defaults(
        ConfigDict(
            {
                "seed": 0,
                "batch_size": 4,
                "model": {"image_size": 48},
                "data": {
                    "kind": kind,
                    "path": path,
                    "train_split": "train",
                    "eval_split": "validation",
                    "flip": True,
                    "normalize": "clip",
                    "num_threads": 1,
                    "num_workers": 0,
                    "synthetic": {"num_examples": 10, "max_objects": 3},
                },
                "finetune": {"eval_examples": None},
                "detection": {"max_instances": 3, "mask_size": 8, "scale_range": (0.5, 1.5)},
            }
        )
    )


def test_a_corrupt_jpeg_is_skipped_and_counted_by_the_dataset(tmp_path):
    root = make_coco(str(tmp_path))
    path = os.path.join(root, "train2017", file_name(25))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])  # truncated
    config = config_for("coco", root)
    source = detection_source(config, "train")
    batches = iter(detection_dataset(config, source, process_index=0, process_count=1))
    skipped = 0
    for _ in range(2):
        batch = next(batches)
        assert batch["image"].shape == (4, 48, 48, 3) and batch["masks"].shape == (4, 3, 8, 8)
        assert batch["boxes"].shape == (4, 3, 4) and batch["classes"].shape == (4, 3)
        assert set(batch["__skipped__"]) <= {"corrupt_image"}
        skipped += batch["__skipped__"].get("corrupt_image", 0)
        assert set(np.unique(batch["classes"])) <= {-1, *range(len(NAMES))} - {TRAFFIC_LIGHT}
    # 8 usable examples from epochs of 2 usable images each: 4 epochs at least started, 3 of them finished.
    assert skipped >= 3


def test_sources_and_batches_from_the_config(coco_root):
    config = config_for("synthetic")
    train, held_out = detection_source(config, "train"), detection_source(config, "eval")
    assert (len(train), train.split, len(held_out), held_out.split) == (10, "train", 200, "validation")
    assert held_out.classes == list(CATEGORIES) and held_out[3]["image_id"] == 3
    config.finetune.eval_examples = 7
    assert len(detection_source(config, "eval")) == 7
    batch = next(iter(detection_dataset(config, train, process_index=0, process_count=1)))
    assert batch["image"].shape == (4, 48, 48, 3) and batch["image_size"].shape == (4, 2)
    assert batch["masks"].shape == (4, 3, 8, 8) and batch["masks"].dtype == np.uint8
    assert batch["__skipped__"] == {}
    assert ((batch["classes"] >= -1) & (batch["classes"] < len(CATEGORIES))).all()
    # Past each image's content lies the pixel that "clip" normalisation maps to about 0.
    padding = np.ones((4, 48, 48), bool)
    for row, (height, width) in enumerate(batch["image_size"]):
        padding[row, :height, :width] = False
    assert padding.any()
    np.testing.assert_array_equal(batch["image"][padding], np.broadcast_to(MEAN_PIXEL, (padding.sum(), 3)))

    assert detection_ground_truth(held_out, 3) == synthetic_ground_truth(held_out, 3)
    assert len(detection_ground_truth(detection_source(config, "eval"))["images"]) == 7

    coco = detection_source(config_for("coco", coco_root), "train")  # "train" stands for train2017
    assert isinstance(coco, CocoSource) and len(coco) == 3 and coco.classes == NAMES
    validation = detection_source(config_for("coco", coco_root), "eval")
    assert len(validation) == 2 and detection_ground_truth(validation, 1) == validation.annotation_file
    with pytest.raises(ConfigError, match="'synthetic', 'coco'"):
        detection_source(config_for("ade20k", coco_root), "train")
    with pytest.raises(ConfigError, match="config.data.path"):
        detection_source(config_for("coco"), "train")
