"""Labelled datasets written as the real tools lay them out: TFDS array_record datasets, ImageFolder trees,
and small ADE20K and NYUv2 (BTS) releases made from real photos."""

import os

import cv2
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from clipjax.data.tf_example import serialize_example
from tests.photos import motorcycle, photo, raw_label

# (split, stem, photo, size of the stored image): originals of several sizes and orientations.
SMALL_ADE = (
    ("training", "ADE_train_00000001", "coffee", (96, 144)),
    ("training", "ADE_train_00000002", "chelsea", (80, 120)),
    ("training", "ADE_train_00000003", "astronaut", (128, 96)),
    ("validation", "ADE_val_00000001", "rocket", (72, 108)),
    ("validation", "ADE_val_00000002", "astronaut", (100, 75)),
)


def write_tfds(root, names, images, labels, split="validation"):
    """`root/imagenet2012/5.1.0/` as TFDS prepares it: 2 array_record shards of `split` and the label file."""
    directory = os.path.join(root, "imagenet2012", "5.1.0")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "label.labels.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    half = len(images) // 2
    for shard, (start, stop) in enumerate([(0, half), (half, len(images))]):
        path = os.path.join(directory, f"imagenet2012-{split}.array_record-0000{shard}-of-00002")
        writer = ArrayRecordWriter(path, "group_size:1")
        for i in range(start, stop):
            record = {"image": [images[i]], "label": [labels[i]], "file_name": [f"{split[:3]}_{i}.JPEG".encode()]}
            writer.write(serialize_example(record))
        writer.close()
    return directory


def write_folder(root, files):
    for relative, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
        with open(os.path.join(root, relative), "wb") as f:
            f.write(data)


def write_small_ade(root) -> str:
    """root/ADEChallengeData2016/{images,annotations}/{training,validation}/ of SMALL_ADE's photos and their
    hand-made labels (tests/photos.py), resized (labels by nearest neighbour). Returns str(root)."""
    base = os.path.join(root, "ADEChallengeData2016")
    for split, stem, name, (height, width) in SMALL_ADE:
        image = cv2.resize(photo(name), (width, height), interpolation=cv2.INTER_AREA)
        label = cv2.resize(raw_label(name), (width, height), interpolation=cv2.INTER_NEAREST)
        for kind, suffix, data in (("images", ".jpg", image[..., ::-1]), ("annotations", ".png", label)):
            os.makedirs(os.path.join(base, kind, split), exist_ok=True)
            assert cv2.imwrite(os.path.join(base, kind, split, stem + suffix), data)
    return str(root)


def write_small_nyu(root) -> str:
    """BTS's layout at a tenth of the size under root: 48 x 64 frames cut from the motorcycle pair (depth
    resized by nearest neighbour, so no depth is invented), 6 for training and 3 for testing, listed in
    nyu_train.txt / nyu_test.txt. Returns str(root)."""
    image, millimetres = motorcycle()
    lines = {"train": [], "test": []}
    for n in range(9):
        top, left = 40 * (n % 3), 60 * (n // 3)
        window = np.s_[top : top + 384, left : left + 512]
        rgb = cv2.resize(image[window], (64, 48), interpolation=cv2.INTER_AREA)
        depth = cv2.resize(millimetres[window], (64, 48), interpolation=cv2.INTER_NEAREST)
        split = "test" if n % 3 == 2 else "train"
        os.makedirs(os.path.join(root, split), exist_ok=True)
        cv2.imwrite(os.path.join(root, split, f"rgb_{n}.jpg"), rgb[..., ::-1])
        cv2.imwrite(os.path.join(root, split, f"sync_depth_{n}.png"), depth)
        lines[split].append(f"/{split}/rgb_{n}.jpg /{split}/sync_depth_{n}.png 518.8579")
    for split, rows in lines.items():
        with open(os.path.join(root, f"nyu_{split}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return str(root)
