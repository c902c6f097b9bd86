"""What the built-in scenes contain and how their captions describe it: the objects' vocabulary and the
three kinds of caption (clipjax/data/synthetic.py renders the scenes).

- quality (the DataCompDR analogue): every visible object with its size, colour and shape, the main
  object's place, the others' relations and occlusion to it; with detail="full" also every object's own
  place and how many objects (and of each repeated shape) there are.
- noisy (the DataComp analogue): some of the objects (the main one kept with probability keep[0], the others
  with keep[1]), colours sometimes wrong or left out, filler words, shuffled; optionally wrong shapes and,
  with probability other_scene, a caption of other objects entirely.
- bag of words: every visible object's size, colour and shape, and nothing about layout (an ablation between
  the two).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

CATEGORIES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon", "heart", "crescent")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 200, 210),
}
SIZES = {"small": 0.10, "medium": 0.16, "large": 0.24}  # radius as a fraction of the image side
CAPTION_DETAILS = ("relations", "full")
# Prompts for zero-shot classification over CATEGORIES (the label is the largest object's category).
ZEROSHOT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image with a {}.",
    "a {} in the scene.",
    "a drawing of a {}.",
)
_FILLER_WORDS = (
    "stock photo", "wallpaper", "hd", "free download", "vector", "clipart", "design", "background",
    "2019", "best price", "new", "sale", "pattern", "icon", "art print", "poster", "logo", "jpg", "image",
)  # fmt: skip
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    category: int
    color: str
    size: str
    center: tuple[float, float]  # (x, y) in pixels
    radius: float  # pixels
    depth: float  # metres


def location_phrase(x: float, y: float, side: int) -> str:
    """The place of pixel (x, y) on a 3 x 3 grid of the image, e.g. "in the top left"."""
    col, row = min(int(3 * x / side), 2), min(int(3 * y / side), 2)
    return [
        ["in the top left", "at the top", "in the top right"],
        ["on the left", "in the center", "on the right"],
        ["in the bottom left", "at the bottom", "in the bottom right"],
    ][row][col]


def _relation(obj: SceneObject, anchor: SceneObject) -> str:
    dx, dy = obj.center[0] - anchor.center[0], obj.center[1] - anchor.center[1]
    if abs(dx) >= abs(dy):
        return "to the right of" if dx > 0 else "to the left of"
    return "below" if dy > 0 else "above"


def describe(obj: SceneObject) -> str:
    """ "a large red circle"."""
    return f"{'an' if obj.size[0] in 'aeiou' else 'a'} {obj.size} {obj.color} {CATEGORIES[obj.category]}"


def _plural(name: str) -> str:
    return name + ("es" if name.endswith(("s", "x")) else "s")


def count_phrase(objects: list[SceneObject], shown: list[int]) -> str:
    """ "three objects, two of them circles": how many objects the caption names, and each repeated shape."""
    total = len(shown)
    phrase = f"{NUMBER_WORDS[total]} object{'s' if total != 1 else ''}"
    repeated = [(n, c) for c, n in sorted(Counter(objects[i].category for i in shown).items()) if n > 1]
    for n, category in repeated:
        phrase += f", {NUMBER_WORDS[n]} of them {_plural(CATEGORIES[category])}"
    return phrase


def quality_caption(
    objects: list[SceneObject], full_masks: list[np.ndarray], anchor: int, shown: list[int], side: int,
    detail: str = "relations",
) -> str:  # fmt: skip
    """The quality caption (module docstring) of the `shown` objects, `anchor` the main one."""
    main = objects[anchor]
    main_name = CATEGORIES[main.category]
    parts = [f"{describe(main)} {location_phrase(*main.center, side)}"]
    for i in shown:
        if i == anchor:
            continue
        obj = objects[i]
        place = f" {location_phrase(*obj.center, side)}," if detail == "full" else ""
        part = f"{describe(obj)}{place} {_relation(obj, main)} the {main_name}"
        if (full_masks[i] & full_masks[anchor]).any():  # occlusion is stated only where shapes overlap
            part += ", in front of it" if obj.depth < main.depth else ", partly hidden behind it"
        parts.append(part)
    if len(parts) > 1:
        parts[-1] = "and " + parts[-1]
    text = ", ".join(parts) + "."
    return f"{count_phrase(objects, shown)}: {text}" if detail == "full" else text


def noisy_caption(
    objects: list[SceneObject], anchor: int, shown: list[int], rng: np.random.Generator,
    keep: tuple[float, float] = (0.6, 0.4), wrong_shape: float = 0.0,
) -> str:  # fmt: skip
    """The noisy caption (module docstring). Draws from `rng` exactly as before the knobs existed when
    wrong_shape is 0, so default scenes stay the same."""
    words = []
    for i in shown:
        if rng.random() >= (keep[0] if i == anchor else keep[1]):
            continue
        obj = objects[i]
        color = obj.color if rng.random() < 0.7 else str(rng.choice([c for c in COLORS if c != obj.color]))
        name = CATEGORIES[obj.category]
        if wrong_shape > 0 and rng.random() < wrong_shape:
            name = str(rng.choice([c for c in CATEGORIES if c != name]))
        words.append(f"{color} {name}" if rng.random() < 0.7 else name)
    words += [str(w) for w in rng.choice(_FILLER_WORDS, size=int(rng.integers(1, 4)), replace=False)]
    rng.shuffle(words)
    return " ".join(words)


def bag_caption(objects: list[SceneObject], shown: list[int]) -> str:
    """The bag-of-words caption: each shown object's size, colour and shape, in a fixed order (by shape, colour,
    size) that says nothing about the layout."""
    words = sorted((CATEGORIES[objects[i].category], objects[i].color, objects[i].size) for i in shown)
    return " ".join(f"{size} {color} {name}" for name, color, size in words)
