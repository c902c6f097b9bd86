"""Image decoding to RGB and the crops of CLIP training and evaluation, on the host (OpenCV and PIL).

Decoding asks libjpeg for a reduced size when the output is much smaller than the photo (1/2, 1/4 or
1/8 scale), which makes decode + crop cheaper than a full decode. Crops are cut from the decoded pixels and
resized with OpenCV, several times faster than PIL's resampling: decoding stays the dominant cost.
"""

from __future__ import annotations

import io
import math
from typing import Any

import cv2
import numpy as np
from PIL import Image

# Parallelism comes from decoding many samples at once (grain threads and workers), not within one resize.
cv2.setNumThreads(1)

_CV2_JPEG_FLAGS = {
    scale: flag | cv2.IMREAD_IGNORE_ORIENTATION
    for scale, flag in (
        (1, cv2.IMREAD_COLOR),
        (2, cv2.IMREAD_REDUCED_COLOR_2),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (8, cv2.IMREAD_REDUCED_COLOR_8),
    )
}

# Decoding a hostile file must not exhaust memory: refuse anything over 16k x 16k.
MAX_PIXELS = 16384 * 16384


class BadImage(ValueError):
    """The bytes are not a decodable image."""


def decode_image(data: bytes, target: int | None = None) -> np.ndarray:
    """Decodes an encoded image (JPEG, PNG, WebP, ...) of any mode to RGB pixels.

    Complete baseline/progressive JPEGs in colour or grey go through OpenCV's libjpeg-turbo (faster than
    PIL's, and without PIL's copy into numpy); everything else (CMYK, palettes, alpha, 16-bit, other
    formats, JPEGs with bytes after their end marker) through PIL. EXIF orientation is ignored, as
    PIL's decode (and so open_clip) ignores it.

    Args:
      data: the file's bytes.
      target: the side of the square the caller will crop to; lets JPEG decode at 1/2, 1/4 or 1/8 scale
        while the shorter side stays at least this large.

    Returns:
      uint8 [H, W, 3].

    Raises:
      BadImage: empty, truncated or corrupt data, or an image too large to decode safely.
    """
    if not data:
        raise BadImage("empty image")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.width * image.height > MAX_PIXELS:
            raise BadImage(f"image of {image.width} x {image.height} pixels is too large")
        reduce = 1
        if target and image.format == "JPEG":
            reduce = next((r for r in (8, 4, 2) if min(image.width, image.height) >= r * target), 1)
        # A JPEG cut short still "decodes" in OpenCV (grey fill); only complete files take that path.
        if image.format == "JPEG" and image.mode in ("RGB", "L") and data.endswith(b"\xff\xd9"):
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_JPEG_FLAGS[reduce])
            if pixels is None:
                raise BadImage("corrupt JPEG")
            return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)
        if reduce > 1:
            image.draft("RGB", (math.ceil(image.width / reduce), math.ceil(image.height / reduce)))
        image.load()
        return np.asarray(to_rgb(image))
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from None


