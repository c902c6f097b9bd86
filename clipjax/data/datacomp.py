"""DataComp / DataCompDR samples to training pairs: caption policy, decoding, augmentation, tokens.

A sample that cannot be used becomes a skipped marker (`clipjax.data.skips`) instead of raising, so bad data among
millions of samples costs that sample only; the batcher drops it and counts the reason. Reasons:
  missing_image      no .jpg/.jpeg/.png/.webp member
  empty_member       a zero-byte image or caption member
  corrupt_image      the image does not decode (truncated, corrupt, not an image)
  missing_caption    no .txt member, or only whitespace in it
  bad_text           a caption that is not UTF-8, or a .syn.json that is not a JSON list of captions
  missing_synthetic  no joined .syn.json (its uid is absent from the synthetic shard), or an empty list
With distillation (a teacher width), also:
  missing_reinforcement  no joined .paug.json or .npz
  bad_reinforcement      one that does not parse, embeddings of another width or not finite, fewer embeddings
                         than augmentations or captions, or a stored crop outside the image
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from clipjax.data.images import BadImage, crop_decode_target, decode_image, encoded_size, random_resized_crop
from clipjax.data.reinforcements import BadReinforcement, parse_augmentations, parse_embeddings, replay
from clipjax.data.skips import skipped
from clipjax.data.webdataset import IMAGE_EXTENSIONS
from clipjax.tokenizer import tokenize


def _real_caption(sample: dict[str, Any]) -> str | dict[str, str]:
    raw = sample.get("txt")
    if raw is None:
        return skipped("missing_caption")
    if not raw:
        return skipped("empty_member")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return skipped("bad_text")
    return text or skipped("missing_caption")


def _synthetic_caption(sample: dict[str, Any], rng: np.random.Generator) -> tuple[str, int] | dict[str, str]:
    """One of the (usually 5) synthetic captions and its position in the stored list, or a skipped marker."""
    raw = sample.get("syn.json")
    if raw is None:
        return skipped("missing_synthetic")
    try:
        options = json.loads(raw.decode("utf-8"))["syn_text"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return skipped("bad_text")
    if not isinstance(options, list):
        return skipped("bad_text")
    # The position matters: the teacher's embedding of synthetic caption k is text_emb row 1 + k.
    options = [(text.strip(), k) for k, text in enumerate(options) if isinstance(text, str) and text.strip()]
    if not options:
        return skipped("missing_synthetic")
    return options[int(rng.integers(len(options)))]


def _reinforcement(sample: dict[str, Any], teacher_width: int) -> tuple[list, np.ndarray, np.ndarray] | dict:
    """(stored augmentations, teacher image_emb [n_aug, D], text_emb [1 + n_syn, D]) or a skipped marker."""
    if "paug.json" not in sample or "npz" not in sample:
        return skipped("missing_reinforcement")
    try:
        augmentations = parse_augmentations(sample["paug.json"])
        image_emb, text_emb = parse_embeddings(sample["npz"], teacher_width)
    except BadReinforcement:
        return skipped("bad_reinforcement")
    if len(image_emb) < len(augmentations):
        return skipped("bad_reinforcement")
    return augmentations, image_emb, text_emb


def webdataset_example(
    sample: dict[str, Any],
    rng: np.random.Generator,
    *,
    captions: str,
    synthetic_prob: float,
    image_size: int,
    context_length: int,
    crop_scale: tuple[float, float],
    flip: bool,
    teacher_width: int | None = None,
) -> dict[str, Any]:
    """A training pair from a `WebDatasetSource` sample, or `{"__skipped__": reason}`.

    Args:
      teacher_width: with distillation, the teacher's embedding width D: one of the sample's stored
        augmentations (DataCompDR's paug.json) is replayed instead of a random crop (crop_scale and flip are
        unused), and the teacher's embeddings of that augmentation and of the chosen captions come along.

    Returns:
      image           uint8 [image_size, image_size, 3]  random resized crop of the photo (or the replayed one)
      text            int32 [context_length]  the real caption ("real", "both"), a random synthetic one
                      ("synthetic"), or either ("mixed": synthetic with probability synthetic_prob)
      text_synthetic  int32 [context_length]  with captions="both"
      teacher_image, teacher_text (, teacher_text_synthetic)  float32 [D]  with a teacher width
    "mixed" and "both" need both kinds of caption; a sample lacking one is skipped.
    """
    encoded = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
    if encoded is None:
        return skipped("missing_image")
    if not encoded:
        return skipped("empty_member")
    # Each caption with its row in the teacher's text_emb: the real one is row 0, synthetic caption k row 1 + k.
    texts: dict[str, tuple[str, int]] = {}
    if captions in ("real", "mixed", "both"):
        real = _real_caption(sample)
        if isinstance(real, dict):
            return real
        texts["real"] = (real, 0)
    if captions in ("synthetic", "mixed", "both"):
        synthetic = _synthetic_caption(sample, rng)
        if isinstance(synthetic, dict):
            return synthetic
        texts["synthetic"] = (synthetic[0], 1 + synthetic[1])
    reinforcement = _reinforcement(sample, teacher_width) if teacher_width is not None else None
    if isinstance(reinforcement, dict):
        return reinforcement
    # A JPEG decodes at 1/2, 1/4 or 1/8 scale only while the crop still covers image_size pixels.
    try:
        if reinforcement is None:
            image = decode_image(encoded, target=crop_decode_target(image_size, crop_scale))
        else:
            augmentations, image_emb, _ = reinforcement
            index = int(rng.integers(len(augmentations)))
            original_size = encoded_size(encoded)
            left, top, right, bottom = augmentations[index].box
            shortest = max(1, min(right - left, bottom - top))
            image = decode_image(encoded, target=math.ceil(image_size * min(original_size) / shortest))
    except BadImage:
        return skipped("corrupt_image")
    teacher: dict[str, np.ndarray] = {}
    if reinforcement is None:
        pixels = random_resized_crop(image, image_size, rng, scale=tuple(crop_scale), flip=flip)
    else:
        try:
            pixels = replay(image, original_size, augmentations[index], image_size)
        except BadReinforcement:
            return skipped("bad_reinforcement")
        teacher["teacher_image"] = image_emb[index]
    if captions == "both":
        chosen = {"text": texts["real"], "text_synthetic": texts["synthetic"]}
    elif captions == "mixed":
        chosen = {"text": texts["synthetic"] if rng.random() < synthetic_prob else texts["real"]}
    else:
        chosen = {"text": texts[captions]}
    if reinforcement is not None:
        text_emb = reinforcement[2]
        if any(row >= len(text_emb) for _, row in chosen.values()):
            return skipped("bad_reinforcement")
        teacher.update({f"teacher_{key}": text_emb[row] for key, (_, row) in chosen.items()})
    tokens = {key: tokenize(text, context_length)[0] for key, (text, _) in chosen.items()}
    return {"image": pixels, **tokens, **teacher}
