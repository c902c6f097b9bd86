"""The built-in synthetic dataset: procedural scenes with quality and noisy captions and dense labels.

Each scene holds 1 to `max_objects` coloured shapes (10 categories, 8 colours, 3 sizes) at random
positions and depths over a noisy gradient background; nearer objects occlude farther ones. Scene i is a
pure function of (seed, split, i), so the dataset needs no storage and any worker can render any index.

Every scene comes with
  - a quality caption: every visible object with its size and colour, the largest object's place in the
    image, and each other object's spatial and occlusion relation to it (the DataCompDR analogue);
  - a noisy caption: alt-text-like, mentioning some objects, sometimes with the wrong colour, mixed with
    unrelated words (the DataComp analogue);
  - dense ground truth for downstream tasks: class label (category of the object with the largest
    visible area), semantic mask, instance boxes and masks, and a metric depth map.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clipjax.data.scene_captions import (  # noqa: F401 (CATEGORIES, COLORS, SIZES, ZEROSHOT_TEMPLATES: the scenes' API)
    CAPTION_DETAILS,
    CATEGORIES,
    COLORS,
    SIZES,
    ZEROSHOT_TEMPLATES,
    SceneObject,
    bag_caption,
    noisy_caption,
    quality_caption,
)

SPLITS = {"train": 0, "validation": 1}
_MIN_CAPTIONED_FRACTION = 0.3  # objects hidden more than this are not described in captions
_BACKGROUND_DEPTH = (9.5, 5.0)  # metres at the top and bottom rows: a floor receding upwards
_OBJECT_DEPTH = (1.5, 4.5)
# perspective=True: a pinhole camera over a ground plane. The horizon lies HORIZON of the image side down; the
# ground at depth z metres appears at row side * (HORIZON + (1 - HORIZON) * NEAREST / z), so the bottom row is
# NEAREST metres away; the ground beyond FAR (and the sky above the horizon) is FAR away. Each object stands
# on the ground at its depth (drawn in PERSPECTIVE_DEPTH), and its apparent radius is its size's radius at
# REFERENCE_DEPTH times REFERENCE_DEPTH / z: the image shows depth by height in the picture and by size.
HORIZON, NEAREST, FAR, REFERENCE_DEPTH = 0.3, 2.0, 10.0, 3.0
PERSPECTIVE_DEPTH = (NEAREST, 4.5)


def ground_row(depth: float, side: int) -> float:
    """The image row (pixels from the top) where the ground at `depth` metres appears (perspective=True)."""
    return side * (HORIZON + (1 - HORIZON) * NEAREST / depth)


def ground_depth(side: int) -> np.ndarray:
    """float32 [side]: the depth of each row's ground (FAR above the horizon), at the rows' pixel centres."""
    below = np.arange(side, dtype=np.float32) + 0.5 - HORIZON * side
    with np.errstate(divide="ignore"):
        depth = np.where(below > 0, (1 - HORIZON) * NEAREST * side / np.maximum(below, 1e-6), FAR)
    return np.minimum(depth, FAR).astype(np.float32)


def _regular_polygon(count: int, radii: tuple[float, ...], start_degrees: float) -> np.ndarray:
    angles = np.deg2rad(start_degrees + 360.0 * np.arange(count) / count)
    r = np.resize(np.asarray(radii), count)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


_POLYGONS = {
    "triangle": np.array([[0.0, -1.0], [0.95, 0.75], [-0.95, 0.75]]),
    "star": _regular_polygon(10, (1.0, 0.45), -90.0),
    "hexagon": _regular_polygon(6, (1.0,), 0.0),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule for points (u, v) against a closed polygon [K, 2]."""
    inside = np.zeros(u.shape, bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y0 == y1:
            continue
        crosses = (y0 > v) != (y1 > v)
        inside ^= crosses & (u < (x1 - x0) * (v - y0) / (y1 - y0) + x0)
    return inside


def shape_mask(category: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points lie in the unit-radius shape; u, v are offsets from the centre / radius (v down)."""
    rho = np.hypot(u, v)
    if category == "circle":
        return rho <= 1.0
    if category == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if category == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if category == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    if category == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if category == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.12
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    if category == "crescent":
        return (rho <= 1.0) & (np.hypot(u - 0.5, v) >= 0.8)
    return _inside_polygon(u, v, _POLYGONS[category])


class SyntheticScenes:
    """Random-access source of synthetic scenes (grain's RandomAccessDataSource protocol).

    `scenes[i]` returns a dict:
      image            uint8 [S, S, 3]
      caption_quality  str    detailed, correct caption
      caption_noisy    str    alt-text-like caption
      caption_bag      str    the objects' words without layout (clipjax/data/scene_captions.py)
      label            int32  category of the object with the largest visible area
      semantic         int32 [S, S]  0 background, 1 + category where an object is visible
      depth            float32 [S, S]  metres
      boxes            float32 [max_objects, 4]  (x0, y0, x1, y1) of each visible object's pixels, x1/y1
                       exclusive; rows past num_objects are zero
      classes          int32 [max_objects]  category per box, -1 past num_objects
      masks            bool [max_objects, S, S]  visible pixels per box
      num_objects      int32  objects with at least one visible pixel

    Options (the defaults give the scenes every published demo figure was measured on):
      perspective: objects stand on a ground plane seen in perspective, so their depth shows (module
        constants); otherwise depth is drawn independently of everything visible (only occlusion shows it).
      haze: colours fade towards the sky's with distance, by `haze` at FAR metres (0: none).
      caption_detail: "relations" (the main object's place, the others' relations to it) or "full" (also
        every object's own place and the counts).
      noise_keep: (main, other): how likely the noisy caption mentions the main object and each other one.
      noise_wrong_shape: how likely a mentioned object gets another shape's name.
      noise_other_scene: how likely the noisy caption describes another scene's objects instead.
    """

    # Scene i is drawn from a generator seeded by (seed, split, i) alone: any N scenes are a uniform random
    # sample, and a data subset takes scenes 0..N-1 (clipjax/data/subsets.py), whatever num_examples is.
    records_are_independent = True

    def __init__(
        self,
        num_examples: int,
        image_size: int = 64,
        max_objects: int = 4,
        split: str = "train",
        seed: int = 0,
        *,
        perspective: bool = False,
        haze: float = 0.0,
        caption_detail: str = "relations",
        noise_keep: tuple[float, float] = (0.6, 0.4),
        noise_wrong_shape: float = 0.0,
        noise_other_scene: float = 0.0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {tuple(SPLITS)}")
        if not 1 <= max_objects <= 8:
            raise ValueError(f"max_objects must be in 1..8, got {max_objects}")
        if caption_detail not in CAPTION_DETAILS:
            raise ValueError(f"caption_detail {caption_detail!r} is not one of {CAPTION_DETAILS}")
        self.num_examples = num_examples
        self.image_size = image_size
        self.max_objects = max_objects
        self.split = split
        self.seed = seed
        self.perspective, self.haze, self.caption_detail = perspective, haze, caption_detail
        self.noise_keep, self.noise_wrong_shape = tuple(noise_keep), noise_wrong_shape
        self.noise_other_scene = noise_other_scene

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(num_examples={self.num_examples}, image_size={self.image_size}, "
            f"max_objects={self.max_objects}, split={self.split!r}, seed={self.seed})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self._generator(index)
        objects = self._sample_objects(rng)
        full_masks = [self._full_mask(obj) for obj in objects]
        image, owner, depth = self._render(objects, full_masks, rng)
        return self._annotate(objects, full_masks, image, owner, depth, rng)

    def _generator(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} scenes")
        return np.random.default_rng([self.seed, SPLITS[self.split], int(index)])

    def scene_objects(self, index: int) -> list[SceneObject]:
        """The objects of scene `index` (category, colour, size, centre and radius in pixels, depth in metres),
        before occlusion: what its picture, labels and captions are made from."""
        return self._sample_objects(self._generator(index))

    def _full_mask(self, obj: SceneObject) -> np.ndarray:
        """bool [S, S]: the pixels the object covers, ignoring occlusion."""
        # Only the object's bounding square is evaluated: rendering is the data pipeline's main cost.
        (x0, x1), (y0, y1) = (
            (max(int(c - obj.radius) - 1, 0), min(int(c + obj.radius) + 2, self.image_size)) for c in obj.center
        )
        u = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - obj.center[0]) / obj.radius
        v = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - obj.center[1]) / obj.radius
        mask = np.zeros((self.image_size, self.image_size), bool)
        mask[y0:y1, x0:x1] = shape_mask(CATEGORIES[obj.category], *np.broadcast_arrays(u, v))
        return mask

    def _sample_objects(self, rng: np.random.Generator) -> list[SceneObject]:
        side = self.image_size
        count = int(rng.integers(1, self.max_objects + 1))
        # The first object is the biggest so that most scenes have a clear main subject, as photos do.
        sizes = ["large" if rng.random() < 0.75 else "medium"]
        sizes += [str(rng.choice(["small", "medium"] if sizes[0] == "large" else ["small"])) for _ in range(count - 1)]
        objects = []
        for size in sizes:
            if self.perspective:
                objects.append(self._object_on_the_ground(size, rng))
                continue
            radius = SIZES[size] * side * rng.uniform(0.9, 1.1)
            objects.append(
                SceneObject(
                    category=int(rng.integers(len(CATEGORIES))),
                    color=str(rng.choice(list(COLORS))),
                    size=size,
                    center=(float(rng.uniform(radius, side - radius)), float(rng.uniform(radius, side - radius))),
                    radius=float(radius),
                    depth=float(rng.uniform(*_OBJECT_DEPTH)),
                )
            )
        return objects

    def _object_on_the_ground(self, size: str, rng: np.random.Generator) -> SceneObject:
        """An object of `size` standing on the ground plane at a random depth (perspective=True)."""
        side = self.image_size
        category, color = int(rng.integers(len(CATEGORIES))), str(rng.choice(list(COLORS)))
        depth = float(rng.uniform(*PERSPECTIVE_DEPTH))
        radius = SIZES[size] * side * float(rng.uniform(0.9, 1.1)) * REFERENCE_DEPTH / depth
        x = float(rng.uniform(radius, side - radius))
        return SceneObject(category, color, size, (x, ground_row(depth, side) - radius), radius, depth)

    def _render(
        self, objects: list[SceneObject], full_masks: list[np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        side = self.image_size
        rows = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
        top, bottom = rng.uniform(25, 120, size=(2, 3)).astype(np.float32)
        if self.perspective:  # sky above the horizon; the ground below, lighter towards the camera
            ground = np.clip((rows - HORIZON) / (1 - HORIZON), 0, 1)
            colours = np.where(rows < HORIZON, top, (top + bottom) / 2 + (bottom - top) / 2 * ground)
            image = np.broadcast_to(colours, (side, side, 3)).copy()
            depth = np.broadcast_to(ground_depth(side)[:, None], (side, side)).copy()
        else:
            image = np.broadcast_to(top + (bottom - top) * rows, (side, side, 3)).copy()
            near, far = _BACKGROUND_DEPTH[1], _BACKGROUND_DEPTH[0]
            depth = np.broadcast_to(far + (near - far) * rows[:, :, 0], (side, side)).copy()
        owner = np.full((side, side), -1, np.int32)
        for i in sorted(range(len(objects)), key=lambda k: -objects[k].depth):  # far to near
            obj, mask = objects[i], full_masks[i]
            ys = np.nonzero(mask)[0].astype(np.float32) + 0.5
            shade = 1.0 - 0.12 * np.clip((ys - obj.center[1]) / obj.radius, -1, 1)  # lit from above
            color = np.asarray(COLORS[obj.color], np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
            if self.haze:  # aerial perspective: farther objects take on the sky's colour
                fade = self.haze * min(max((obj.depth - NEAREST) / (FAR - NEAREST), 0.0), 1.0)
                color = (1 - fade) * color + fade * top
            image[mask] = color * shade[:, None]
            owner[mask] = i
            depth[mask] = obj.depth
        image += rng.standard_normal(image.shape, dtype=np.float32) * 4.0
        return np.clip(image, 0, 255).astype(np.uint8), owner, depth

    def _annotate(
        self,
        objects: list[SceneObject],
        full_masks: list[np.ndarray],
        image: np.ndarray,
        owner: np.ndarray,
        depth: np.ndarray,
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        side, cap = self.image_size, self.max_objects
        visible = [owner == i for i in range(len(objects))]
        areas = np.array([m.sum() for m in visible])
        full_areas = np.array([m.sum() for m in full_masks])
        anchor = int(np.argmax(areas))
        shown = [i for i in range(len(objects)) if areas[i] >= _MIN_CAPTIONED_FRACTION * max(full_areas[i], 1)]
        boxes = np.zeros((cap, 4), np.float32)
        classes = np.full((cap,), -1, np.int32)
        masks = np.zeros((cap, side, side), bool)
        present = [i for i in range(len(objects)) if areas[i] > 0]
        for row, i in enumerate(present):
            ys, xs = np.nonzero(visible[i])
            boxes[row] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            classes[row] = objects[i].category
            masks[row] = visible[i]
        semantic = np.where(owner >= 0, np.array([o.category + 1 for o in objects] + [0])[owner], 0)
        # The noisy caption may describe another scene's objects (drawn here: only when the knob is on, so
        # that the default scenes draw exactly what they did before it existed).
        noisy_objects, noisy_anchor, noisy_shown = objects, anchor, shown
        if self.noise_other_scene > 0 and rng.random() < self.noise_other_scene:
            noisy_objects = self._sample_objects(rng)
            noisy_anchor, noisy_shown = 0, list(range(len(noisy_objects)))  # the first is the biggest
        noisy = noisy_caption(noisy_objects, noisy_anchor, noisy_shown, rng, self.noise_keep, self.noise_wrong_shape)
        return {
            "image": image,
            "caption_quality": quality_caption(objects, full_masks, anchor, shown, side, self.caption_detail),
            "caption_noisy": noisy,
            "caption_bag": bag_caption(objects, shown),
            "label": np.int32(objects[anchor].category),
            "semantic": semantic.astype(np.int32),
            "depth": depth,
            "boxes": boxes,
            "classes": classes,
            "masks": masks,
            "num_objects": np.int32(len(present)),
        }


# config.data.synthetic's keys that are SyntheticScenes options (the rest: num_examples, max_objects).
SCENE_OPTIONS = ("perspective", "haze", "caption_detail", "noise_keep", "noise_wrong_shape", "noise_other_scene")


def configured_scenes(config: Any, count: int, split: str, scenes_class: type = SyntheticScenes) -> Any:
    """`count` scenes of `split` ("train" or "validation") as `config` sets them: config.model.image_size pixels,
    up to config.data.synthetic.max_objects objects and its scene options, seeded by config.seed.

    Args:
      scenes_class: SyntheticScenes or a subclass adding a task's labels.
    """
    options = config.data.synthetic
    return scenes_class(
        count,
        image_size=config.model.image_size,
        max_objects=options.max_objects,
        split=split,
        seed=config.seed,
        **{key: options[key] for key in SCENE_OPTIONS},
    )


def finetuning_scenes(config: Any, split: str, eval_examples: int, scenes_class: type = SyntheticScenes) -> Any:
    """The synthetic scenes a finetuning task reads for `split` ("train" or "eval"), as `config` sets them
    (`configured_scenes`): config.data.synthetic.num_examples "train" scenes, or config.finetune.eval_examples
    "validation" scenes (`eval_examples` when that is None)."""
    train = split == "train"
    count = config.data.synthetic.num_examples if train else config.finetune.eval_examples
    return configured_scenes(config, count or eval_examples, "train" if train else "validation", scenes_class)
