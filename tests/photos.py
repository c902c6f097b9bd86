"""Real photos with ground truth for the dense-task tests: scikit-image's Middlebury stereo pair as metric
depth, and photos with hand-made ADE20K-style labels."""

import functools

import numpy as np
import skimage.data


@functools.cache
def photo(name: str) -> np.ndarray:
    """uint8 [H, W, 3] RGB."""
    return getattr(skimage.data, name)()


@functools.cache
def raw_label(name: str) -> np.ndarray:
    """uint8 [H, W] ADE20K-style labels for the photo: 0 border, 1 / 3 by brightness, rectangles of 13 and 150."""
    image = photo(name)
    height, width = image.shape[:2]
    label = np.zeros((height, width), np.uint8)
    grey = image.mean(axis=-1)
    label[6:-6, 6:-6] = np.where(grey[6:-6, 6:-6] > 110, 3, 1)
    label[20 : height // 3, 30 : width // 4] = 13
    label[height // 2 : height - 30, width // 2 : width - 40] = 150
    return label


# The Motorcycle pair's calibration at a quarter of its size (see tests/test_depth_data.py).
FOCAL, BASELINE, DOFFS = 3979.911 / 4, 0.193001, 124.343 / 4


@functools.cache
def motorcycle() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [500, 741, 3] RGB, uint16 [500, 741] millimetres, 0 invalid)."""
    left, _, disparity = skimage.data.stereo_motorcycle()
    valid = np.isfinite(disparity)
    metres = np.where(valid, FOCAL * BASELINE / (np.where(valid, disparity, 0) + DOFFS), 0.0)
    millimetres = np.round(np.minimum(metres, 10.0) * 1000).astype(np.uint16)
    return left, millimetres
