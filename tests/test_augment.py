"""Host-side RandAugment and random erasing: colour ops against PIL, geometric ops against hand-computed pixel
mappings, the sampling of ops and magnitudes, and the statistics of random erasing."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance, ImageOps

from clipjax.data import augment
from clipjax.data.augment import rand_augment, random_erasing

FILL = (124, 116, 104)


def astronaut(width: int = 48, height: int = 40) -> np.ndarray:
    return cv2.resize(skimage.data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)


def low_contrast(image: np.ndarray) -> np.ndarray:
    """The image squeezed into 40..199, so that autocontrast and equalize have something to do."""
    return (40 + image.astype(np.uint16) * 160 // 256).astype(np.uint8)


def counted() -> np.ndarray:
    """52 x 50 pixels: 2550 dark ones and 50 at 200 per channel, so that PIL's equalize step, 2550 // 255, is 10
    (9 with the // 256 of older Pillow)."""
    rng = np.random.default_rng(0)
    channels = [rng.permutation(np.concatenate([rng.integers(0, 100, 2550), np.full(50, 200)])) for _ in range(3)]
    return np.stack(channels, axis=-1).reshape(52, 50, 3).astype(np.uint8)


def photos() -> list[np.ndarray]:
    coffee = cv2.resize(skimage.data.coffee(), (37, 29), interpolation=cv2.INTER_AREA)
    return [astronaut(), low_contrast(astronaut()), coffee, counted(), np.full((6, 9, 3), 77, np.uint8)]


# ------------------------------------------------------------------------------------------ colour ops vs PIL


@pytest.mark.parametrize(
    "ours, pil",
    [
        (augment._auto_contrast, ImageOps.autocontrast),
        (augment._equalize, ImageOps.equalize),
        (augment._invert, ImageOps.invert),
    ],
    ids=["autocontrast", "equalize", "invert"],
)
def test_parameterless_colour_ops_equal_pil(ours, pil):
    for image in photos():
        np.testing.assert_array_equal(ours(image), np.asarray(pil(Image.fromarray(image))))


def test_posterize_and_solarize_equal_pil():
    for image in photos():
        pil = Image.fromarray(image)
        for bits in range(1, 8):
            np.testing.assert_array_equal(augment._posterize(image, bits), np.asarray(ImageOps.posterize(pil, bits)))
        for threshold in (0, 1, 26, 128, 255, 256):
            np.testing.assert_array_equal(
                augment._solarize(image, threshold), np.asarray(ImageOps.solarize(pil, threshold))
            )
    image = astronaut()
    np.testing.assert_array_equal(augment._posterize(image, 8), image)
    # timm's PosterizeIncreasing keeps 0 bits at magnitude 10 (current Pillow refuses 0; older Pillow gave black).
    np.testing.assert_array_equal(augment._posterize(image, 0), np.zeros_like(image))


def test_solarize_add_adds_below_128_and_saturates():
    image = astronaut()
    for add in (0, 30, 99, 110):
        wide = image.astype(int)
        expected = np.where(wide < 128, np.minimum(wide + add, 255), wide)
        np.testing.assert_array_equal(augment._solarize_add(image, add), expected)


@pytest.mark.parametrize(
    "ours, pil",
    [
        (augment._color, ImageEnhance.Color),
        (augment._contrast, ImageEnhance.Contrast),
        (augment._brightness, ImageEnhance.Brightness),
        (augment._sharpness, ImageEnhance.Sharpness),
    ],
    ids=["color", "contrast", "brightness", "sharpness"],
)
@pytest.mark.parametrize("factor", [0.0, 0.1, 0.19, 0.55, 1.0, 1.37, 1.81, 1.9])
def test_enhance_ops_equal_pil(ours, pil, factor):
    for image in photos():
        expected = np.asarray(pil(Image.fromarray(image)).enhance(factor)).astype(int)
        difference = np.abs(ours(image, factor).astype(int) - expected)
        # Identical on x86; a fused multiply-add in either float32 blend could move a rare value by one.
        assert difference.max() <= 1
        assert np.mean(difference > 0) < 0.01


# -------------------------------------------------------------------------------------- geometric ops by hand


def test_integer_translation_moves_pixels_and_uncovers_fill():
    image = astronaut()
    moved = augment._translate(image, 5.0, 0.0, FILL)  # output x shows input x + 5: content moves left
    np.testing.assert_array_equal(moved[:, :-5], image[:, 5:])
    np.testing.assert_array_equal(moved[:, -5:], np.broadcast_to(np.array(FILL, np.uint8), moved[:, -5:].shape))
    moved = augment._translate(image, 0.0, -3.0, FILL)  # content moves down
    np.testing.assert_array_equal(moved[3:], image[:-3])
    np.testing.assert_array_equal(moved[:3], np.broadcast_to(np.array(FILL, np.uint8), moved[:3].shape))


def test_half_pixel_translation_averages_neighbours():
    image = astronaut()
    moved = augment._translate(image, 0.5, 0.0, FILL).astype(int)
    average = (image[:, :-1].astype(int) + image[:, 1:]) / 2
    assert np.abs(moved[:, :-1] - average).max() <= 1


def test_rotation_by_right_angles_about_the_centre_is_exact():
    square = astronaut(24, 24)
    np.testing.assert_array_equal(augment._rotate(square, 0.0, FILL), square)
    np.testing.assert_array_equal(augment._rotate(square, 90.0, FILL), np.rot90(square, 1))  # counter-clockwise
    np.testing.assert_array_equal(augment._rotate(square, -90.0, FILL), np.rot90(square, -1))
    np.testing.assert_array_equal(augment._rotate(astronaut(), 180.0, FILL), astronaut()[::-1, ::-1])


def ramp(height: int, width: int) -> np.ndarray:
    """Value 3 * x + 2 * y + 10 in every channel: bilinear sampling of it is the same linear function."""
    y, x = np.mgrid[:height, :width]
    return np.repeat((3 * x + 2 * y + 10)[..., None], 3, axis=-1).astype(np.uint8)


def test_rotation_samples_the_rotated_position():
    height, width = 36, 40
    degrees = 17.0
    rotated = augment._rotate(ramp(height, width), degrees, FILL)[..., 0].astype(float)
    # PIL rotates counter-clockwise about (w / 2, h / 2) in corner coordinates, ((w - 1) / 2, (h - 1) / 2) in
    # pixel indices: output (x, y) shows input centre + R(-degrees) (x, y) - centre.
    y, x = np.mgrid[:height, :width].astype(float)
    cx, cy, theta = (width - 1) / 2, (height - 1) / 2, -np.radians(degrees)
    x_in = np.cos(theta) * (x - cx) + np.sin(theta) * (y - cy) + cx
    y_in = -np.sin(theta) * (x - cx) + np.cos(theta) * (y - cy) + cy
    inside = (x_in >= 0) & (x_in <= width - 1) & (y_in >= 0) & (y_in <= height - 1)
    assert inside.mean() > 0.6
    assert np.abs(rotated - (3 * x_in + 2 * y_in + 10))[inside].max() <= 1
    assert np.all(rotated[0, 0] == FILL[0]) and np.all(rotated[-1, -1] == FILL[0])  # corners uncovered


def test_shear_follows_pil_pixel_centres():
    image = astronaut()
    # PIL's shear maps output (x, y) to input x + 0.4 * y in corner coordinates: row 2's centre (y = 2.5) takes
    # its pixels from one column to the right, row 7's (y = 7.5) from three.
    sheared = augment._shear_x(image, 0.4, FILL)
    np.testing.assert_array_equal(sheared[2, :-1], image[2, 1:])
    np.testing.assert_array_equal(sheared[7, :-3], image[7, 3:])
    sheared = augment._shear_y(image, -0.4, FILL)
    np.testing.assert_array_equal(sheared[1:, 2], image[:-1, 2])
    np.testing.assert_array_equal(sheared[3:, 7], image[:-3, 7])
    # A fractional shear of a linear ramp samples the ramp at the sheared position.
    ramped = augment._shear_x(ramp(30, 40), 0.27, FILL)[..., 0].astype(float)
    y, x = np.mgrid[:30, :40].astype(float)
    x_in = x + 0.27 * (y + 0.5)
    inside = x_in <= 39
    assert np.abs(ramped - (3 * x_in + 2 * y + 10))[inside].max() <= 1


# --------------------------------------------------------------------------------------------- rand_augment


def test_rand_augment_is_deterministic_per_seed_and_varies_across_seeds():
    image = astronaut()
    outputs = [rand_augment(image, np.random.default_rng(seed)) for seed in range(12)]
    for seed in (0, 5):
        np.testing.assert_array_equal(rand_augment(image, np.random.default_rng(seed)), outputs[seed])
    distinct = {output.tobytes() for output in outputs}
    assert len(distinct) >= 9  # ~1/4 of seeds apply no op and give the input back


def test_rand_augment_keeps_shape_dtype_and_input():
    image = astronaut(37, 29)
    before = image.copy()
    rng = np.random.default_rng(0)
    for _ in range(40):
        out = rand_augment(image, rng, num_ops=3)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert not np.shares_memory(out, image)
    np.testing.assert_array_equal(image, before)
    unchanged = rand_augment(image, rng, num_ops=0)
    np.testing.assert_array_equal(unchanged, image)
    assert not np.shares_memory(unchanged, image)
    with pytest.raises(ValueError):
        rand_augment(image.astype(np.float32), rng)


def test_each_real_op_changes_an_image_half_the_time():
    image = low_contrast(astronaut(16, 16))
    rng = np.random.default_rng(1)
    changed = [not np.array_equal(rand_augment(image, rng, num_ops=1), image) for _ in range(300)]
    assert abs(np.mean(changed) - 0.5) < 0.09


def test_ops_are_uniform_with_replacement_and_magnitudes_normal_clipped(monkeypatch):
    calls = []
    for name in augment._OP_NAMES:
        monkeypatch.setitem(
            augment._RAND_INCREASING_OPS,
            name,
            lambda image, level, rng, fill, name=name: calls.append((name, level)) or image,
        )
    image = astronaut(8, 8)
    rng = np.random.default_rng(0)
    for _ in range(1500):
        rand_augment(image, rng, num_ops=2)
    assert abs(len(calls) / 3000 - 0.5) < 0.03  # each slot applied with probability 1/2
    names, levels = zip(*calls)
    counts = np.array([names.count(name) for name in augment._OP_NAMES])
    assert len(counts) == 15 and counts.min() > 60 and counts.max() < 150  # ~100 each
    levels = np.array(levels)
    assert abs(levels.mean() - 0.9) < 0.01 and abs(levels.std() - 0.05) < 0.01  # m9 +- 0.5, out of 10
    assert levels.max() == 1.0 and 10 < np.sum(levels == 1.0) < 70  # clipped at 10: ~2.3% of N(9, 0.5)

    calls.clear()
    for _ in range(100):
        rand_augment(image, rng, magnitude=7.0, magnitude_std=0.0)
    assert {level for _, level in calls} == {0.7}
    calls.clear()
    for _ in range(200):
        rand_augment(image, rng, magnitude=8.0, magnitude_std=float("inf"))
    levels = np.array([level for _, level in calls])
    assert levels.min() >= 0 and levels.max() <= 0.8 and abs(levels.mean() - 0.4) < 0.05


def test_levels_map_to_timm_arguments(monkeypatch):
    recorded = {}
    for name in ("_rotate", "_shear_x", "_shear_y", "_posterize", "_solarize", "_solarize_add", "_color"):
        monkeypatch.setattr(augment, name, lambda image, *args, name=name: recorded.setdefault(name, []).append(args))
    monkeypatch.setattr(
        augment, "_translate", lambda image, dx, dy, fill: recorded.setdefault("dx dy", []).append((dx, dy))
    )
    ops = augment._RAND_INCREASING_OPS
    image = np.zeros((20, 50, 3), np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(40):
        for name in ops:
            ops[name](image, 0.9, rng, FILL)
    assert {round(args[0], 9) for args in recorded["_rotate"]} == {27.0, -27.0}
    assert {round(args[0], 9) for args in recorded["_shear_x"] + recorded["_shear_y"]} == {0.27, -0.27}
    assert {args[1] for args in recorded["_rotate"]} == {FILL}
    translations = {(round(dx, 9), round(dy, 9)) for dx, dy in recorded["dx dy"]}
    assert translations == {(20.25, 0), (-20.25, 0), (0, 8.1), (0, -8.1)}  # 0.45 * 0.9 of the width or height
    assert {args for args in recorded["_posterize"]} == {(1,)}  # 4 - int(0.9 * 4)
    assert {args for args in recorded["_solarize"]} == {(26,)}  # 256 - int(0.9 * 256)
    assert {args for args in recorded["_solarize_add"]} == {(99,)}  # int(0.9 * 110)
    assert {round(args[0], 9) for args in recorded["_color"]} == {1.81, 0.19}  # 1 +- 0.9 * 0.9
    ops["PosterizeIncreasing"](image, 1.0, rng, FILL)  # magnitude 10 keeps no bits
    ops["SolarizeIncreasing"](image, 0.0, rng, FILL)  # magnitude 0 inverts nothing
    assert recorded["_posterize"][-1] == (0,) and recorded["_solarize"][-1] == (256,)


# ------------------------------------------------------------------------------------------- random erasing


def erased_boxes(images: list[np.ndarray]) -> list[tuple[int, int, int, int] | None]:
    """(top, left, height, width) of the pixels that differ from 0 in each image, or None."""
    boxes = []
    for image in images:
        rows, cols = np.nonzero(image.any(axis=-1))
        if len(rows) == 0:
            boxes.append(None)
            continue
        top, left = rows.min(), cols.min()
        h, w = rows.max() - top + 1, cols.max() - left + 1
        assert len(rows) == h * w  # one solid rectangle
        boxes.append((top, left, h, w))
    return boxes


def test_random_erasing_rate_area_and_aspect():
    black = np.zeros((40, 48, 3), np.uint8)
    rng = np.random.default_rng(0)
    # Noise at 0.5 +- 0.1 is never rounded to 0, so every erased pixel differs from the black image.
    outputs = [random_erasing(black, rng, 0.25, (0.5, 0.5, 0.5), (0.1, 0.1, 0.1)) for _ in range(400)]
    boxes = [box for box in erased_boxes(outputs) if box is not None]
    assert abs(len(boxes) / 400 - 0.25) < 0.07
    areas = np.array([h * w for _, _, h, w in boxes]) / black[..., 0].size
    assert areas.min() > 0.015 and areas.max() < 0.36  # 2% .. 1/3, up to rounding of the sides
    assert areas.mean() > 0.1  # uniform in area: mean ~0.18 (fits fail more for the large ones)
    aspects = np.array([h / w for _, _, h, w in boxes])
    assert aspects.min() > 0.2 and aspects.max() < 5 and aspects.min() < 0.7 < 1.4 < aspects.max()
    for top, left, h, w in boxes:
        assert top + h <= 40 and left + w <= 48 and h < 40 and w < 48
    assert len({(top, left) for top, left, _, _ in boxes}) > 0.8 * len(boxes)


def test_random_erasing_always_and_never():
    black = np.zeros((20, 20, 3), np.uint8)
    rng = np.random.default_rng(1)
    always = erased_boxes([random_erasing(black, rng, 1.0, (0.5,) * 3, (0.1,) * 3) for _ in range(50)])
    assert all(box is not None for box in always)
    image = astronaut()
    for _ in range(20):
        np.testing.assert_array_equal(random_erasing(image, rng, 0.0), image)


def test_erased_pixels_are_normal_in_the_normalised_space():
    black = np.zeros((64, 64, 3), np.uint8)
    rng = np.random.default_rng(2)
    mean, std = (0.5, 0.4, 0.6), (0.03, 0.02, 0.04)
    values = np.concatenate(
        [out[out.any(axis=-1)] for out in (random_erasing(black, rng, 1.0, mean, std) for _ in range(40))]
    ).astype(float)
    assert len(values) > 15000
    # Rounded to the nearest level: truncating would lower the mean by half a level.
    np.testing.assert_allclose(values.mean(axis=0), 255 * np.array(mean), atol=0.2)
    np.testing.assert_allclose(values.std(axis=0), 255 * np.array(std), rtol=0.05)
    # Per pixel and per channel: independent noise, not one colour per rectangle.
    assert abs(np.corrcoef(values[:, 0], values[:, 1])[0, 1]) < 0.05

    # The defaults are CLIP's statistics: erased pixels are standard normal after CLIP's normalisation (a little
    # narrower, since pixels past 0 or 255 are clipped).
    # The same seed erases the same rectangle with the same noise on a black and a white image: the erased
    # pixels are those where the two agree, whatever their values.
    values = []
    for seed in range(20):
        on_black = random_erasing(black, np.random.default_rng(seed), 1.0)
        on_white = random_erasing(black + 255, np.random.default_rng(seed), 1.0)
        values.append(on_black[(on_black == on_white).all(axis=-1)])
    values = np.concatenate(values) / 255.0
    z = (values - np.array(augment.CLIP_MEAN)) / np.array(augment.CLIP_STD)
    assert np.all(np.abs(z.mean(axis=0)) < 0.06) and np.all((z.std(axis=0) > 0.85) & (z.std(axis=0) < 1.02))


def test_random_erasing_is_deterministic_and_keeps_its_input():
    image = astronaut()
    before = image.copy()
    first = [random_erasing(image, np.random.default_rng(seed), 1.0) for seed in range(5)]
    again = [random_erasing(image, np.random.default_rng(seed), 1.0) for seed in range(5)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.uint8 and a.shape == image.shape and not np.shares_memory(a, image)
    assert len({out.tobytes() for out in first}) == 5
    np.testing.assert_array_equal(image, before)
    with pytest.raises(ValueError):
        random_erasing(image[..., :2], np.random.default_rng(0))


def test_module_is_host_only_and_shares_clips_statistics():
    code = "import sys, clipjax.data.augment; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    from clipjax.data.transforms import CLIP_MEAN, CLIP_STD

    assert augment.CLIP_MEAN == CLIP_MEAN and augment.CLIP_STD == CLIP_STD
