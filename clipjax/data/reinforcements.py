"""DataCompDR's reinforcements of one sample: a stored image augmentation replayed, and the teacher embeddings
that match it and the chosen caption (what MobileCLIP's distillation needs).

The members, as MobileCLIP's data generation writes them (DataCompDR-12M keeps 30 augmentations per image,
DataCompDR-1B 10):
  {key}.paug.json  {"param_aug": [augmentation, ...]}; each augmentation is [[top, left, height, width], ops]:
                   torchvision's RandomResizedCrop box in the original image's pixels, then RandAugment's ops
                   as [[op index, signed magnitude], ...] (null where RandAugment was skipped), op indices
                   numbered as `clipjax.data.augment.TORCHVISION_RAND_AUGMENT_OPS`.
  {key}.npz        image_emb [n_aug, D]: the teacher's embedding of augmentation a, in param_aug's order;
                   text_emb [1 + n_syn, D]: of the real caption (row 0), then of each synthetic caption.
D is the teacher ensemble's width (two ViT-L/14s, 2 x 768). Embeddings may be stored in any float dtype.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from clipjax.data.augment import TORCHVISION_RAND_AUGMENT_OPS, replay_rand_augment
from clipjax.data.images import resize_region
from clipjax.data.npz import read_npz


class BadReinforcement(ValueError):
    """A paug.json or npz member that cannot be read, or that disagrees with itself or the image."""


@dataclasses.dataclass(frozen=True)
class StoredAugmentation:
    """One stored augmentation: a crop box (left, top, right, bottom) in the original image's pixels and the
    RandAugment ops (op index, signed magnitude) applied after the crop was resized."""

    box: tuple[int, int, int, int]
    ops: tuple[tuple[int, float], ...]


def parse_augmentations(raw: bytes) -> list[StoredAugmentation]:
    """The augmentations of a `{key}.paug.json` member, in their stored order.

    Raises:
      BadReinforcement: not JSON, no "param_aug" list, or an entry not [[top, left, height, width], ops].
    """
    try:
        entries = json.loads(raw.decode("utf-8"))["param_aug"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise BadReinforcement(f"paug.json has no param_aug list ({type(e).__name__})") from None
    if not isinstance(entries, list) or not entries:
        raise BadReinforcement("paug.json's param_aug is not a non-empty list")
    return [_augmentation(entry) for entry in entries]


def _augmentation(entry: object) -> StoredAugmentation:
    try:
        crop, ops = entry
        top, left, height, width = (int(v) for v in crop)
        ops = tuple((int(index), float(magnitude)) for index, magnitude in (ops or ()))
    except (TypeError, ValueError):
        raise BadReinforcement(f"paug.json entry {entry!r} is not [[top, left, height, width], ops]") from None
    if height < 1 or width < 1 or top < 0 or left < 0:
        raise BadReinforcement(f"paug.json crop {list(crop)} is not a box inside an image")
    if any(not 0 <= index < len(TORCHVISION_RAND_AUGMENT_OPS) for index, _ in ops):
        raise BadReinforcement(f"paug.json op indices {[index for index, _ in ops]} are not RandAugment ops")
    return StoredAugmentation((left, top, left + width, top + height), ops)


def parse_embeddings(raw: bytes, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's embeddings of a `{key}.npz` member.

    Args:
      raw: the member's bytes.
      width: D, the teacher's width the run expects.

    Returns:
      (image_emb float32 [n_aug, D], text_emb float32 [1 + n_syn, D]).

    Raises:
      BadReinforcement: not an npz, an array missing, of another width, or not finite.
    """
    try:
        arrays = read_npz(raw)
        image_emb = np.asarray(arrays["image_emb"], np.float32)
        text_emb = np.asarray(arrays["text_emb"], np.float32)
    except (ValueError, KeyError, TypeError) as e:
        raise BadReinforcement(f"npz does not hold image_emb and text_emb ({type(e).__name__})") from None
    for name, array in (("image_emb", image_emb), ("text_emb", text_emb)):
        if array.ndim != 2 or array.shape[1] != width or len(array) == 0:
            raise BadReinforcement(f"npz {name} has shape {list(array.shape)}, expected [n, {width}]")
        if not np.isfinite(array).all():
            raise BadReinforcement(f"npz {name} is not finite")
    return image_emb, text_emb


def replay(
    pixels: np.ndarray, original_size: tuple[int, int], augmentation: StoredAugmentation, size: int
) -> np.ndarray:
    """The stored augmentation of an image: its crop resized to size x size, then its RandAugment ops.

    Args:
      pixels: uint8 [h, w, 3], the decoded image, possibly decoded at a reduced scale.
      original_size: (width, height) of the encoded image, the frame the stored box is in.
      augmentation: what to replay.
      size: the output side.

    Returns:
      uint8 [size, size, 3].

    Raises:
      BadReinforcement: the box does not fit in the image (the stored augmentation belongs to another image).
    """
    width, height = original_size
    left, top, right, bottom = augmentation.box
    if right > width or bottom > height:
        raise BadReinforcement(f"stored crop {augmentation.box} does not fit a {width} x {height} image")
    # A JPEG decoded at 1/2, 1/4 or 1/8 scale: the box scales with it.
    sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
    if (sx, sy) != (1.0, 1.0):
        left, top = int(left * sx), int(top * sy)
        right, bottom = max(round(right * sx), left + 1), max(round(bottom * sy), top + 1)
    return replay_rand_augment(resize_region(pixels, (left, top, right, bottom), size), augmentation.ops)
