"""Host-side image augmentations of the ImageNet finetuning recipe (MAE's ViT-B): RandAugment and random erasing;
and the replay of torchvision RandAugment ops that DataCompDR stored with its teacher embeddings.

The first two follow timm's semantics (the recipe's `auto_augment="rand-m9-mstd0.5-inc1"`, `re_prob=0.25,
re_mode="pixel", re_count=1`). All work on single uint8 [H, W, 3] images with numpy and OpenCV instead of PIL
and torch, so they are cheap enough for grain worker processes. All randomness comes from an explicit
`np.random.Generator`: the same generator state gives the same output.

The colour ops reproduce PIL's ImageOps / ImageEnhance arithmetic exactly (the lookup tables, the 16-bit grey
conversion, the float32 blend with truncation); the geometric ops use PIL's affine conventions (pixel centres
at +0.5, rotation about the image centre) with OpenCV's bilinear warp, which blends the outermost sampled pixels
with the fill colour where PIL switches to the fill abruptly (a one-pixel difference along the edges); the
torchvision replay samples the nearest pixel, as torchvision's RandAugment does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

# Parallelism comes from many images in many workers, not from threads within one small warp.
cv2.setNumThreads(1)

# OpenAI CLIP's per-channel statistics in [0, 1] units (as clipjax.data.transforms, which imports JAX).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# timm's magnitude scale: magnitudes are out of 10, and clipped to [0, 10] after the random perturbation.
_LEVEL_DENOM = 10.0
# timm's rand augment applies each chosen op with this probability.
_OP_PROBABILITY = 0.5
# timm picks bilinear or bicubic at random unless told (MAE passes interpolation="bicubic"); bilinear is cheaper
# and cannot overshoot, and the difference after a rotation or shear is small.
_INTERPOLATION = cv2.INTER_LINEAR
# PIL's ImageFilter.SMOOTH, the "degenerate" image that ImageEnhance.Sharpness blends with.
_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
# timm's RandomErasing defaults: erased area as a fraction of the image, aspect ratio (log-uniform), tries to fit.
_ERASE_AREA = (0.02, 1.0 / 3.0)
_ERASE_LOG_ASPECT = (math.log(0.3), math.log(1.0 / 0.3))
_ERASE_ATTEMPTS = 10

_IDENTITY_LUT = np.arange(256, dtype=np.uint8)


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")


# ------------------------------------------------------------------------------------------------ colour ops
# Each takes and returns uint8 [H, W, 3] and never writes to its input.


def _histograms(image: np.ndarray) -> list[np.ndarray]:
    """Per-channel histograms of uint8 [H, W, 3] pixels: 3 int64 arrays [256]."""
    # calcHist counts in float32, exact below 2**24 pixels per bin (a 4096 x 4096 image of one colour).
    return [cv2.calcHist([image], [c], None, [256], [0, 256]).ravel().astype(np.int64) for c in range(3)]


def _apply_luts(image: np.ndarray, luts: list[np.ndarray]) -> np.ndarray:
    """Maps each channel of uint8 [H, W, 3] pixels through its own uint8 [256] table."""
    return cv2.LUT(image, np.stack(luts, axis=-1).reshape(256, 1, 3))


def _auto_contrast(image: np.ndarray) -> np.ndarray:
    """PIL's ImageOps.autocontrast (no cutoff): each channel's min..max stretched to 0..255, truncating."""
    luts = []
    for histogram in _histograms(image):
        present = np.flatnonzero(histogram)
        lo, hi = int(present[0]), int(present[-1])
        if hi <= lo:
            luts.append(_IDENTITY_LUT)  # a flat channel stays as it is
            continue
        # PIL's float64 arithmetic in the same order, then int() (truncation): the tables are identical.
        scale = 255.0 / (hi - lo)
        offset = -lo * scale
        luts.append(np.clip(np.trunc(np.arange(256) * scale + offset), 0, 255).astype(np.uint8))
    return _apply_luts(image, luts)


def _equalize(image: np.ndarray) -> np.ndarray:
    """PIL's ImageOps.equalize: per-channel histogram equalisation."""
    luts = []
    for histogram in _histograms(image):
        present = histogram[histogram > 0]
        # PIL spreads all but the brightest value's pixels over 255 steps (older Pillow: 256); the brightest value
        # ends at 255 either way.
        step = (int(present.sum()) - int(present[-1])) // 255 if len(present) > 1 else 0
        if step == 0:
            luts.append(_IDENTITY_LUT)
            continue
        before = np.concatenate([[0], np.cumsum(histogram)[:-1]])  # pixels darker than each value
        luts.append(np.minimum((step // 2 + before) // step, 255).astype(np.uint8))
    return _apply_luts(image, luts)


def _invert(image: np.ndarray) -> np.ndarray:
    return cv2.bitwise_not(image)


def _posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """PIL's ImageOps.posterize: keeps the top `bits` bits (0 bits: black, as PIL and timm do)."""
    if bits >= 8:
        return image.copy()
    return cv2.LUT(image, _IDENTITY_LUT & np.uint8((0xFF << (8 - bits)) & 0xFF))


def _solarize(image: np.ndarray, threshold: float) -> np.ndarray:
    """PIL's ImageOps.solarize: values >= threshold inverted (256: no change, 0: all inverted)."""
    values = np.arange(256)
    return cv2.LUT(image, np.where(values < threshold, values, 255 - values).astype(np.uint8))


def _solarize_add(image: np.ndarray, add: int, threshold: int = 128) -> np.ndarray:
    """timm's solarize_add: `add` added to values below the threshold, saturating at 255."""
    values = np.arange(256)
    return cv2.LUT(image, np.where(values < threshold, np.minimum(values + add, 255), values).astype(np.uint8))


def _blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
    """PIL's Image.blend(degenerate, image, factor) as ImageEnhance uses it: degenerate + factor * (image -
    degenerate) in float32, clipped, then truncated. Shapes broadcast; returns uint8."""
    base = degenerate.astype(np.float32)
    out = image.astype(np.float32)
    out -= base
    out *= np.float32(factor)
    out += base
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L conversion, uint8 [H, W, 3] -> uint8 [H, W]: ITU-R 601 luma in 16-bit fixed point,
    rounded (OpenCV's cvtColor uses 14-bit weights and differs by one in places)."""
    x = image.astype(np.uint32)
    return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 32768) >> 16).astype(np.uint8)


def _color(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ImageEnhance.Color: blend with the grey image (0: grey, 1: unchanged, > 1: more saturated)."""
    return _blend(_grey(image)[..., None], image, factor)


def _contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ImageEnhance.Contrast: blend with the grey image's mean (rounded half up), as a lookup table."""
    mean = int(_grey(image).mean() + 0.5)
    return cv2.LUT(image, _blend(np.full(256, mean), _IDENTITY_LUT, factor))


def _brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ImageEnhance.Brightness: blend with black, as a lookup table."""
    return cv2.LUT(image, _blend(np.zeros(256), _IDENTITY_LUT, factor))


def _sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ImageEnhance.Sharpness: blend with PIL's SMOOTH filter of the image (< 1: blurrier, > 1:
    sharper). The smoothed image keeps the border pixels unchanged, as PIL's 3 x 3 filters do."""
    if min(image.shape[:2]) < 3:
        return image.copy()  # PIL's filter leaves images this small unchanged (all border)
    # sum / 13 is never within 1/26 of a half, so OpenCV's float rounding equals PIL's.
    smooth = cv2.filter2D(image, -1, _SMOOTH_KERNEL, borderType=cv2.BORDER_REPLICATE)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = image[0], image[-1], image[:, 0], image[:, -1]
    return _blend(smooth, image, factor)


# --------------------------------------------------------------------------------------------- geometric ops
# PIL's affine transforms map each output pixel centre (x + 0.5, y + 0.5) to a point in the input with pixel
# centres at +0.5; OpenCV's inverse maps work in pixel indices, so constant terms shift by the half pixel.


def _warp(
    image: np.ndarray, matrix: np.ndarray, fill: tuple[int, int, int], interpolation: int = _INTERPOLATION
) -> np.ndarray:
    """Samples uint8 [H, W, 3] `image` at matrix @ (u, v, 1) for each output index (u, v): bilinear (or the
    OpenCV `interpolation` given), `fill` outside."""
    height, width = image.shape[:2]
    return cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(float(v) for v in fill),
    )


def _rotate(
    image: np.ndarray, degrees: float, fill: tuple[int, int, int], interpolation: int = _INTERPOLATION
) -> np.ndarray:
    """PIL's Image.rotate(degrees): counter-clockwise about the image centre, same size."""
    height, width = image.shape[:2]
    theta = -math.radians(degrees)
    # PIL rounds the matrix to 15 decimals, which makes multiples of 90 degrees exact.
    cos, sin = round(math.cos(theta), 15), round(math.sin(theta), 15)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0  # the centre (w / 2, h / 2) in pixel indices
    matrix = np.array([[cos, sin, cx - cos * cx - sin * cy], [-sin, cos, cy + sin * cx - cos * cy]])
    return _warp(image, matrix, fill, interpolation)


def _shear_x(
    image: np.ndarray, factor: float, fill: tuple[int, int, int], interpolation: int = _INTERPOLATION
) -> np.ndarray:
    """PIL's affine (1, factor, 0, 0, 1, 0): input x = x + factor * y, sheared about the top edge."""
    return _warp(image, np.array([[1.0, factor, 0.5 * factor], [0.0, 1.0, 0.0]]), fill, interpolation)


def _shear_y(
    image: np.ndarray, factor: float, fill: tuple[int, int, int], interpolation: int = _INTERPOLATION
) -> np.ndarray:
    """PIL's affine (1, 0, 0, factor, 1, 0): input y = y + factor * x, sheared about the left edge."""
    return _warp(image, np.array([[1.0, 0.0, 0.0], [factor, 1.0, 0.5 * factor]]), fill, interpolation)


def _translate(image: np.ndarray, dx: float, dy: float, fill: tuple[int, int, int]) -> np.ndarray:
    """PIL's affine (1, 0, dx, 0, 1, dy): output (x, y) shows input (x + dx, y + dy), i.e. the content moves
    by (-dx, -dy) pixels; fractional shifts interpolate."""
    return _warp(image, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]), fill)


