"""The fixed-size views of dense records that linear probes compute features on: every image seen at the
model's input size, its labels or depth cut to match, so a split's features stack into one array.

Segmentation: the shorter side resized to `size` (the image bilinearly, the labels by nearest neighbour, never
interpolated), then the central size x size square. Depth: the central size x size window, never resized
(resampling depth invents values across holes and edges); NYUv2's 480 x 640 frames at 480 px lose their
sides.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from clipjax.data.depth import depth_of
from clipjax.data.images import BadImage, record_image
from clipjax.data.segmentation import label_of


def _centre(array: np.ndarray, size: int) -> np.ndarray:
    height, width = array.shape[:2]
    if height < size or width < size:
        raise BadImage(f"a {height} x {width} image is smaller than the probe's {size} x {size} view")
    top, left = (height - size) // 2, (width - size) // 2
    return array[top : top + size, left : left + size]


def segmentation_view(record: dict[str, Any], *, size: int, reduce_zero_label: bool) -> dict[str, np.ndarray]:
    """{"image": uint8 [size, size, 3], "label": uint8 [size, size]} of an ADE20K or synthetic record (see the
    module docstring). Raises BadImage for an undecodable image or label map."""
    image = record_image(record)
    label = label_of(record, image.shape[:2], reduce_zero_label)
    height, width = image.shape[:2]
    if min(height, width) != size:
        scale = size / min(height, width)
        shape = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = cv2.resize(image, shape, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, shape, interpolation=cv2.INTER_NEAREST)
    return {"image": _centre(image, size), "label": _centre(label, size)}


def depth_view(record: dict[str, Any], *, size: int) -> dict[str, np.ndarray]:
    """{"image": uint8 [size, size, 3], "depth": float32 [size, size] metres, 0 invalid} of an NYUv2 or
    synthetic record: the central window. Raises BadImage for an undecodable pair or one smaller than `size`."""
    image = record_image(record)
    depth = depth_of(record, image.shape[:2])
    return {"image": _centre(image, size), "depth": _centre(depth, size)}