def encoded_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image at full scale, from its header alone.

    Raises:
      BadImage: the bytes do not start like an image.
    """
    try:
        return Image.open(io.BytesIO(data)).size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from None


def decode_map(data: bytes, dtype: type, what: str) -> np.ndarray:
    """A single-channel annotation image (a PNG of class ids, 16-bit depths, ...) decoded as stored.

    Args:
      data: the file's bytes.
      dtype: the sample type it must have (np.uint8 labels, np.uint16 millimetres); anything else is refused,
        since a colour or wrong-depth map would be silently misread.
      what: what the map holds, for messages ("label map").

    Returns:
      [H, W] of `dtype`.

    Raises:
      BadImage: empty, corrupt or truncated data, or another sample type or channel count.
    """
    if not data:
        raise BadImage(f"empty {what}")
    try:
        values = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise BadImage(f"corrupt {what}: {e}") from None
    if values is None:
        raise BadImage(f"corrupt {what}")
    if values.dtype != dtype or values.ndim != 2:
        bits = np.dtype(dtype).itemsize * 8
        raise BadImage(f"{what} is {values.dtype} {values.shape}, not {bits}-bit single-channel")
    return values


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: palette and grey via PIL; alpha dropped (as open_clip's convert('RGB'));
    CMYK converted; 16- and 32-bit integer and float greys rescaled to 8 bits instead of clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
    return image.convert("RGB")


def resize_region(pixels: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The region `box` = (left, top, right, bottom) of uint8 [H, W, 3] pixels, resized to [size, size, 3].

    Bicubic (OpenCV); when the region is at least twice the output size it is first averaged down by the
    whole factor (an area filter), so downscaling does not alias.
    """
    left, top, right, bottom = box
    region = pixels[top:bottom, left:right]
    height, width = region.shape[:2]
    fx, fy = max(width // size, 1), max(height // size, 1)
    if fx > 1 or fy > 1:
        # Whole factors take OpenCV's exact box-averaging path; the few rows and columns past the last
        # whole block are dropped.
        region = region[: height - height % fy, : width - width % fx]
        # Factors of 1 and 2 need no area filter: bilinear sampling at half-pixel centres averages exactly the
        # two source pixels of each output (within one unit of rounding), while OpenCV's INTER_AREA takes a
        # generic path 4x slower whenever the two factors differ (the common 1 x 2 case of web photos).
        method = cv2.INTER_LINEAR if max(fx, fy) <= 2 else cv2.INTER_AREA
        region = cv2.resize(region, (region.shape[1] // fx, region.shape[0] // fy), interpolation=method)
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_CUBIC)


# torchvision's RandomResizedCrop aspect ratio range (width / height).
CROP_ASPECT_RATIOS = (3 / 4, 4 / 3)


def random_resized_crop(
    pixels: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = CROP_ASPECT_RATIOS,
    flip: bool = False,
) -> np.ndarray:
    """Inception-style crop of uint8 [H, W, 3] pixels: a box of `scale` of the area and `ratio` aspect,
    resized to size x size.

    Follows torchvision's RandomResizedCrop: 10 tries at a random box, then the largest centred box of
    an allowed aspect. With `flip`, mirrors left-right with probability 1/2.

    Returns:
      uint8 [size, size, 3].
    """
    height, width = pixels.shape[:2]
    area = width * height
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:
        aspect = width / height
        if aspect < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif aspect > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    out = resize_region(pixels, box, size)
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def crop_decode_target(image_size: int, crop_scale: tuple[float, float]) -> int:
    """The shorter side to decode a photo at for `random_resized_crop(., image_size, scale=crop_scale)`: the
    smallest crop allowed (crop_scale[0] of the area, at the most extreme aspect ratio) has a shorter side of
    at least sqrt(scale * that ratio) times the image's, and must still cover `image_size` pixels."""
    narrowest = min(CROP_ASPECT_RATIOS[0], 1 / CROP_ASPECT_RATIOS[1])
    return math.ceil(image_size / math.sqrt(narrowest * crop_scale[0]))


def center_crop(pixels: np.ndarray, size: int, ratio: float = 1.0) -> np.ndarray:
    """Evaluation view: the central square of uint8 [H, W, 3] pixels, `ratio` of the shorter side wide,
    resized to size x size (the same pixels as resizing the shorter side to `size / ratio`, then cutting
    the centre; ImageNet evaluation uses ratio 0.875).

    Returns:
      uint8 [size, size, 3].
    """
    height, width = pixels.shape[:2]
    side = max(1, round(min(width, height) * ratio))
    left, top = (width - side) // 2, (height - side) // 2
    return resize_region(pixels, (left, top, left + side, top + side), size)


def record_image(record: dict[str, Any]) -> np.ndarray:
    """A dense-task record's pixels: uint8 [H, W, 3], decoded when record["image"] holds a file's bytes (the
    real datasets), as they are when it holds an array (the synthetic scenes). Raises BadImage."""
    image = record["image"]
    return np.asarray(decode_image(image) if isinstance(image, bytes) else image, np.uint8)
