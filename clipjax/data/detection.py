"""Instance segmentation data (Mask R-CNN finetuning): COCO 2017 instances and the synthetic scenes' instances.

Training (`detection_train_example`) is ViTDet's large-scale jitter (detectron2's ResizeScale + FixedSizeCrop +
RandomFlip): the image is resized to fit S x S times r ~ U(scale_range), keeping its aspect ratio, a random S x S
window is cut where it is larger, it is flipped left-right with probability 1/2, and it sits at the top left of an
S x S canvas padded at the bottom and right (where detectron2's model pads) with `pad_pixel`: the pixel that
normalises to zero (`transforms.padding_pixel`), as detectron2 pads the normalised image with 0. Instance
masks go through the same map; every box is the tight box of its transformed mask (detectron2's
`recompute_boxes`, which LSJ configs turn on: a crop can leave the clipped original box loose around what is
left of the object). Each instance's mask is stored cropped to its box and resampled to M x M, so that mask
targets for any proposal can be sampled from it with the box as its frame.

Evaluation (`detection_eval_example`) resizes the longer side to S (keeping the aspect ratio) and pads; the
evaluation maps predictions back to the original image with "scale" and scores them against the ground truth in
the categories' own ids (`category_ids`): COCO's JSON, or `synthetic_ground_truth` for the synthetic scenes.

Resampling: images bilinearly when enlarged and by pixel area when shrunk (antialiased, as PIL's bilinear
resize in detectron2 is); masks by nearest neighbour at the image's own sampling positions (as detectron2
resizes bitmasks; cv2.warpAffine over a window around each instance only), so that a mask pixel is never
interpolated and no thin part of an object vanishes or grows differently from how it is sampled.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import grain
import numpy as np
import pycocotools.mask as mask_util
from ml_collections import ConfigDict

from clipjax.data import synthetic
from clipjax.data.batching import configured_batches
from clipjax.data.coco import CocoSource, instance_masks
from clipjax.data.images import BadImage, record_image
from clipjax.data.layouts import naming_the_layout
from clipjax.data.skips import skipped
from clipjax.data.transforms import BLACK, padding_pixel
from clipjax.errors import ConfigError

DETECTION_KINDS = ("synthetic", "coco")
SYNTHETIC_EVAL_EXAMPLES = 200  # held-out scenes when config.finetune.eval_examples is None
SCALE_RANGE = (0.1, 2.0)  # ViTDet's large-scale jitter


class SyntheticDetection(synthetic.SyntheticScenes):
    """SyntheticScenes whose records also carry "image_id" (the index), with the categories as classes;
    `category_ids` 1..10 are the ids `synthetic_ground_truth` gives them."""

    classes = list(synthetic.CATEGORIES)
    category_ids = list(range(1, len(synthetic.CATEGORIES) + 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = super().__getitem__(index)
        record["image_id"] = int(index)
        return record


def category_ids(source: Any) -> list[int]:
    """The ground truth's category id of each contiguous class index: COCO's ids for a CocoSource, 1..10 for
    SyntheticDetection."""
    return list(source.category_ids)


def _instances_of(record: dict[str, Any], image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The record's non-crowd instances: (classes int32 [K], masks bool [K, H, W]), or None when a COCO record's
    size differs from its decoded image's (its masks would not line up with the pixels)."""
    if "annotations" in record:
        if (record.get("height", image_shape[0]), record.get("width", image_shape[1])) != tuple(image_shape):
            return None
        # Crowd regions are ignored in training (detectron2 drops them before the model sees the instances).
        annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
        classes = np.array([a["category"] for a in annotations], np.int32)
        return classes, instance_masks(annotations, *image_shape)
    count = int(record["num_objects"])
    return np.asarray(record["classes"][:count], np.int32), np.asarray(record["masks"][:count], bool)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w, 3] -> [height, width, 3]: by pixel area where it shrinks (no aliasing), bilinear otherwise
    (OpenCV falls back to bilinear on an axis that grows)."""
    if (height, width) == image.shape[:2]:
        return image
    shrinks = height < image.shape[0] or width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR)


def _warp_mask(
    mask: np.ndarray, scale: tuple[float, float], offset: tuple[int, int], content: tuple[int, int]
) -> tuple[int, int, np.ndarray] | None:
    """One mask through the resize (per-axis `scale` (y, x)) and the crop at `offset` (top, left), rendered only
    in a window around it: (top, left, bool [h, w]) of the window inside the `content` (height, width), or None
    where nothing of it lands there.

    The output pixel (v, u) takes the mask's pixel nearest to ((v + top + 0.5) / sy - 0.5, (u + left + 0.5) / sx
    - 0.5), where cv2.resize samples the image; outside the mask is 0.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    corners = []
    for (first, last), s, o, limit in zip(((rows[0], rows[-1]), (cols[0], cols[-1])), scale, offset, content):
        # The mask's pixels span [first, last + 1) continuously; a pixel more for rounding.
        start = max(int(np.floor(first * s - o)) - 1, 0)
        stop = min(int(np.ceil((last + 1) * s - o)) + 1, limit)
        corners.append((start, stop))
    (v0, v1), (u0, u1) = corners
    if v0 >= v1 or u0 >= u1:
        return None
    # Only the mask's box is read (and converted to uint8, which OpenCV needs).
    y0, x0 = rows[0], cols[0]
    source = mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1].astype(np.uint8)
    (sy, sx), (top, left) = scale, offset
    inverse = np.array(
        [[1 / sx, 0.0, (u0 + left + 0.5) / sx - 0.5 - x0], [0.0, 1 / sy, (v0 + top + 0.5) / sy - 0.5 - y0]]
    )
    window = cv2.warpAffine(
        source, inverse, (u1 - u0, v1 - v0), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0
    )
    return v0, u0, window.astype(bool)


