"""On-device image normalisation and the padding pixel, against OpenAI CLIP's published mean and std."""

import numpy as np
import pytest

from clipjax.data.transforms import BLACK, normalize_images, padding_pixel

# OpenAI CLIP's preprocessing (clip/clip.py, open_clip's OPENAI_DATASET_MEAN / STD), typed in again as the oracle.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
# torchvision's ImageNet statistics (MAE's, timm's IMAGENET_DEFAULT_MEAN / STD), typed in again.
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def test_clip_normalisation_matches_numpy_and_none_scales_to_unit_range():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_allclose(normalize_images(pixels, "clip"), (pixels / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalize_images(pixels, "none"), pixels / 255.0, rtol=1e-6)
    np.testing.assert_allclose(
        normalize_images(pixels, "imagenet"), (pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="'laion' is not one of"):
        normalize_images(pixels, "laion")


def test_the_padding_pixel_normalises_to_the_nearest_value_to_zero():
    # detectron2 and mmseg pad the normalised image with 0: the uint8 pixel nearest to 0 after normalisation.
    assert padding_pixel("clip") == (123, 117, 104) and padding_pixel("imagenet") == (124, 116, 104)
    every_level = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    for mode in ("clip", "imagenet"):
        nearest = np.abs(np.asarray(normalize_images(every_level, mode))).argmin(axis=0)
        assert tuple(int(v) for v in nearest) == padding_pixel(mode)
    assert np.abs(np.asarray(normalize_images(np.array(padding_pixel("clip"), np.uint8), "clip"))).max() < 0.01
    assert padding_pixel("none") == BLACK == (0, 0, 0)
    with pytest.raises(ValueError, match="'laion' is not one of"):
        padding_pixel("laion")
