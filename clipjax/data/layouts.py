"""Recognising a dataset's on-disk layout, so that data pointed at with the wrong `kind` fails with a line
that names the kind (and the config argument) to use instead.

Only directory listings and a few file names are looked at (never image contents), and each listing is
cut short, so recognising an ImageNet-sized tree costs milliseconds.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
from collections.abc import Iterator

from clipjax.errors import ConfigError

IMAGE_FILE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
_LOOKED_AT = 64  # entries of a directory examined when looking for class folders or images

DESCRIPTIONS = {
    "tfds": "a TFDS data_dir (array_record shards)",
    "folder": "an ImageFolder tree (split/<class>/<image>)",
    "ade20k": "ADE20K (ADEChallengeData2016: images/ and annotations/)",
    "nyu": "NYUv2 in BTS's layout (nyu_train.txt / nyu_test.txt)",
    "coco": "COCO (annotations/instances_<split>.json)",
    "webdataset": "webdataset tar shards",
}
# The ImageNet finetuning configs pick the labelled kind with an argument, which also sets the split names.
CONFIG_ARGUMENTS = {"tfds": ":data=tfds", "folder": ":data=folder"}


def _entries(directory: str) -> list[str]:
    """Up to _LOOKED_AT names in `directory`, sorted ([] if it cannot be listed)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entry.name for entry in itertools.islice(entries, _LOOKED_AT))
    except OSError:
        return []


def _holds_images(directory: str) -> bool:
    return any(name.lower().endswith(IMAGE_FILE_EXTENSIONS) for name in _entries(directory))


def _is_image_folder(path: str) -> bool:
    """path/<class>/<image>, or path/<split>/<class>/<image>."""
    for child in _entries(path):
        child_path = os.path.join(path, child)
        if not os.path.isdir(child_path):
            continue
        if _holds_images(child_path):
            return True
        if any(_holds_images(os.path.join(child_path, grandchild)) for grandchild in _entries(child_path)[:4]):
            return True
    return False


def _is_tfds(path: str, depth: int = 2) -> bool:
    """array_record shards in `path` (a version directory), or in <name>/<version>/ or <version>/ under it;
    each level's listing cut short, so an ImageFolder's class directories are never listed whole."""
    names = _entries(path)
    if any(".array_record-" in name for name in names):
        return True
    return depth > 0 and any(
        _is_tfds(os.path.join(path, name), depth - 1) for name in names[:8] if os.path.isdir(os.path.join(path, name))
    )


def _is_ade20k(path: str) -> bool:
    base = os.path.join(path, "ADEChallengeData2016")
    base = base if os.path.isdir(base) else path
    return os.path.isdir(os.path.join(base, "images")) and os.path.isdir(os.path.join(base, "annotations"))


def _is_nyu(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in ("nyu_train.txt", "nyu_test.txt"))


def _is_coco(path: str) -> bool:
    return bool(glob.glob(os.path.join(path, "annotations", "instances_*.json")))


def _is_webdataset(path: str) -> bool:
    return path.endswith(".tar") or any(name.endswith(".tar") for name in _entries(path))


# Most specific first: an ADE20K or COCO root also holds images in sub-directories.
_RECOGNISERS = (
    ("tfds", _is_tfds),
    ("ade20k", _is_ade20k),
    ("coco", _is_coco),
    ("nyu", _is_nyu),
    ("webdataset", _is_webdataset),
    ("folder", _is_image_folder),
)


def recognise(path: str) -> str | None:
    """The data kind whose layout `path` has ("tfds", "folder", "ade20k", "nyu", "coco", "webdataset"), or
    None when it has none of them (or does not exist)."""
    if not path or "://" in path or not os.path.exists(path):
        return None
    for kind, matches in _RECOGNISERS:
        if matches(path):
            return kind
    return None


def advice(path: str, kind: str, key: str = "config.data.kind", accepted: tuple[str, ...] | None = None) -> str:
    """A clause naming the layout `path` has, when it is another kind's than `kind`, and, when the reader takes
    that kind (`accepted`; None: any), the setting to use, e.g. "; /d looks like an ImageFolder tree
    (split/<class>/<image>): use --config.data.kind=folder (the ImageNet finetuning configs: :data=folder)";
    the empty string otherwise."""
    found = recognise(path)
    if found is None or found == kind:
        return ""
    if accepted is not None and found not in accepted:
        return f"; {path} looks like {DESCRIPTIONS[found]}, which {key}={kind!r} does not read"
    fix = f"--{key}={found}"
    if key == "config.data.kind" and found in CONFIG_ARGUMENTS:
        fix += f" (the ImageNet finetuning configs: {CONFIG_ARGUMENTS[found]}, which also sets the split names)"
    return f"; {path} looks like {DESCRIPTIONS[found]}: use {fix}"


@contextlib.contextmanager
def naming_the_layout(
    path: str, kind: str, key: str = "config.data.kind", accepted: tuple[str, ...] | None = None
) -> Iterator[None]:
    """Re-raises a ConfigError from reading `path` as `kind` with `advice` appended, when `path` has another
    recognised layout; otherwise lets it through unchanged."""
    try:
        yield
    except ConfigError as error:
        clause = advice(path, kind, key, accepted)
        if not clause:
            raise
        raise ConfigError(f"{error}{clause}") from None