def detection_train_example(
    record: dict[str, Any],
    rng: np.random.Generator,
    *,
    image_size: int,
    max_instances: int,
    mask_size: int,
    scale_range: tuple[float, float] = SCALE_RANGE,
    flip: bool,
    pad_pixel: tuple[int, int, int] = BLACK,
) -> dict[str, np.ndarray]:
    """One LSJ-augmented training example from a COCO record ({"image": bytes, "annotations", "height",
    "width"}) or a synthetic scene ({"image": uint8 [s, s, 3], "classes", "masks", "num_objects"}), or the skip
    marker: corrupt_image (an image that does not decode), corrupt_label (a COCO record whose height and width
    differ from its image's).

    The image (h x w) is resized by factor r * S / max(h, w), r ~ U(scale_range), each side rounded, to
    (h', w'); a window of S x S (or less, where a side is shorter) is cut at a random offset, uniform over the
    sides' slack and rounded (FixedSizeCrop); with `flip`, the window is mirrored with probability 1/2. Crowd
    annotations are dropped, and so is every instance whose mask is empty after the crop (its box is then at
    least 1 x 1 pixel). Past `max_instances`, the largest masks (pixels in the window) are kept, in their
    original order.

    Returns:
      image       uint8 [S, S, 3]  content at the top left, pad_pixel past image_size
      image_size  int32 [2]  (height, width) of the content
      boxes       float32 [N, 4]  (x0, y0, x1, y1), x1 / y1 exclusive: the tight box of each mask's pixels
                  in the S x S frame; zeros past the instances
      classes     int32 [N]  contiguous class index, -1 past the instances
      masks       uint8 [N, M, M]  0/1: each mask cut to its box and resampled to M x M (by pixel area where
                  it shrinks, bilinear otherwise, thresholded at half); zeros past the instances
    """
    try:
        image = record_image(record)
    except BadImage:
        return skipped("corrupt_image")
    height, width = image.shape[:2]
    instances = _instances_of(record, (height, width))
    if instances is None:
        return skipped("corrupt_label")
    classes, masks = instances

    factor = rng.uniform(*scale_range) * image_size / max(height, width)
    resized = (max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1))
    slack = np.maximum(np.subtract(resized, image_size), 0)
    offset = tuple(int(v) for v in np.round(slack * rng.uniform(0.0, 1.0, size=2)))
    content = (min(resized[0], image_size), min(resized[1], image_size))
    flipped = flip and rng.random() < 0.5
    # The per-axis factors the rounded sizes imply: where cv2.resize samples the image.
    scale = (resized[0] / height, resized[1] / width)

    pixels = resize_image(image, *resized)[offset[0] : offset[0] + content[0], offset[1] : offset[1] + content[1]]
    out_image = np.full((image_size, image_size, 3), pad_pixel, np.uint8)
    out_image[: content[0], : content[1]] = pixels[:, ::-1] if flipped else pixels

    kept: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # (class, box, M x M mask, area)
    for category, mask in zip(classes, masks):
        warped = _warp_mask(mask, scale, offset, content)
        if warped is None:
            continue
        top, left, window = warped
        rows, cols = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
        if rows.size == 0:
            continue
        inside = window[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        x0, x1 = left + cols[0], left + cols[-1] + 1
        if flipped:
            x0, x1 = content[1] - x1, content[1] - x0
            inside = inside[:, ::-1]
        box = np.array([x0, top + rows[0], x1, top + rows[-1] + 1], np.float32)
        # INTER_AREA averages when both sides shrink and falls back to bilinear otherwise.
        target = cv2.resize(inside.astype(np.float32), (mask_size, mask_size), interpolation=cv2.INTER_AREA) >= 0.5
        kept.append((int(category), box, target, int(inside.sum())))
    if len(kept) > max_instances:
        largest = sorted(np.argsort([-item[3] for item in kept], kind="stable")[:max_instances])
        kept = [kept[i] for i in largest]

    out_boxes = np.zeros((max_instances, 4), np.float32)
    out_classes = np.full((max_instances,), -1, np.int32)
    out_masks = np.zeros((max_instances, mask_size, mask_size), np.uint8)
    for row, (category, box, target, _) in enumerate(kept):
        out_boxes[row], out_classes[row], out_masks[row] = box, category, target
    return {
        "image": out_image,
        "image_size": np.array(content, np.int32),
        "boxes": out_boxes,
        "classes": out_classes,
        "masks": out_masks,
    }


def detection_eval_example(
    record: dict[str, Any], *, image_size: int, pad_pixel: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """A COCO or synthetic record for evaluation: the image resized so that its longer side is `image_size`
    (keeping the aspect ratio; `resize_image`) at the top left of an S x S canvas filled with `pad_pixel`.

    Returns:
      image          uint8 [S, S, 3]
      image_size     int32 [2]  (height, width) of the resized content
      scale          float32 []  S / max(original height, width): boxes in the canvas divided by it are in the
                     original image's pixels
      original_size  int32 [2]  (height, width) of the decoded image
      image_id       int64 []  the ground truth's image id (the index for synthetic scenes)

    Raises:
      BadImage: an image that does not decode.
    """
    image = record_image(record)
    height, width = image.shape[:2]
    factor = image_size / max(height, width)
    size = (min(max(int(height * factor + 0.5), 1), image_size), min(max(int(width * factor + 0.5), 1), image_size))
    out_image = np.full((image_size, image_size, 3), pad_pixel, np.uint8)
    out_image[: size[0], : size[1]] = resize_image(image, *size)
    return {
        "image": out_image,
        "image_size": np.array(size, np.int32),
        "scale": np.float32(factor),
        "original_size": np.array((height, width), np.int32),
        "image_id": np.int64(record["image_id"]),
    }


def synthetic_ground_truth(source: SyntheticDetection, num_examples: int | None = None) -> dict[str, Any]:
    """The first `num_examples` scenes of `source` (all when None) as a COCO-format dataset for pycocotools
    (`COCO()` with `.dataset` set to it and `createIndex()`).

    Returns:
      {"images": [{"id", "height", "width", "file_name"}], "annotations": [{"id" (from 1: pycocotools reads 0
      as unmatched), "image_id", "category_id" (1 + class), "segmentation" (compressed RLE, counts a str),
      "area" (pixels), "bbox" [x, y, w, h], "iscrowd": 0}], "categories": [{"id": 1..10, "name"}]}.
    """
    images, annotations = [], []
    for index in range(len(source) if num_examples is None else num_examples):
        record = source[index]
        height, width = record["image"].shape[:2]
        image_id = int(record["image_id"])
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"synthetic_{index:06d}.png"})
        for k in range(int(record["num_objects"])):
            mask = np.asfortranarray(record["masks"][k].astype(np.uint8))
            rle = mask_util.encode(mask)
            x0, y0, x1, y1 = (float(v) for v in record["boxes"][k])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(record["classes"][k]) + 1,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(synthetic.CATEGORIES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detection_ground_truth(source: Any, num_examples: int | None = None) -> dict[str, Any] | str:
    """What evaluation scores `source`'s first `num_examples` records (all when None) against: a CocoSource's
    annotation JSON path (pycocotools reads it; evaluation restricts AP to the images it saw), or the synthetic
    scenes' `synthetic_ground_truth`."""
    if isinstance(source, CocoSource):
        return source.annotation_file
    count = len(source) if num_examples is None else min(num_examples, len(source))
    return synthetic_ground_truth(source, count)


def detection_source(config: ConfigDict, split: str) -> SyntheticDetection | CocoSource:
    """The detection source of `config.data` for `split` ("train" or "eval"): `len`, item access, `classes`
    and `category_ids`, for `detection_train_example` / `detection_eval_example`.

    Synthetic scenes: "validation" scenes for eval, config.finetune.eval_examples of them (default 200), at
    config.model.image_size. COCO: config.data.path, the split config.data.train_split / eval_split
    ("train2017" / "val2017"; the generic defaults "train" / "validation" stand for them).

    Raises:
      ConfigError: a kind without instance labels, or data that cannot be found.
    """
    data = config.data
    if data.kind == "synthetic":
        return synthetic.finetuning_scenes(config, split, SYNTHETIC_EVAL_EXAMPLES, SyntheticDetection)
    if data.kind == "coco":
        if not data.path:
            raise ConfigError("config.data.kind='coco' needs config.data.path (the directory holding annotations/)")
        with naming_the_layout(data.path, data.kind):
            return CocoSource(data.path, data.train_split if split == "train" else data.eval_split)
    raise ConfigError(
        f"config.data.kind={data.kind!r} holds no instance labels; detection finetuning reads "
        f"{', '.join(repr(k) for k in DETECTION_KINDS)}"
    )


def detection_dataset(
    config: ConfigDict, source: Any, *, process_index: int, process_count: int, start_sample: int = 0
) -> grain.IterDataset:
    """This host's LSJ-augmented batches (see `batching.host_batches`): {"image": uint8 [b, S, S, 3],
    "image_size": int32 [b, 2], "boxes": float32 [b, N, 4], "classes": int32 [b, N], "masks": uint8 [b, N, M, M],
    "__skipped__"} with S = config.model.image_size and N, M, the scale range from config.detection
    (max_instances, mask_size, scale_range), flips with config.data.flip, padding with the pixel that
    config.data.normalize maps to zero."""
    transform = functools.partial(
        detection_train_example,
        image_size=config.model.image_size,
        max_instances=config.detection.max_instances,
        mask_size=config.detection.mask_size,
        scale_range=tuple(config.detection.scale_range),
        flip=config.data.flip,
        pad_pixel=padding_pixel(config.data.normalize),
    )
    return configured_batches(
        config, source, transform, process_index=process_index, process_count=process_count, start_sample=start_sample
    )
