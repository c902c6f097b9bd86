"""COCO 2017 instances: the annotation JSON as a random-access source, and instance masks from its segmentations.

Layout (the official release): `annotations/instances_{train2017,val2017}.json` and the image folders
`train2017/`, `val2017/` under one root. Records carry the encoded image file so that decoding happens in grain's
workers. Categories are indexed contiguously in the order of their COCO ids (80 for COCO: index i stands for id
`category_ids[i]`); evaluation maps predictions back through `category_ids`.

A segmentation is a list of polygons (flat [x0, y0, x1, y1, ...] in continuous pixel coordinates), an
uncompressed RLE ({"size": [h, w], "counts": [run lengths]}, COCO's crowd regions) or a compressed RLE ("counts"
a string); `instance_masks` rasterises all three with pycocotools, as the COCO API and detectron2 do.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from clipjax.errors import ConfigError

COCO_SPLITS = ("train2017", "val2017")
# The generic split names of config.data's defaults, and the COCO folders they stand for.
_GENERIC_SPLITS = {"train": "train2017", "validation": "val2017", "val": "val2017"}
_MISSING_NAMED = 3  # missing image files named in the error
_MIN_POLYGON_COORDS = 6  # a polygon needs 3 points; pycocotools reads a 4-number list as a box, not a polygon


class CocoSource:
    """One split of COCO instances: `len`, item access, `classes`, `category_ids`, `annotation_file`.

    `source[i]` is {"image": bytes (the file), "image_id": int, "height": int, "width": int, "name": str (the
    file name), "annotations": [{"bbox": [x, y, w, h], "category": int (contiguous index), "segmentation":
    polygons or RLE dict, "iscrowd": 0 or 1}, ...]}, images in the order of their ids.

    Args:
      root: the directory holding `annotations/` and the image folders.
      split: "train2017" or "val2017" (the generic "train" and "validation" stand for them).
      drop_empty: leave out images without a non-crowd annotation (detectron2's filter_empty_annotations);
        None: for train2017 only, so that evaluation sees every image of val2017.

    Attributes:
      classes: the category names, in the order of their COCO ids.
      category_ids: the COCO id of each contiguous index.
      annotation_file: the JSON's path (pycocotools' COCO reads it for evaluation).

    Raises:
      ConfigError: a missing root, annotation file, image folder or image file, an annotation of an unlisted
        category, or no images.
    """

    def __init__(self, root: str, split: str, drop_empty: bool | None = None) -> None:
        split = _GENERIC_SPLITS.get(split, split)
        if not os.path.isdir(root):
            raise ConfigError(f"COCO root {root} does not exist (config.data.path)")
        self.annotation_file = os.path.join(root, "annotations", f"instances_{split}.json")
        self.images_dir = os.path.join(root, split)
        if not os.path.isfile(self.annotation_file):
            raise ConfigError(
                f"COCO annotation file {self.annotation_file} does not exist: config.data.path must hold "
                f"annotations/instances_<split>.json for the split {split!r} (one of {COCO_SPLITS})"
            )
        if not os.path.isdir(self.images_dir):
            raise ConfigError(f"COCO image folder {self.images_dir} does not exist (the images of {split!r})")
        with open(self.annotation_file) as f:
            dataset = json.load(f)
        categories = sorted(dataset["categories"], key=lambda c: c["id"])
        self.classes = [c["name"] for c in categories]
        self.category_ids = [int(c["id"]) for c in categories]
        contiguous = {coco_id: index for index, coco_id in enumerate(self.category_ids)}
        per_image: dict[int, list[dict[str, Any]]] = {}
        for ann in dataset["annotations"]:
            if ann["category_id"] not in contiguous:
                raise ConfigError(
                    f"{self.annotation_file}: annotation {ann.get('id')} has category {ann['category_id']}, "
                    "which its categories do not list"
                )
            # Only what training and evaluation read: the full train JSON's other keys cost memory in every worker.
            per_image.setdefault(ann["image_id"], []).append(
                {
                    "bbox": [float(v) for v in ann["bbox"]],
                    "category": contiguous[ann["category_id"]],
                    "segmentation": ann["segmentation"],
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
        if drop_empty is None:
            drop_empty = split.startswith("train")
        images = sorted(dataset["images"], key=lambda image: image["id"])
        if drop_empty:
            images = [im for im in images if any(not a["iscrowd"] for a in per_image.get(im["id"], ()))]
        if not images:
            raise ConfigError(f"{self.annotation_file} lists no images" + (" with annotations" if drop_empty else ""))
        # One listing instead of a stat per image: train2017 has 118k of them.
        present = set(os.listdir(self.images_dir))
        missing = [im["file_name"] for im in images if im["file_name"] not in present]
        if missing:
            shown = ", ".join(missing[:_MISSING_NAMED]) + (", ..." if len(missing) > _MISSING_NAMED else "")
            raise ConfigError(f"{len(missing)} images of {self.annotation_file} are not in {self.images_dir}: {shown}")
        self._images = [(int(im["id"]), im["file_name"], int(im["height"]), int(im["width"])) for im in images]
        self._annotations = per_image
        self.description = f"COCO {split} ({len(images)} images under {root})"

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, name, height, width = self._images[index]
        with open(os.path.join(self.images_dir, name), "rb") as f:
            image = f.read()
        return {
            "image": image,
            "image_id": image_id,
            "height": height,
            "width": width,
            "annotations": self._annotations.get(image_id, []),
            "name": name,
        }


def annotation_rle(segmentation: list[list[float]] | dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """One annotation's segmentation as a compressed RLE of an height x width image.

    Polygons are rasterised and merged (their union); polygons of fewer than 3 points are left out, as
    detectron2 does (the annotation may end up empty). Uncompressed RLE is compressed; compressed RLE is kept.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= _MIN_POLYGON_COORDS and len(p) % 2 == 0]
        if not polygons:
            return mask_util.encode(np.zeros((height, width), np.uint8, order="F"))
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def instance_masks(annotations: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Every annotation's mask.

    Args:
      annotations: dicts with a "segmentation" (polygons, uncompressed or compressed RLE).
      height, width: the image's size.

    Returns:
      bool [K, height, width], K = len(annotations).
    """
    masks = np.zeros((len(annotations), height, width), bool)
    for k, ann in enumerate(annotations):
        masks[k] = mask_util.decode(annotation_rle(ann["segmentation"], height, width)).astype(bool)
    return masks
