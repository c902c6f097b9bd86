"""COCO detection evaluation: mask pasting against detectron2's grid_sample formula in PyTorch, COCO result
entries, metrics against pycocotools used the plain way (files) and against hand-computed AP, and the
evaluator end to end on a mesh with a fake predict built from the ground truth."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from clipjax.evals.coco_metrics import coco_metrics, coco_results, paste_masks
from clipjax.evals.detection import DetectionEvaluator
from clipjax.parallel import make_mesh

METRICS = ("ap", "ap50", "ap75", "aps", "apm", "apl")
# pycocotools' decode under numpy 2 warns about __array__'s copy keyword; nothing to do with these tests.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def torch_paste(masks: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """detectron2's _do_paste_mask over the whole image (its GPU path), in float64: [K, h, w] probabilities."""
    m = torch.tensor(masks, dtype=torch.float64)[:, None]
    x0, y0, x1, y1 = torch.tensor(boxes, dtype=torch.float64).split(1, dim=1)
    ys = (torch.arange(height, dtype=torch.float64) + 0.5 - y0) / (y1 - y0) * 2 - 1
    xs = (torch.arange(width, dtype=torch.float64) + 0.5 - x0) / (x1 - x0) * 2 - 1
    k = len(boxes)
    grid = torch.stack([xs[:, None, :].expand(k, height, width), ys[:, :, None].expand(k, height, width)], dim=3)
    return torch.nn.functional.grid_sample(m, grid, mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.parametrize("cells", [(28, 28), (14, 9)])
def test_paste_masks_matches_detectron2_grid_sample(cells):
    rng = np.random.default_rng(0)
    height, width, k = 37, 53, 24
    x0 = rng.uniform(-15, width, k)
    y0 = rng.uniform(-15, height, k)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0.3, 40, k), y0 + rng.uniform(0.3, 30, k)], 1).astype(np.float32)
    boxes[0] = [-20.5, -10.25, 70.75, 45.5]  # beyond the image on every side
    boxes[1] = [10.2, 11.7, 10.9, 12.1]  # smaller than a pixel
    masks = rng.random((k, *cells)).astype(np.float32)
    boxes[2] = [5.3, 6.6, 30.1, 20.8]
    masks[2] = 1.0  # a full mask: 1 inside, fading to 0 half a cell beyond the box
    want = torch_paste(masks, boxes, height, width)
    got = paste_masks(masks, boxes, height, width, threshold=None)
    assert got.dtype == np.float32 and got.shape == (k, height, width)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert want[2].max() == pytest.approx(1.0)
    touching = (want > 0).any(axis=(1, 2))
    assert 2 <= (~touching).sum() <= k // 2  # some boxes miss the image wholly, most do not
    for threshold in (0.5, 0.2):
        binary = paste_masks(masks, boxes, height, width, threshold=threshold)
        assert binary.dtype == bool
        decided = np.abs(want - threshold) > 1e-4  # float32 rounding may flip pixels at the threshold itself
        np.testing.assert_array_equal(binary[decided], (want >= threshold)[decided])


def test_paste_masks_empty_and_bad_boxes():
    masks = np.ones((4, 8, 8), np.float32)
    boxes = np.array([[5, 5, 5, 9], [3, 3, 1, 8], [np.nan, 0, 4, 4], [100, 100, 120, 130]], np.float32)
    out = paste_masks(masks, boxes, 20, 30)
    assert out.shape == (4, 20, 30) and not out.any()
    assert paste_masks(np.zeros((0, 8, 8), np.float32), np.zeros((0, 4), np.float32), 5, 6).shape == (0, 5, 6)
    with pytest.raises(ValueError, match="threshold"):
        paste_masks(masks, boxes, 20, 30, threshold=0.0)
    # A full mask over an integer box covers exactly the box's pixels while its cells are at most 2.4 pixels
    # wide (at the corners, (1/2 + 1/2 m/b)^2 >= 1/2) ...
    one = paste_masks(np.ones((1, 28, 28), np.float32), np.array([[3, 2, 40, 9]], np.float32), 12, 50)[0]
    want = np.zeros((12, 50), bool)
    want[2:9, 3:40] = True
    np.testing.assert_array_equal(one, want)
    # ... wider cells fade the corner pixels below 1/2 (as detectron2's do).
    wide = paste_masks(np.ones((1, 4, 4), np.float32), np.array([[3, 2, 40, 11]], np.float32), 12, 50)[0]
    want[2:11, 3:40] = True
    # Cells 9.25 x 2.25 pixels: corner pixels see 0.55 or 0.66 of the width and 0.72 of the height.
    assert not (wide & ~want).any()
    np.testing.assert_array_equal(np.argwhere(want & ~wide), [[r, c] for r in (2, 10) for c in (3, 4, 38, 39)])


