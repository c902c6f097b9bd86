"""COCO detection and instance segmentation results and metrics, on the host (numpy and pycocotools).

`paste_masks` turns each detection's m x m mask (probabilities inside its box) into a full-image mask as
detectron2's `paste_masks_in_image` does, `coco_results` writes detections as COCO result entries (boxes in
xywh, masks as compressed RLE), and `coco_metrics` scores them with pycocotools' COCOeval.

Size buckets with no ground truth (e.g. no small objects among the evaluated images) have no AP:
pycocotools reports -1 there; this module reports NaN, so that an average over runs or a plot never takes
-1 for a score.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# pycocotools' stats[0..5] for one IoU type, in order.
STAT_NAMES = ("ap", "ap50", "ap75", "aps", "apm", "apl")
# Our prefix for each pycocotools IoU type.
IOU_TYPES = {"bbox": "box", "segm": "mask"}


def _bilinear_weights(coordinates: np.ndarray, size: int) -> np.ndarray:
    """float32 [n, size]: row i holds the bilinear weights of the cells of a `size`-long axis at continuous
    cell coordinate coordinates[i] (cell centres at 0, 1, ...), with taps beyond the axis dropped: the zero
    padding of grid_sample(padding_mode="zeros")."""
    low = np.floor(coordinates)
    frac = coordinates - low
    low = low.astype(np.int64)
    weights = np.zeros((len(coordinates), size + 2), np.float64)
    rows = np.arange(len(coordinates))
    # Columns shifted by one, so taps at -1 and `size` land in the two padding columns, which are cut off.
    weights[rows, np.clip(low + 1, 0, size + 1)] += 1.0 - frac
    weights[rows, np.clip(low + 2, 0, size + 1)] += frac
    return weights[:, 1:-1].astype(np.float32)


def _axis_window(start: float, stop: float, cells: int, length: int) -> tuple[int, int]:
    """The pixels [first, last) of an image axis `length` long that can see a mask of `cells` cells spread
    over [start, stop): bilinear sampling reaches half a cell beyond the box (plus a pixel of slack)."""
    half_cell = (stop - start) / (2 * cells)
    first = max(math.floor(start - half_cell) - 1, 0)
    last = min(math.ceil(stop + half_cell) + 1, length)
    return first, max(last, first)


def paste_masks(
    masks: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float | None = 0.5
) -> np.ndarray:
    """Each box's mask, resized bilinearly into its box on a height x width image.

    detectron2's `paste_masks_in_image`: pixel (y, x) samples the mask at its centre (x + 0.5, y + 0.5)
    mapped into the box with grid_sample(align_corners=False, padding_mode="zeros"), so the box's edges are
    the mask's outer edges and values fade to zero half a mask cell beyond them; far from the box it is 0.
    Only the pixels near each box are computed. Boxes with no area (or not finite) give empty masks.

    Args:
      masks: float32 [K, m, m] (or [K, mh, mw]), probabilities in each box.
      boxes: float32 [K, 4], (x0, y0, x1, y1) in the image's pixels (may reach beyond the image).
      height, width: the image's size.
      threshold: in (0, 1]; None returns the pasted probabilities.

    Returns:
      bool [K, height, width] (masks >= threshold), or float32 [K, height, width] when threshold is None.
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float64)
    if threshold is not None and not 0.0 < threshold <= 1.0:
        # At threshold 0 every pixel of the image, however far from the box, would be in the mask.
        raise ValueError(f"mask threshold {threshold} is not in (0, 1]")
    count, cells_y, cells_x = masks.shape
    # Thresholded per box: 100 float masks of a 640 x 480 image would take 120 MB, the booleans take 30.
    out = np.zeros((count, height, width), np.float32 if threshold is None else bool)
    for k in range(count):
        x0, y0, x1, y1 = boxes[k]
        if not (np.isfinite(boxes[k]).all() and x1 > x0 and y1 > y0):
            continue
        top, bottom = _axis_window(y0, y1, cells_y, height)
        left, right = _axis_window(x0, x1, cells_x, width)
        if bottom <= top or right <= left:
            continue
        # Pixel centre -> continuous mask cell coordinate (grid_sample's unnormalisation, align_corners=False).
        ys = (np.arange(top, bottom) + 0.5 - y0) / (y1 - y0) * cells_y - 0.5
        xs = (np.arange(left, right) + 0.5 - x0) / (x1 - x0) * cells_x - 0.5
        # Bilinear sampling is separable: rows of the mask mixed by wy, then columns by wx.
        wy, wx = _bilinear_weights(ys, cells_y), _bilinear_weights(xs, cells_x)
        pasted = wy @ masks[k] @ wx.T
        out[k, top:bottom, left:right] = pasted if threshold is None else pasted >= threshold
    return out