# ------------------------------------------------------------------------------------------------ RandAugment


def _random_sign(rng: np.random.Generator) -> float:
    return -1.0 if rng.random() < 0.5 else 1.0


def _enhance_factor(level: float, rng: np.random.Generator) -> float:
    # timm's "increasing" enhance: 1 +- 0.9 * level, so a higher magnitude always moves further from identity.
    return max(0.1, 1.0 + _random_sign(rng) * level * 0.9)


# timm's _RAND_INCREASING_TRANSFORMS, in its order. Each entry: (image, level in [0, 1], rng, fill) -> image,
# where level = magnitude / 10; signs are drawn from rng only by the ops that take them.
_Op = Callable[[np.ndarray, float, np.random.Generator, tuple[int, int, int]], np.ndarray]
_RAND_INCREASING_OPS: dict[str, _Op] = {
    "AutoContrast": lambda image, level, rng, fill: _auto_contrast(image),
    "Equalize": lambda image, level, rng, fill: _equalize(image),
    "Invert": lambda image, level, rng, fill: _invert(image),
    "Rotate": lambda image, level, rng, fill: _rotate(image, _random_sign(rng) * level * 30.0, fill),
    "PosterizeIncreasing": lambda image, level, rng, fill: _posterize(image, 4 - int(level * 4)),
    "SolarizeIncreasing": lambda image, level, rng, fill: _solarize(image, 256 - min(256, int(level * 256))),
    "SolarizeAdd": lambda image, level, rng, fill: _solarize_add(image, min(128, int(level * 110))),
    "ColorIncreasing": lambda image, level, rng, fill: _color(image, _enhance_factor(level, rng)),
    "ContrastIncreasing": lambda image, level, rng, fill: _contrast(image, _enhance_factor(level, rng)),
    "BrightnessIncreasing": lambda image, level, rng, fill: _brightness(image, _enhance_factor(level, rng)),
    "SharpnessIncreasing": lambda image, level, rng, fill: _sharpness(image, _enhance_factor(level, rng)),
    "ShearX": lambda image, level, rng, fill: _shear_x(image, _random_sign(rng) * level * 0.3, fill),
    "ShearY": lambda image, level, rng, fill: _shear_y(image, _random_sign(rng) * level * 0.3, fill),
    "TranslateXRel": lambda image, level, rng, fill: _translate(
        image, _random_sign(rng) * level * 0.45 * image.shape[1], 0.0, fill
    ),
    "TranslateYRel": lambda image, level, rng, fill: _translate(
        image, 0.0, _random_sign(rng) * level * 0.45 * image.shape[0], fill
    ),
}
_OP_NAMES = tuple(_RAND_INCREASING_OPS)


