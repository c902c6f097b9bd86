"""A tiny COCO 2017 instances dataset on disk, built from scikit-image's photos, for tests of the detection data
and of models that must overfit real objects.

`make_coco(root)` writes root/annotations/instances_{train2017,val2017}.json and root/{train2017,val2017}/*.jpg
in COCO's own layout and file naming. The photos are downscaled so that their longer side is `size` pixels; the
annotations are drawn by hand around real objects, in the original photos' pixels, and scaled with them:

  train2017  9  coffee     cup (two polygons: body and handle), spoon (compressed RLE)
             25 chelsea    cat (polygon)
             30 astronaut  person (polygon), airplane (the shuttle model, polygon)
             50 camera     person as a crowd (uncompressed RLE) only: detectron2 drops it from training (grey JPEG)
  val2017    7  coins      no annotations (grey JPEG)
             42 rocket     airplane (the rocket, polygon), traffic light as a crowd (the pad's lights, uncompressed RLE)

Category ids are COCO's own, so they are not contiguous (1, 5, 10, 17, 47, 50, 90), and the JSON lists them out
of order; "toothbrush" (90) has no annotation. Polygons are flat [x0, y0, x1, y1, ...] lists, boxes the tight
[x, y, w, h] of the polygon vertices (as COCO's) or of the RLE's pixels, areas the pixel counts.
"""

from __future__ import annotations

import json
import os
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_util
import skimage.data

# (COCO id, name), deliberately not in id order.
CATEGORIES = (
    (47, "cup"), (1, "person"), (90, "toothbrush"), (17, "cat"), (5, "airplane"), (50, "spoon"), (10, "traffic light"),
)  # fmt: skip

# Outlines in the original photos' pixels (x, y).
_CUP_BODY = [(178, 75), (195, 38), (240, 20), (300, 15), (360, 22), (400, 45), (410, 85), (395, 150), (375, 205),
             (340, 245), (295, 262), (250, 258), (212, 240), (195, 200), (182, 140)]  # fmt: skip
_CUP_HANDLE = [(195, 225), (215, 215), (250, 235), (250, 280), (225, 295), (200, 285), (192, 255)]
_SPOON = [(405, 68), (420, 66), (422, 80), (395, 160), (385, 235), (398, 255), (405, 290), (392, 318), (365, 325),
          (338, 312), (328, 285), (338, 258), (365, 242), (375, 235), (385, 160)]  # fmt: skip
_CAT = [(0, 0), (330, 0), (385, 45), (395, 120), (405, 190), (380, 240), (330, 299), (0, 299)]
_ASTRONAUT = [(160, 40), (200, 15), (255, 15), (295, 45), (300, 110), (290, 150), (300, 200), (330, 240), (355, 300),
              (360, 345), (300, 370), (280, 420), (270, 511), (30, 511), (25, 430), (40, 330), (65, 265), (110, 230),
              (125, 185), (155, 150), (150, 90)]  # fmt: skip
_SHUTTLE = [(400, 20), (420, 5), (435, 20), (440, 60), (455, 150), (470, 200), (465, 240), (440, 245), (400, 235),
            (360, 230), (355, 205), (385, 160), (395, 60)]  # fmt: skip
_CAMERAMAN = [(160, 70), (230, 70), (250, 110), (320, 190), (250, 250), (170, 400), (150, 511), (0, 511), (0, 260),
              (60, 140), (130, 110)]  # fmt: skip
_ROCKET = [(318, 128), (325, 130), (332, 150), (335, 200), (336, 300), (335, 390), (305, 390), (305, 300), (306, 200),
           (308, 150)]  # fmt: skip
_LIGHTS = [(60, 360), (470, 360), (470, 420), (60, 420)]

# split -> [(image id, photo, [(category id, kind, outlines)])]; kind: "polygon", "rle" (compressed) or "crowd"
# (uncompressed RLE, iscrowd 1).
IMAGES = {
    "train2017": [
        (25, "chelsea", [(17, "polygon", [_CAT])]),
        (9, "coffee", [(47, "polygon", [_CUP_BODY, _CUP_HANDLE]), (50, "rle", [_SPOON])]),
        (30, "astronaut", [(1, "polygon", [_ASTRONAUT]), (5, "polygon", [_SHUTTLE])]),
        (50, "camera", [(1, "crowd", [_CAMERAMAN])]),
    ],
    "val2017": [
        (42, "rocket", [(5, "polygon", [_ROCKET]), (10, "crowd", [_LIGHTS])]),
        (7, "coins", []),
    ],
}


def file_name(image_id: int) -> str:
    """COCO's file name of an image id: twelve digits."""
    return f"{image_id:012d}.jpg"


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of bool [H, W]: run lengths over the column-major pixels, starting with a run of 0s.

    Written out here rather than taken from pycocotools, so that tests check pycocotools' decoding against it.
    """
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _raster(outlines: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """bool [H, W]: the outlines filled (OpenCV), for the RLE annotations."""
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(o).astype(np.int32) for o in outlines], 1)
    return mask.astype(bool)


def _annotation(category: int, kind: str, outlines: list[np.ndarray], height: int, width: int) -> dict[str, Any]:
    if kind == "polygon":
        points = np.concatenate(outlines)
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        segmentation: Any = [[round(float(v), 2) for v in o.ravel()] for o in outlines]
        bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        area = float(mask_util.area(mask_util.merge(mask_util.frPyObjects(segmentation, height, width))))
    else:
        mask = _raster(outlines, height, width)
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        segmentation = uncompressed_rle(mask) if kind == "crowd" else {**rle, "counts": rle["counts"].decode("ascii")}
        bbox = [float(v) for v in mask_util.toBbox(rle)]
        area = float(mask.sum())
    return {
        "category_id": category,
        "segmentation": segmentation,
        "bbox": [round(v, 2) for v in bbox],
        "area": area,
        "iscrowd": int(kind == "crowd"),
    }


def make_coco(root: str, size: int = 256, quality: int = 92) -> str:
    """Writes the dataset under `root` (created if needed) and returns `root`.

    Args:
      size: the longer side of every image, in pixels (the photos are 300 to 640 pixels).
      quality: the JPEG quality.
    """
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    next_id = 1  # annotation ids start at 1: pycocotools' evaluation reads id 0 as "unmatched"
    for split, entries in IMAGES.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for image_id, photo, objects in entries:
            pixels = getattr(skimage.data, photo)()
            factor = size / max(pixels.shape[:2])
            height, width = round(pixels.shape[0] * factor), round(pixels.shape[1] * factor)
            pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
            bgr = pixels[..., ::-1] if pixels.ndim == 3 else pixels
            ok, data = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            with open(os.path.join(root, split, file_name(image_id)), "wb") as f:
                f.write(data.tobytes())
            images.append({"id": image_id, "file_name": file_name(image_id), "height": height, "width": width})
            for category, kind, outlines in objects:
                # Original pixel corners scale to the resized image's continuous coordinates.
                scaled = [np.asarray(o, np.float64) * factor for o in outlines]
                annotation = _annotation(category, kind, scaled, height, width)
                annotations.append({"id": next_id, "image_id": image_id, **annotation})
                next_id += 1
        dataset = {
            "info": {"description": "clipjax test fixture from scikit-image photos"},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "thing"} for i, name in CATEGORIES],
        }
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(dataset, f)
    return root
