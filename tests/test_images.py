"""Image decoding to RGB from every mode, and the training and evaluation crops, against numpy oracles."""

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from clipjax.data.images import BadImage, center_crop, decode_image, random_resized_crop
from tests.shards import encode, photos


def decoded(image, fmt):
    return np.asarray(decode_image(encode(image, fmt)))


def test_rgb_and_grey_become_the_same_pixels_in_rgb():
    astronaut = skimage.data.astronaut()
    np.testing.assert_array_equal(decoded(Image.fromarray(astronaut), "png"), astronaut)
    np.testing.assert_array_equal(decoded(Image.fromarray(astronaut), "webp").shape, astronaut.shape)
    camera = skimage.data.camera()
    np.testing.assert_array_equal(decoded(Image.fromarray(camera), "png"), np.repeat(camera[..., None], 3, -1))


def test_alpha_is_dropped_not_blended():
    logo = skimage.data.logo()  # RGBA
    np.testing.assert_array_equal(decoded(Image.fromarray(logo), "png"), logo[..., :3])
    grey_alpha = photos()["camera_alpha"]
    np.testing.assert_array_equal(decoded(grey_alpha, "png"), np.repeat(skimage.data.camera()[..., None], 3, -1))


def test_a_palette_image_becomes_its_palette_colours():
    palette_image = photos()["coins_palette"]
    data = encode(palette_image, "png")
    reread = Image.open(io.BytesIO(data))
    assert reread.mode == "P" and "transparency" in reread.info
    lut = np.asarray(reread.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(np.asarray(decode_image(data)), lut[np.asarray(reread)])


def test_sixteen_bit_grey_is_rescaled_not_clipped():
    moon = skimage.data.moon()
    np.testing.assert_array_equal(decoded(photos()["moon_16bit"], "png"), np.repeat(moon[..., None], 3, -1))


def test_jpeg_decodes_like_pil():
    for name in ("astronaut", "camera"):
        data = encode(photos()[name], "jpg")
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
        assert np.abs(decode_image(data) - reference).max() <= 2  # libjpeg builds round a little differently


def test_cmyk_jpeg_becomes_rgb_close_to_the_original():
    rocket = skimage.data.rocket()
    rgb = decoded(photos()["rocket_cmyk"], "jpg")
    assert rgb.shape == rocket.shape
    assert np.abs(rgb.astype(float) - rocket).mean() < 8  # JPEG loss only


def test_large_jpeg_decodes_at_reduced_size_but_at_least_the_target():
    data = encode(Image.fromarray(skimage.data.hubble_deep_field()), "jpg")  # 1000 x 872
    pixels = decode_image(data, target=200)
    assert pixels.shape == (218, 250, 3)  # libjpeg's 1/4 scale: the shorter side stays >= 200
    full = np.asarray(Image.fromarray(decode_image(data)).resize((250, 218), Image.BOX), np.float64)
    assert np.abs(pixels - full).mean() < 3  # the same picture, at a quarter of the size
    assert decode_image(data, target=219).shape == (436, 500, 3)  # 1/4 would fall short: 1/2
    assert decode_image(data, target=2000).shape == (872, 1000, 3)  # smaller than the target: full size


@pytest.mark.parametrize("data", [b"", b"not an image", encode(Image.fromarray(skimage.data.chelsea()), "jpg")[:3000]])
def test_bad_bytes_raise_bad_image(data):
    with pytest.raises(BadImage):
        decode_image(data)


def test_center_crop_takes_the_middle_without_resampling_at_scale_one():
    coffee = skimage.data.coffee()[:, :500]  # 400 x 500
    out = center_crop(coffee, 400)
    np.testing.assert_array_equal(out, coffee[:, 50:450])


def test_random_resized_crop_is_deterministic_in_its_rng_and_flips_exactly():
    image = skimage.data.chelsea()
    first = random_resized_crop(image, 64, np.random.default_rng(5), scale=(0.3, 1.0))
    again = random_resized_crop(image, 64, np.random.default_rng(5), scale=(0.3, 1.0))
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    # With flip on, the same box comes out either as is or mirrored left-right.
    outs = [random_resized_crop(image, 64, np.random.default_rng(seed), flip=True) for seed in range(8)]
    plain = [random_resized_crop(image, 64, np.random.default_rng(seed)) for seed in range(8)]
    mirrored = [np.array_equal(o, p[:, ::-1]) and not np.array_equal(o, p) for o, p in zip(outs, plain)]
    assert any(mirrored) and not all(mirrored)


def test_downscaling_by_a_whole_factor_averages_blocks():
    astronaut = skimage.data.astronaut()  # 512 x 512
    out = random_resized_crop(astronaut, 128, np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    blocks = astronaut.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks, atol=1.0)  # the box filter, then an identity bicubic step


@pytest.mark.parametrize("height, width", [(300, 500), (500, 300), (460, 470), (240, 700)])
def test_large_regions_are_box_averaged_before_the_bicubic_resize(height, width):
    """Whole factors of the region over the output (1 x 2, 2 x 1, 2 x 2, 1 x 3 here) are averaged first, as
    OpenCV's INTER_AREA would (within one unit of rounding), so fine patterns do not alias."""
    import cv2

    from clipjax.data.images import resize_region

    rows, cols = np.mgrid[:height, :width]
    stripes = np.where((rows + cols) % 2 == 0, 255, 0).astype(np.uint8)[..., None].repeat(3, axis=-1)
    out = resize_region(stripes, (0, 0, width, height), 224)
    fx, fy = max(width // 224, 1), max(height // 224, 1)
    trimmed = stripes[: height - height % fy, : width - width % fx]
    averaged = cv2.resize(trimmed, (trimmed.shape[1] // fx, trimmed.shape[0] // fy), interpolation=cv2.INTER_AREA)
    want = cv2.resize(averaged, (224, 224), interpolation=cv2.INTER_CUBIC)
    assert np.abs(out.astype(int) - want).max() <= 2
    if fx % 2 == 0 or fy % 2 == 0:  # a checkerboard averaged over two neighbours is flat grey
        assert np.abs(out.astype(int) - 127.5).max() <= 2