def test_coco_results_round_trip():
    rng = np.random.default_rng(1)
    height, width = 13, 17
    masks = rng.random((3, height, width)) > 0.5
    boxes = np.array([[1.5, 2.0, 10.25, 12.0], [0, 0, 17, 13], [4, 5, 6, 7]], np.float32)
    scores = np.array([0.9, 0.5, 0.125], np.float32)
    classes = np.array([2, 0, 2], np.int32)
    results = coco_results(42, boxes, scores, classes, masks, category_ids=[1, 5, 90])
    results = json.loads(json.dumps(results))  # serialisable as it is
    assert [r["category_id"] for r in results] == [90, 1, 90]
    assert all(r["image_id"] == 42 for r in results)
    np.testing.assert_allclose([r["score"] for r in results], scores)
    np.testing.assert_allclose([r["bbox"] for r in results], [[1.5, 2, 8.75, 10], [0, 0, 17, 13], [4, 5, 2, 2]])
    for r, mask in zip(results, masks):
        assert r["segmentation"]["size"] == [height, width]
        np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]).astype(bool), mask)
    boxes_only = coco_results(7, boxes, scores, classes, None, category_ids=[1, 5, 90])
    assert "segmentation" not in boxes_only[0] and boxes_only[0]["bbox"] == results[0]["bbox"]
    assert coco_results(7, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros((0, 4, 4), bool), [1]) == []
    with pytest.raises(ValueError, match="categories"):
        coco_results(7, boxes, scores, classes, None, category_ids=[1, 5])


# Ground truth: rectangles (x, y, w, h) with integer corners, so a full m x m mask pasted into the exact box
# is exactly the object. Areas reach every size bucket (small < 32^2 <= medium < 96^2 <= large).
IMAGES = {  # id: (height, width, [(category id, (x, y, w, h)), ...])
    11: (120, 160, [(3, (10, 20, 110, 90)), (7, (130, 5, 20, 20))]),
    12: (90, 60, [(3, (5, 5, 40, 50)), (3, (45, 60, 12, 25))]),
    13: (150, 200, [(7, (0, 0, 200, 60)), (3, (60, 70, 30, 30))]),
    14: (64, 64, [(7, (1, 2, 61, 61))]),
    15: (100, 130, [(3, (100, 80, 25, 18)), (7, (20, 30, 50, 45))]),
    16: (40, 70, [(7, (30, 10, 8, 9))]),
    17: (80, 80, []),  # an image with no objects
    18: (75, 110, [(3, (0, 50, 110, 25))]),
    19: (50, 50, [(7, (10, 10, 30, 30))]),
}
CATEGORY_IDS = [3, 7]


def rectangle_rle(height: int, width: int, box: tuple[int, int, int, int]) -> dict:
    x, y, w, h = box
    mask = np.zeros((height, width), np.uint8)
    mask[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def ground_truth() -> dict:
    images, annotations = [], []
    for image_id, (height, width, objects) in IMAGES.items():
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.jpg"})
        for category, box in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "segmentation": rectangle_rle(height, width, box),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"thing{c}"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def perfect_results(gt: dict) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "score": 0.5 + 0.01 * a["id"],
            "segmentation": dict(a["segmentation"]),
        }
        for a in gt["annotations"]
    ]


def test_perfect_results_score_one_and_the_inputs_are_left_alone():
    gt = ground_truth()
    results = perfect_results(gt)
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    metrics = coco_metrics(gt, results)
    assert set(metrics) == {f"{kind}_{name}" for kind in ("box", "mask") for name in METRICS}
    for name, value in metrics.items():
        assert value == pytest.approx(1.0), name
    assert gt == gt_before and results == results_before
    # Image 16 alone holds one small object: the medium and large buckets have no AP.
    subset = coco_metrics(gt, [r for r in results if r["image_id"] == 16], image_ids=[16])
    assert subset["box_aps"] == subset["mask_aps"] == pytest.approx(1.0)
    assert math.isnan(subset["box_apm"]) and math.isnan(subset["mask_apl"])
    assert set(coco_metrics(gt, [{k: v for k, v in r.items() if k != "segmentation"} for r in results])) == {
        f"box_{name}" for name in METRICS
    }


