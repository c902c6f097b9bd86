"""DataComp / DataCompDR samples to training pairs: caption policy, decoding, augmentation, tokens.

A sample that cannot be used becomes a skipped marker (`clipjax.data.skips`) instead of raising, so bad data among
millions of samples costs that sample only; the batcher drops it and counts the reason. Reasons:
  missing_image      no .jpg/.jpeg/.png/.webp member
  empty_member       a zero-byte image or caption member
  corrupt_image      the image does not decode (truncated, corrupt, not an image)
  missing_caption    no .txt member, or only whitespace in it
  bad_text           a caption that is not UTF-8, or a .syn.json that is not a JSON list of captions
  missing_synthetic  no joined .syn.json (its uid is absent from the synthetic shard), or an empty list
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from clipjax.data.images import BadImage, decode_image, random_resized_crop
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


def _synthetic_caption(sample: dict[str, Any], rng: np.random.Generator) -> str | dict[str, str]:
    raw = sample.get("syn.json")
    if raw is None:
        return skipped("missing_synthetic")
    try:
        options = json.loads(raw.decode("utf-8"))["syn_text"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return skipped("bad_text")
    if not isinstance(options, list):
        return skipped("bad_text")
    options = [text.strip() for text in options if isinstance(text, str) and text.strip()]
    if not options:
        return skipped("missing_synthetic")
    return options[int(rng.integers(len(options)))]  # one of the (usually 5) synthetic captions


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
) -> dict[str, Any]:
    """A training pair from a `WebDatasetSource` sample, or `{"__skipped__": reason}`.

    Returns:
      image           uint8 [image_size, image_size, 3]  random resized crop of the photo
      text            int32 [context_length]  the real caption ("real", "both"), a random synthetic one
                      ("synthetic"), or either ("mixed": synthetic with probability synthetic_prob)
      text_synthetic  int32 [context_length]  with captions="both"
    "mixed" and "both" need both kinds of caption; a sample lacking one is skipped.
    """
    encoded = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
    if encoded is None:
        return skipped("missing_image")
    if not encoded:
        return skipped("empty_member")
    texts: dict[str, str] = {}
    if captions in ("real", "mixed", "both"):
        texts["real"] = _real_caption(sample)
    if captions in ("synthetic", "mixed", "both"):
        texts["synthetic"] = _synthetic_caption(sample, rng)
    for text in texts.values():
        if isinstance(text, dict):
            return text
    try:
        image = decode_image(encoded, target=image_size)
    except BadImage:
        return skipped("corrupt_image")
    pixels = random_resized_crop(image, image_size, rng, scale=tuple(crop_scale), flip=flip)
    if captions == "both":
        chosen = {"text": texts["real"], "text_synthetic": texts["synthetic"]}
    elif captions == "mixed":
        chosen = {"text": texts["synthetic"] if rng.random() < synthetic_prob else texts["real"]}
    else:
        chosen = {"text": texts[captions]}
    return {"image": pixels, **{key: tokenize(text, context_length)[0] for key, text in chosen.items()}}
