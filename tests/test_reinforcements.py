"""DataCompDR's stored augmentations replayed as torchvision applied them (the oracle: torchvision itself, on the
PIL image), and malformed paug.json / npz members refused with their reason."""

import io
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf
from torchvision.transforms.autoaugment import _apply_op

from clipjax.data.augment import TORCHVISION_RAND_AUGMENT_OPS, replay_rand_augment
from clipjax.data.reinforcements import (
    BadReinforcement,
    StoredAugmentation,
    parse_augmentations,
    parse_embeddings,
    replay,
)

WIDTH, HEIGHT = 384, 288


@pytest.fixture(scope="module")
def photo():
    """A real photo, not square, so that x and y cannot be confused: uint8 [288, 384, 3]."""
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((WIDTH, HEIGHT), Image.BICUBIC))


def torchvision_op(pixels, name, magnitude):
    image = _apply_op(Image.fromarray(pixels), name, magnitude, interpolation=InterpolationMode.NEAREST, fill=None)
    return np.asarray(image)


def mean_difference(a, b):
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


COLOUR_OPS = [
    ("Identity", 0.0),
    ("Brightness", 0.27),
    ("Brightness", -0.27),
    ("Color", 0.27),
    ("Contrast", -0.27),
    ("Sharpness", 0.27),
    ("Posterize", 7.0),
    ("Posterize", 5.0),
    ("Solarize", 178.5),
    ("AutoContrast", 0.0),
    ("Equalize", 0.0),
]
GEOMETRIC_OPS = [
    ("ShearX", 0.09),
    ("ShearX", -0.09),
    ("ShearY", 0.09),
    ("TranslateX", 52.0),
    ("TranslateX", -52.0),
    ("TranslateY", 39.6),
    ("Rotate", 9.0),
    ("Rotate", -9.0),
]


@pytest.mark.parametrize("name,magnitude", COLOUR_OPS)
def test_colour_ops_equal_torchvisions(photo, name, magnitude):
    ours = replay_rand_augment(photo, [(TORCHVISION_RAND_AUGMENT_OPS.index(name), magnitude)])
    theirs = torchvision_op(photo, name, magnitude)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.parametrize("name,magnitude", GEOMETRIC_OPS)
def test_geometric_ops_sample_the_pixels_torchvision_samples(photo, name, magnitude):
    ours = replay_rand_augment(photo, [(TORCHVISION_RAND_AUGMENT_OPS.index(name), magnitude)])
    theirs = torchvision_op(photo, name, magnitude)
    # Rotations may round a few pixel centres that fall on a half the other way.
    assert np.mean(np.all(ours == theirs, axis=2)) > 0.998


def test_replayed_crop_and_ops_match_torchvisions_reapplication(photo):
    top, left, height, width = 40, 84, 200, 240
    ops = [(5, -9.0), (8, 0.27)]
    stored = parse_augmentations(
        json.dumps({"param_aug": [[[top, left, height, width], [list(op) for op in ops]]]}).encode()
    )
    ours = replay(photo, (WIDTH, HEIGHT), stored[0], 96)
    theirs = tvf.resized_crop(Image.fromarray(photo), top, left, height, width, [96, 96], InterpolationMode.BICUBIC)
    for index, magnitude in ops:
        theirs = Image.fromarray(torchvision_op(np.asarray(theirs), TORCHVISION_RAND_AUGMENT_OPS[index], magnitude))
    assert ours.shape == (96, 96, 3)
    # OpenCV's resampling against PIL's antialiased bicubic: a couple of levels on average.
    assert mean_difference(ours, np.asarray(theirs)) < 3.0
    # The same crop 8 pixels to the right is many times further away.
    shifted = replay(
        photo, (WIDTH, HEIGHT), StoredAugmentation((left + 8, top, left + width + 8, top + height), ops), 96
    )
    assert mean_difference(shifted, np.asarray(theirs)) > 5 * mean_difference(ours, np.asarray(theirs))


def test_a_reduced_decode_replays_the_box_scaled_with_it(photo):
    augmentation = StoredAugmentation((80, 32, 336, 256), ())
    full = replay(photo, (WIDTH, HEIGHT), augmentation, 96)
    halved = np.asarray(Image.fromarray(photo).resize((WIDTH // 2, HEIGHT // 2), Image.BOX))  # a 1/2-scale decode
    assert mean_difference(replay(halved, (WIDTH, HEIGHT), augmentation, 96), full) < 2.0
    shifted = StoredAugmentation((88, 32, 344, 256), ())  # 8 pixels to the right
    assert mean_difference(replay(photo, (WIDTH, HEIGHT), shifted, 96), full) > 10.0


def test_stored_members_parse_and_bad_ones_say_why():
    stored = parse_augmentations(b'{"param_aug": [[[1, 2, 30, 40], [[1, 0.09], [11, 178.5]]], [[0, 0, 5, 5], null]]}')
    assert stored == [
        StoredAugmentation((2, 1, 42, 31), ((1, 0.09), (11, 178.5))),
        StoredAugmentation((0, 0, 5, 5), ()),
    ]
    for raw, reason in [
        (b"not json", "no param_aug list"),
        (b'{"crop": [[0, 0, 1, 1]]}', "no param_aug list"),
        (b'{"param_aug": []}', "non-empty list"),
        (b'{"param_aug": [[[0, 0, 5], null]]}', "not \\[\\[top, left, height, width\\], ops\\]"),
        (b'{"param_aug": [[[0, 0, 0, 5], null]]}', "not a box"),
        (b'{"param_aug": [[[0, 0, 5, 5], [[14, 1.0]]]]}', "not RandAugment ops"),
    ]:
        with pytest.raises(BadReinforcement, match=reason):
            parse_augmentations(raw)
    with pytest.raises(BadReinforcement, match="does not fit a 96 x 72 image"):
        replay(np.zeros((72, 96, 3), np.uint8), (96, 72), StoredAugmentation((50, 0, 100, 10), ()), 8)

    def npz(**arrays):
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    image_emb, text_emb = parse_embeddings(
        npz(image_emb=np.ones((3, 4), np.float16), text_emb=np.zeros((6, 4))), width=4
    )
    assert image_emb.dtype == np.float32 and image_emb.shape == (3, 4) and text_emb.shape == (6, 4)
    for raw, reason in [
        (b"PK not a zip", "does not hold image_emb and text_emb"),
        (npz(image_emb=np.ones((3, 4))), "does not hold image_emb and text_emb"),
        (npz(image_emb=np.ones((3, 5)), text_emb=np.ones((6, 4))), r"image_emb has shape \[3, 5\], expected \[n, 4\]"),
        (npz(image_emb=np.ones((3, 4)), text_emb=np.full((6, 4), np.nan)), "text_emb is not finite"),
    ]:
        with pytest.raises(BadReinforcement, match=reason):
            parse_embeddings(raw, width=4)
