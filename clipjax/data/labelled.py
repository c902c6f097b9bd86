"""Labelled image sources read without TensorFlow: TFDS array_record datasets and ImageFolder trees.

Both return records {"image": encoded bytes, "label": int, "name": str} and expose `classes` (the
class folder names, or TFDS's label names when its label file is present).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import grain

from clipjax.data.layouts import IMAGE_FILE_EXTENSIONS
from clipjax.data.tf_example import parse_example
from clipjax.errors import ConfigError


class TfdsSource:
    """One split of a TFDS dataset prepared as array_record shards.

    Args:
      path: the TFDS data_dir (holding `<name>/<version>/`), `<data_dir>/<name>`, or the version directory.
      name: the dataset name, e.g. "imagenet2012".
      split: e.g. "validation" or "train".
    """

    def __init__(self, path: str, name: str = "imagenet2012", split: str = "validation") -> None:
        directory = _version_dir(path, name)
        pattern = os.path.join(directory, f"{name}-{split}.array_record-*")
        files = sorted(glob.glob(pattern))
        if not files:
            raise ConfigError(f"no TFDS array_record files match {pattern}; is the dataset prepared there?")
        self._records = grain.sources.ArrayRecordDataSource(files)
        labels = os.path.join(directory, "label.labels.txt")
        self.classes: list[str] = []
        if os.path.exists(labels):
            with open(labels, encoding="utf-8") as f:
                self.classes = [line.strip() for line in f if line.strip()]
        self.description = f"{name} {split} ({len(files)} array_record shards in {directory})"

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        features = parse_example(self._records[index])
        name = features.get("file_name", [b""])[0]
        return {"image": features["image"][0], "label": int(features["label"][0]), "name": name.decode("utf-8")}


def _version_dir(path: str, name: str) -> str:
    """The directory holding the shards: `path` itself, or the newest version under it."""
    if glob.glob(os.path.join(path, "*.array_record-*")):
        return path
    base = os.path.join(path, name) if os.path.isdir(os.path.join(path, name)) else path
    versions = [d for d in os.listdir(base) if re.fullmatch(r"\d+\.\d+\.\d+", d)] if os.path.isdir(base) else []
    if not versions:
        raise ConfigError(f"{path} holds no TFDS dataset {name!r} (expected {name}/<version>/ inside it)")
    return os.path.join(base, max(versions, key=lambda v: tuple(int(x) for x in v.split("."))))


class ImageFolderSource:
    """`root/<class>/<image>`: classes are the sorted sub-directories (for ImageNet, the WordNet ids in
    the standard label order); images are sorted within each class."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise ConfigError(f"image folder {root} does not exist")
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self._files = [
            (os.path.join(root, name, file), label)
            for label, name in enumerate(self.classes)
            for file in sorted(os.listdir(os.path.join(root, name)))
            if file.lower().endswith(IMAGE_FILE_EXTENSIONS)
        ]
        if not self._files:
            raise ConfigError(f"image folder {root} holds no images in class sub-directories")
        self.description = f"{len(self._files)} images in {len(self.classes)} classes under {root}"

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self._files[index]
        with open(path, "rb") as f:
            return {"image": f.read(), "label": label, "name": path}