def test_hand_computed_ap_one_false_positive_above_one_hit_and_one_miss():
    gt = ground_truth()
    hit, miss = gt["annotations"][2], gt["annotations"][3]  # image 12, category 3
    assert hit["image_id"] == miss["image_id"] == 12
    assert hit["category_id"] == miss["category_id"] == 3
    false = {"image_id": 17, "category_id": 3, "bbox": [0.0, 0.0, 30.0, 30.0], "score": 0.9}
    false["segmentation"] = rectangle_rle(80, 80, (0, 0, 30, 30))
    found = {**perfect_results(gt)[2], "score": 0.8}
    # Images 12 and 17 hold two objects, both of category 3; detections ranked FP, TP: precision 1/2 up to
    # recall 1/2, so 51 of the 101 recall thresholds (0, 0.01, ..., 0.5) have precision 0.5 and the rest 0.
    metrics = coco_metrics(gt, [false, found], image_ids=[12, 17])
    for kind in ("box", "mask"):
        for name in ("ap", "ap50", "ap75"):
            assert metrics[f"{kind}_{name}"] == pytest.approx(51 * 0.5 / 101), (kind, name)


def pycocotools_stats(tmp_path, gt: dict, results: list[dict], iou_type: str, image_ids: list[int]) -> np.ndarray:
    """pycocotools the plain way: JSON files, loadRes of a file, evaluate, accumulate, summarize."""
    gt_file, results_file = tmp_path / "gt.json", tmp_path / f"results_{iou_type}.json"
    gt_file.write_text(json.dumps(gt))
    # As detectron2: no boxes in segm results, so the size buckets use the masks' areas.
    entries = [{k: v for k, v in r.items() if iou_type == "bbox" or k != "bbox"} for r in results]
    results_file.write_text(json.dumps(entries))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        evaluation = COCOeval(coco, coco.loadRes(str(results_file)), iou_type)
        evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats[:6]


def test_noisy_results_on_a_subset_match_pycocotools(tmp_path):
    rng = np.random.default_rng(3)
    gt = ground_truth()
    results = []
    for a in gt["annotations"]:
        height, width = IMAGES[a["image_id"]][:2]
        for _ in range(2):
            x, y, w, h = (np.asarray(a["bbox"]) + rng.normal(0, 4, 4)).tolist()
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + max(w, 2), width), min(y + max(h, 2), height)
            box = np.array([[x0, y0, x1, y1]], np.float32)
            mask = paste_masks(rng.uniform(0.3, 1, (1, 7, 7)).astype(np.float32), box, height, width)
            category = a["category_id"] if rng.random() < 0.85 else 10 - a["category_id"]
            results += coco_results(
                a["image_id"], box, rng.random(1), [CATEGORY_IDS.index(category)], mask, CATEGORY_IDS
            )
    image_ids = [11, 12, 13, 15, 17, 18]
    results = [r for r in results if r["image_id"] in image_ids]
    metrics = coco_metrics(gt, results, image_ids=image_ids)
    for iou_type, kind in (("bbox", "box"), ("segm", "mask")):
        want = pycocotools_stats(tmp_path, gt, results, iou_type, image_ids)
        got = [metrics[f"{kind}_{name}"] for name in METRICS]
        np.testing.assert_allclose(got, np.where(want < 0, np.nan, want), rtol=1e-12)
        assert 0.05 < got[0] < 0.95, "the noise should neither ruin nor spare the results"


def test_empty_results_and_unknown_images():
    gt = ground_truth()
    metrics = coco_metrics(gt, [])
    assert metrics == {f"{kind}_{name}": 0.0 for kind in ("box", "mask") for name in METRICS}
    small_only = coco_metrics(gt, [], image_ids=[16])
    assert small_only["box_ap"] == small_only["mask_aps"] == 0.0 and math.isnan(small_only["box_apl"])
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_metrics(gt, perfect_results(gt), image_ids=[11, 99])
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_metrics(gt, [{**perfect_results(gt)[0], "image_id": 99}])


# The evaluator end to end: a fake network input of S x S pixels, each image resized to fit (scale =
# S / longer side), and a fake predict that reads each image's detections (in input pixels) from `variables`.
# M: mask cells at most 2.4 original pixels wide for every object (see test_paste_masks_empty_and_bad_boxes),
# so a full mask pasted into the exact box is the exact rectangle.
S, K, M = 64, 5, 84
FIRST_ID = min(IMAGES)