def rand_augment(
    image: np.ndarray,
    rng: np.random.Generator,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    fill: tuple[int, int, int] = (124, 116, 104),
) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: timm's RandAugment "rand-m9-mstd0.5-inc1" (the defaults).

    Picks `num_ops` of the 15 "increasing" ops uniformly with replacement; each is applied with probability
    0.5, at a magnitude drawn from normal(magnitude, magnitude_std) and clipped to [0, 10] (magnitude_std 0:
    always `magnitude`; infinite: uniform in [0, magnitude], as timm). Signed ops (rotate, shear, translate,
    the enhance factors) take either sign with probability 1/2.

    Args:
      image: uint8 [H, W, 3] RGB pixels; not modified.
      rng: the only source of randomness.
      num_ops: ops per image (timm's n; 0 returns a copy).
      magnitude: out of 10 (timm's m).
      magnitude_std: per-application standard deviation of the magnitude (timm's mstd).
      fill: RGB colour of the area that rotations, shears and translations uncover (timm: the dataset mean in
        pixels; the default is ImageNet's).

    Returns:
      A new uint8 [H, W, 3] array.
    """
    _check_image(image)
    out = np.ascontiguousarray(image)
    for index in rng.integers(0, len(_OP_NAMES), size=num_ops):
        if rng.random() >= _OP_PROBABILITY:
            continue
        if math.isinf(magnitude_std):
            m = rng.uniform(0.0, magnitude)
        elif magnitude_std > 0:
            m = rng.normal(magnitude, magnitude_std)
        else:
            m = magnitude
        level = min(max(float(m), 0.0), _LEVEL_DENOM) / _LEVEL_DENOM
        out = _RAND_INCREASING_OPS[_OP_NAMES[index]](out, level, rng, fill)
    return out.copy() if out is image else out


# -------------------------------------------------------------------------------------------- random erasing


def random_erasing(
    image: np.ndarray,
    rng: np.random.Generator,
    probability: float = 0.25,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: timm's RandomErasing(mode="pixel", max_count=1).

    With `probability`, replaces one rectangle of 2% to 1/3 of the image area, aspect ratio log-uniform in
    [0.3, 1/0.3] (10 tries to fit inside the image, else nothing is erased), with per-pixel, per-channel
    noise. timm erases after normalisation with standard normal values; here the noise is mapped back to
    pixels, round((mean + std * N(0, 1)) * 255), clipped to 0..255, so that after the model's normalisation
    with the same `mean` and `std` it is standard normal again (up to rounding, and the clipping of the ~6%
    of values beyond 0 or 255 with CLIP's statistics).

    Args:
      image: uint8 [H, W, 3] RGB pixels; not modified.
      rng: the only source of randomness.
      probability: chance that an image is erased at all (timm's re_prob).
      mean, std: the per-channel normalisation of the model's input in [0, 1] units (default OpenAI CLIP's;
        (0, 0, 0) and (1, 1, 1) for models fed un-normalised [0, 1] pixels).

    Returns:
      A new uint8 [H, W, 3] array.
    """
    _check_image(image)
    out = image.copy()
    if rng.random() >= probability:
        return out
    height, width = image.shape[:2]
    for _ in range(_ERASE_ATTEMPTS):
        target_area = rng.uniform(*_ERASE_AREA) * height * width
        aspect = math.exp(rng.uniform(*_ERASE_LOG_ASPECT))
        h = round(math.sqrt(target_area * aspect))
        w = round(math.sqrt(target_area / aspect))
        if h < height and w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            noise = rng.standard_normal((h, w, 3), dtype=np.float32)
            pixels = (np.asarray(mean, np.float32) + np.asarray(std, np.float32) * noise) * 255.0
            out[top : top + h, left : left + w] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
            break
    return out


# ------------------------------------------------------------------------------- torchvision RandAugment replay

# torchvision's RandAugment ops in the order DataCompDR numbers them in its stored augmentations (paug.json).
TORCHVISION_RAND_AUGMENT_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
_BLACK = (0, 0, 0)  # torchvision's RandAugment fills uncovered areas with 0 unless told otherwise
_NEAREST = cv2.INTER_NEAREST  # and samples the nearest pixel (its default interpolation)
# (image, stored signed magnitude) -> image, with torchvision's meaning of each magnitude: a shear factor
# (tan of the angle), whole pixels, degrees, an enhance offset from 1, bits, a threshold in pixel values.
_TORCHVISION_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "Identity": lambda image, m: image,
    "ShearX": lambda image, m: _shear_x(image, m, _BLACK, _NEAREST),
    "ShearY": lambda image, m: _shear_y(image, m, _BLACK, _NEAREST),
    # torchvision moves the content by +int(m) whole pixels; `_translate` samples the input at +dx.
    "TranslateX": lambda image, m: _translate(image, -float(int(m)), 0.0, _BLACK),
    "TranslateY": lambda image, m: _translate(image, 0.0, -float(int(m)), _BLACK),
    "Rotate": lambda image, m: _rotate(image, m, _BLACK, _NEAREST),
    "Brightness": lambda image, m: _brightness(image, 1.0 + m),
    "Color": lambda image, m: _color(image, 1.0 + m),
    "Contrast": lambda image, m: _contrast(image, 1.0 + m),
    "Sharpness": lambda image, m: _sharpness(image, 1.0 + m),
    "Posterize": lambda image, m: _posterize(image, int(m)),
    "Solarize": lambda image, m: _solarize(image, m),
    "AutoContrast": lambda image, m: _auto_contrast(image),
    "Equalize": lambda image, m: _equalize(image),
}


def replay_rand_augment(image: np.ndarray, ops: Sequence[tuple[int, float]]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: torchvision's RandAugment ops with stored magnitudes, in order.

    What DataCompDR's teacher saw: each op is (index into `TORCHVISION_RAND_AUGMENT_OPS`, the signed magnitude
    torchvision drew). The colour ops are PIL's arithmetic exactly; the geometric ops sample the nearest pixel
    with PIL's affine conventions, as torchvision's RandAugment does on PIL images.

    Args:
      image: uint8 [H, W, 3] RGB pixels; not modified.
      ops: (op index, magnitude) pairs; empty returns a copy.

    Returns:
      A new uint8 [H, W, 3] array.
    """
    _check_image(image)
    out = image
    for index, magnitude in ops:
        out = _TORCHVISION_OPS[TORCHVISION_RAND_AUGMENT_OPS[index]](out, float(magnitude))
    return out.copy() if out is image else out