def coco_results(
    image_id: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    masks: np.ndarray | None,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """One image's detections as COCO result entries (json-serialisable).

    Args:
      image_id: the image's COCO id.
      boxes: float [K, 4], (x0, y0, x1, y1) in the original image's pixels.
      scores: float [K].
      classes: int [K], contiguous class indices (0 .. len(category_ids) - 1).
      masks: bool [K, H, W] (the original image's size) or None (box results only).
      category_ids: the COCO category id of each contiguous class.

    Returns:
      K dicts {"image_id": int, "category_id": int, "bbox": [x, y, w, h] floats, "score": float, and with
      masks "segmentation": {"size": [H, W], "counts": str} (compressed RLE)}.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes, np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(classes) or (masks is not None and len(masks) != len(boxes)):
        raise ValueError(f"detection counts differ: boxes {len(boxes)}, scores {len(scores)}, classes {len(classes)}")
    if len(classes) and (classes.min() < 0 or classes.max() >= len(category_ids)):
        raise ValueError(f"classes {classes.min()}..{classes.max()} outside the {len(category_ids)} categories")
    rles = []
    if masks is not None and len(boxes):
        # pycocotools reads column-major [H, W, K] uint8.
        rles = mask_utils.encode(np.asfortranarray(np.moveaxis(np.asarray(masks, np.uint8), 0, -1)))
    results = []
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_ids[classes[k]]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(scores[k]),
        }
        if masks is not None:
            rle = rles[k]
            entry["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        results.append(entry)
    return results


def load_ground_truth(ground_truth: dict[str, Any] | str | COCO) -> COCO:
    """A pycocotools COCO index of a dataset dict (copied: COCOeval rewrites the annotations it indexes), of
    the annotation JSON at a path, or a COCO object itself."""
    if isinstance(ground_truth, COCO):
        return ground_truth
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(ground_truth, str):
            return COCO(ground_truth)
        coco = COCO()
        coco.dataset = copy.deepcopy(ground_truth)
        coco.createIndex()
    return coco


def _empty_results(ground_truth: COCO) -> COCO:
    """A results index with no detections (pycocotools' loadRes cannot make one: it reads the first)."""
    results = COCO()
    results.dataset = {
        "images": list(ground_truth.dataset["images"]),
        "categories": copy.deepcopy(ground_truth.dataset.get("categories", [])),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        results.createIndex()
    return results


def coco_metrics(
    ground_truth: dict[str, Any] | str | COCO,
    results: list[dict[str, Any]],
    image_ids: Sequence[int] | None = None,
    iou_types: Sequence[str] | None = None,
) -> dict[str, float]:
    """COCO AP of `results` (as `coco_results` writes them) against the ground truth.

    Args:
      ground_truth: a COCO dataset dict, the path of its annotation JSON, or a pycocotools COCO object.
      results: result entries over any of the ground truth's images (not modified).
      image_ids: score these images only (a subset of the split); default: all the ground truth's images.
      iou_types: of "bbox", "segm"; default "bbox", and "segm" too when the results carry segmentations or
        are empty.

    Returns:
      {"box_ap", "box_ap50", "box_ap75", "box_aps", "box_apm", "box_apl"} and the same six "mask_*" for
      "segm": floats in [0, 1] (pycocotools' stats[0..5]); NaN for a size bucket (or a whole evaluation)
      with no ground truth objects. Empty results score 0.0 wherever there is ground truth.
    """
    coco = load_ground_truth(ground_truth)
    known = set(coco.getImgIds())
    strangers = {int(r["image_id"]) for r in results} - known
    if image_ids is not None:
        if len(image_ids) == 0:
            raise ValueError("no image ids to evaluate")
        strangers |= {int(i) for i in image_ids} - known
    if strangers:
        raise ValueError(f"image ids {sorted(strangers)[:10]} are not in the ground truth")
    with_masks = [("segmentation" in r) for r in results]
    if any(with_masks) and not all(with_masks):
        raise ValueError("some results carry a segmentation and some do not")
    if iou_types is None:
        iou_types = ("bbox", "segm") if not results or all(with_masks) else ("bbox",)
    unknown = set(iou_types) - set(IOU_TYPES)
    if unknown:
        raise ValueError(f"iou types {sorted(unknown)} are not among {sorted(IOU_TYPES)}")
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if results:
            # loadRes rewrites its entries (id, area, a polygon for box-only entries): give it copies. For
            # "segm" the box is left out, so that the size buckets use the mask's area, not the box's (as
            # detectron2 does); for "bbox" the mask is left out (the box's area either way, less work).
            drop = "bbox" if iou_type == "segm" else "segmentation"
            entries = [{key: value for key, value in r.items() if key != drop} for r in results]
            with contextlib.redirect_stdout(io.StringIO()):
                detections = coco.loadRes(entries)
        else:
            detections = _empty_results(coco)
        evaluation = COCOeval(coco, detections, iou_type)
        if image_ids is not None:
            evaluation.params.imgIds = sorted({int(i) for i in image_ids})
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        for name, value in zip(STAT_NAMES, evaluation.stats[: len(STAT_NAMES)]):
            metrics[f"{IOU_TYPES[iou_type]}_{name}"] = float("nan") if value < 0 else float(value)
    return metrics