def load(record: dict) -> dict:
    """A stand-in for detection_eval_example: the image itself is never looked at by the fake predict."""
    height, width = IMAGES[record["id"]][:2]
    scale = S / max(height, width)
    return {
        "image": np.zeros((S, S, 3), np.uint8),
        "image_size": np.array([round(height * scale), round(width * scale)], np.int32),
        "scale": np.asarray(scale, np.float32),
        "original_size": np.array([height, width], np.int32),
        "image_id": np.asarray(record["id"], np.int64),
    }


def fake_predict(variables: dict, batch: dict) -> dict:
    rows = batch["image_id"] - FIRST_ID
    return {key: value[rows] for key, value in variables.items()}


def detections(drop: tuple[int, int] | None = None) -> dict:
    """Per image: the ground truth's boxes at the input's scale with full masks, then junk the evaluator must
    drop (an invalid detection with the highest score, a valid one wholly outside the image)."""
    n = len(IMAGES)
    boxes, scores = np.zeros((n, K, 4), np.float32), np.zeros((n, K), np.float32)
    classes, valid = np.zeros((n, K), np.int32), np.zeros((n, K), bool)
    for i, (height, width, objects) in enumerate(IMAGES.values()):
        scale = np.float32(S / max(height, width))
        for j, (category, (x, y, w, h)) in enumerate(objects):
            boxes[i, j] = np.array([x, y, x + w, y + h], np.float32) * scale
            scores[i, j], classes[i, j], valid[i, j] = 0.5 + 0.01 * j, CATEGORY_IDS.index(category), True
        boxes[i, K - 2], scores[i, K - 2] = [1, 1, 30, 30], 0.99  # invalid
        boxes[i, K - 1], scores[i, K - 1], valid[i, K - 1] = [S * 3, S * 3, S * 4, S * 4], 0.98, True
    if drop is not None:
        valid[drop[0] - FIRST_ID, drop[1]] = False
    masks = np.ones((n, K, M, M), np.float32)
    return {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks, "valid": valid}


def test_evaluator_end_to_end_on_a_mesh(tmp_path):
    mesh = make_mesh({"data": -1, "fsdp": 1})
    records = [{"id": image_id} for image_id in IMAGES]
    path = str(tmp_path / "out" / "results.json")
    gt = ground_truth()
    evaluator = DetectionEvaluator(
        fake_predict, mesh, records, load, ground_truth=gt, category_ids=CATEGORY_IDS, batch_size=8, results_path=path
    )
    perfect = jax.tree.map(jnp.asarray, detections())
    metrics = evaluator(perfect, prefix="val")
    assert set(metrics) == {f"val/{kind}_{name}" for kind in ("box", "mask") for name in METRICS}
    for name, value in metrics.items():
        assert value == pytest.approx(1.0), name  # only if boxes went back to the original pixels exactly
    written = json.loads(open(path).read())
    assert written == evaluator.last_results and len(written) == len(gt["annotations"])
    for r, a in zip(sorted(written, key=lambda r: (r["image_id"], r["score"])), gt["annotations"]):
        np.testing.assert_allclose(r["bbox"], a["bbox"], atol=1e-4)
        np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]), mask_utils.decode(a["segmentation"]))

    # Category 3 has 6 objects; missing one caps its recall at 5/6: precision 1 at 84 of the 101 recall
    # thresholds (0 .. 0.83), 0 beyond; category 7 stays perfect.
    assert sum(a["category_id"] == 3 for a in gt["annotations"]) == 6
    missing_one = evaluator(jax.tree.map(jnp.asarray, detections(drop=(12, 1))))
    for kind in ("box", "mask"):
        assert missing_one[f"eval/{kind}_ap"] == pytest.approx((84 / 101 + 1) / 2)

    # The first 4 images only (one padded batch): their objects alone are scored, box AP alone without masks.
    def boxes_only(variables, batch):
        return {k: v for k, v in fake_predict(variables, batch).items() if k != "masks"}

    first = DetectionEvaluator(
        boxes_only, mesh, records, load, ground_truth=gt, category_ids=CATEGORY_IDS, batch_size=8, num_examples=4
    )
    metrics = first(perfect)
    assert set(metrics) == {f"eval/box_{name}" for name in METRICS}
    assert all(v == pytest.approx(1.0) for v in metrics.values())
    assert {r["image_id"] for r in first.last_results} == {11, 12, 13, 14}
