"""Writes small DataComp / DataCompDR webdataset shards from scikit-image's CC0 photos, bad samples included.

Layouts (see shared REFERENCE.md): an image shard holds `{key}.jpg|png|webp`, `{key}.txt`, `{key}.json`
({"uid": ..., ...}); the DataCompDR shard of the same file name holds `{key}.syn.json` ({"syn_text": [5]}),
`{key}.paug.json` ({"param_aug": [[[top, left, height, width], RandAugment ops], ...]}), `{key}.npz` (the
teacher's image_emb [AUGMENTATIONS, TEACHER_WIDTH], text_emb [1 + 5, TEACHER_WIDTH]) and `{key}.json`
({"uid", "sha256"}), in its own order, joined by uid.

`write_datasets(root)` returns a `Written` record saying which sample should be skipped for which reason
under each caption policy, so tests compare the pipeline's counts with what was written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile

import numpy as np
import skimage.data
from PIL import Image

SYNTHETIC_CAPTIONS = 5
AUGMENTATIONS = 3  # stored augmentations per image (DataCompDR-12M keeps 30)
TEACHER_WIDTH = 8  # two members of 4 (DataCompDR: two of 768)
# torchvision RandAugment ops as DataCompDR stores them, [op index, signed magnitude], at its magnitude 9 of 31.
STORED_OPS = [
    [0, 0.0],
    [1, 0.09],
    [2, -0.09],
    [3, 4.0],
    [4, -4.0],
    [6, 0.27],
    [7, -0.27],
    [8, 0.27],
    [9, 0.27],
    [10, 7.0],
    [11, 178.5],
    [12, 0.0],
    [13, 0.0],
]


def photos() -> dict[str, Image.Image]:
    """Real photos in every mode a web crawl contains: RGB, L, LA, P (with transparency), RGBA, CMYK, 16-bit."""
    rgb = Image.fromarray(skimage.data.astronaut())
    camera = Image.fromarray(skimage.data.camera())
    return {
        "astronaut": rgb,
        "chelsea": Image.fromarray(skimage.data.chelsea()),
        "coffee": Image.fromarray(skimage.data.coffee()),
        "camera": camera,
        "logo": Image.fromarray(skimage.data.logo()),  # RGBA
        "coins_palette": Image.fromarray(skimage.data.coins()).convert("RGB").quantize(64),
        "camera_alpha": Image.merge("LA", [camera, Image.fromarray(skimage.data.moon())]),
        "rocket_cmyk": Image.fromarray(skimage.data.rocket()).convert("CMYK"),
        "moon_16bit": Image.fromarray(skimage.data.moon().astype(np.uint16) * 257),
        "hubble": Image.fromarray(skimage.data.hubble_deep_field()),
        "tissue": Image.fromarray(skimage.data.immunohistochemistry()),
        "colorwheel": Image.fromarray(skimage.data.colorwheel()),
    }


def encode(image: Image.Image, fmt: str) -> bytes:
    """The image's file bytes in `fmt` ("jpg", "png" or "webp")."""
    out = io.BytesIO()
    if fmt == "png" and image.mode == "P":
        image.info["transparency"] = 0  # a palette PNG with a transparent entry, as logos often are
    image.save(
        out, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt], **({"quality": 90} if fmt == "jpg" else {})
    )
    return out.getvalue()


def write_tar(path: str, members: list[tuple[str, bytes]], cut: int | None = None) -> None:
    """A tar of `members` (name, data); with `cut`, the file is truncated to its first `cut` bytes."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    if cut is not None:
        with open(path, "r+b") as f:
            f.truncate(cut)


@dataclasses.dataclass
class Sample:
    key: str
    uid: str
    members: dict[str, bytes]  # extension -> data, in the image shard
    caption: str | None  # the real caption when it is usable
    synthetic: list[str] | None  # the synthetic captions when the DataCompDR shard has them
    bad: dict[str, str]  # caption policy -> skip reason ("real", "synthetic", "mixed", "both")
    photo: Image.Image | None = None  # the source image, for usable samples
    distill_bad: str | None = None  # the skip reason with distillation, where the captions are usable
    # What the DataCompDR record stores: paug.json's param_aug, image_emb, text_emb (None: no record).
    reinforcement: tuple[list, np.ndarray, np.ndarray] | None = None


@dataclasses.dataclass
class Written:
    image_pattern: str  # brace pattern of the DataComp shards
    synthetic_pattern: str  # brace pattern of the DataCompDR shards
    samples: list[Sample]  # every sample the indexes should hold, in shard order
    lost: list[str]  # keys left out because their shard is truncated
    orphan_uids: list[str]  # DataCompDR records with no image

    def expected_skips(self, captions: str, distill: bool = False) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sample in self.samples:
            reason = sample.bad.get(captions) or (sample.distill_bad if distill else None)
            if reason:
                counts[reason] = counts.get(reason, 0) + 1
        return counts


def _synthetic_texts(name: str) -> list[str]:
    return [f"a detailed synthetic description number {i} of the {name.replace('_', ' ')} photo" for i in range(5)]


def _good(key: str, name: str, image: Image.Image, fmt: str) -> Sample:
    caption = f"web alt text for {name.replace('_', ' ')}"
    members = {fmt: encode(image, fmt), "txt": caption.encode(), "json": b""}
    return Sample(key, f"uid-{key}", members, caption, _synthetic_texts(name), {}, image)


def _bad(key: str, members: dict[str, bytes], **bad: str) -> Sample:
    """A sample unusable under the policies named in `bad` (policy=reason); usable elsewhere."""
    caption = members["txt"].decode("utf-8", "replace") if members.get("txt") else None
    return Sample(key, f"uid-{key}", members, caption, _synthetic_texts(key), bad)


def _all(reason: str) -> dict[str, str]:
    return {policy: reason for policy in ("real", "synthetic", "mixed", "both")}


def _reinforcement(sample: Sample | None, rng: np.random.Generator) -> tuple[list, np.ndarray, np.ndarray]:
    """param_aug (crops inside the photo, torchvision RandAugment ops, one augmentation without them) and the
    teacher's embeddings: image_emb float16 [AUGMENTATIONS, TEACHER_WIDTH], text_emb float32 [6, TEACHER_WIDTH]."""
    width, height = sample.photo.size if sample is not None and sample.photo is not None else (8, 8)
    params = []
    for a in range(AUGMENTATIONS):
        h, w = int(rng.integers(height // 2, height + 1)), int(rng.integers(width // 2, width + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        if sample is not None and sample.key == "s1/002":
            top = height  # below the image: these augmentations belong to another photo
        ops = [[5, float(rng.choice([-9.0, 9.0]))], STORED_OPS[int(rng.integers(len(STORED_OPS)))]] if a else None
        params.append([[top, left, h, w], ops])
    image_emb = rng.normal(size=(AUGMENTATIONS, TEACHER_WIDTH)).astype(np.float16)
    return params, image_emb, rng.normal(size=(1 + SYNTHETIC_CAPTIONS, TEACHER_WIDTH))


def write_datasets(root: str) -> Written:
    """Two DataComp shards (the second truncated inside its last sample) and their DataCompDR partners."""
    p = photos()
    jpeg = encode(p["chelsea"], "jpg")
    real_only = ("real", "mixed", "both")  # policies that read the real caption
    shard0 = [
        _good("s0/000", "astronaut", p["astronaut"], "jpg"),
        _good("s0/001", "chelsea", p["chelsea"], "png"),
        _good("s0/002", "coffee", p["coffee"], "webp"),
        _good("s0/003", "camera", p["camera"], "jpg"),
        _good("s0/004", "logo", p["logo"], "png"),
        _good("s0/005", "coins_palette", p["coins_palette"], "png"),
        _good("s0/006", "camera_alpha", p["camera_alpha"], "png"),
        _good("s0/007", "rocket_cmyk", p["rocket_cmyk"], "jpg"),
        _good("s0/008", "moon_16bit", p["moon_16bit"], "png"),
        _bad(
            "s0/009", {"jpg": jpeg[: len(jpeg) // 2], "txt": b"a cat, cut short", "json": b""}, **_all("corrupt_image")
        ),
        _bad("s0/010", {"jpg": b"", "txt": b"an empty file", "json": b""}, **_all("empty_member")),
        _bad("s0/011", {"jpg": jpeg, "json": b""}, **{k: "missing_caption" for k in real_only}),
        _bad("s0/012", {"jpg": jpeg, "txt": b"  \n", "json": b""}, **{k: "missing_caption" for k in real_only}),
        _bad("s0/013", {"jpg": jpeg, "txt": b"caf\xe9 \xff\xfe", "json": b""}, **{k: "bad_text" for k in real_only}),
        _bad("s0/014", {"txt": b"a caption without its image", "json": b""}, **_all("missing_image")),
        _bad("s0/015", {"jpg": b"not an image at all", "txt": b"garbage bytes", "json": b""}, **_all("corrupt_image")),
    ]
    # No synthetic record for s0/003: its image has only the real caption.
    shard0[3].synthetic = None
    shard0[3].bad = {k: "missing_synthetic" for k in ("synthetic", "mixed", "both")}
    shard0[3].distill_bad = "missing_reinforcement"
    # DataCompDR records that fail only under distillation: no npz, embeddings of another width, and (in
    # shard1) a stored crop outside the image.
    shard0[8].distill_bad = "missing_reinforcement"
    shard0[6].distill_bad = "bad_reinforcement"
    shard1 = [
        _good("s1/000", "hubble", p["hubble"], "jpg"),
        _good("s1/001", "tissue", p["tissue"], "jpg"),
        _good("s1/002", "colorwheel", p["colorwheel"], "webp"),
        _good("s1/003", "chelsea_again", p["chelsea"], "jpg"),  # its image is cut off by the truncation
    ]
    shard1[2].distill_bad = "bad_reinforcement"
    image_dir, synthetic_dir = os.path.join(root, "datacomp"), os.path.join(root, "datacompdr")
    os.makedirs(image_dir)
    os.makedirs(synthetic_dir)
    rng = np.random.default_rng(0)
    for number, samples in enumerate((shard0, shard1)):
        members = []
        for sample in samples:
            sample.members["json"] = json.dumps(
                {"uid": sample.uid, "url": f"https://example.com/{sample.key}"}
            ).encode()
            # webdataset writers put the metadata first and the image last
            for extension in ("json", "txt", "jpg", "png", "webp"):
                if extension in sample.members:
                    members.append((f"{sample.key}.{extension}", sample.members[extension]))
        name = f"{number:05d}.tar"
        cut = None
        if number == 1:  # truncated in the middle of the last sample's image
            whole = os.path.join(image_dir, name)
            write_tar(whole, members)
            with tarfile.open(whole) as archive:
                last = archive.getmembers()[-1]
            cut = last.offset_data + last.size // 2
        write_tar(os.path.join(image_dir, name), members, cut)
        # The DataCompDR shard: same file name, its own keys and order, one record without an image.
        records = [s for s in samples if s.synthetic is not None]
        records = [records[i] for i in rng.permutation(len(records))]
        dr_members = []
        for n, sample in enumerate(records + [None]):
            uid = sample.uid if sample else f"uid-orphan-{number}"
            texts = sample.synthetic if sample else _synthetic_texts("orphan")
            key = f"dr{number}/{n:04d}"
            dr_members += [
                (f"{key}.json", json.dumps({"uid": uid, "sha256": hashlib.sha256(uid.encode()).hexdigest()}).encode()),
                (f"{key}.syn.json", json.dumps({"syn_text": texts}).encode()),
            ]
            params, image_emb, text_emb = _reinforcement(sample, rng)
            width = TEACHER_WIDTH - 2 if sample and sample.key == "s0/006" else TEACHER_WIDTH
            npz = io.BytesIO()
            np.savez(npz, image_emb=image_emb[:, :width], text_emb=text_emb[:, :width])
            dr_members.append((f"{key}.paug.json", json.dumps({"param_aug": params}).encode()))
            if not (sample and sample.key == "s0/008"):
                dr_members.append((f"{key}.npz", npz.getvalue()))
            if sample:
                sample.reinforcement = (params, image_emb.astype(np.float32), text_emb.astype(np.float32))
        write_tar(os.path.join(synthetic_dir, name), dr_members)
    lost = [shard1[-1].key]
    return Written(
        image_pattern=os.path.join(image_dir, "{00000..00001}.tar"),
        synthetic_pattern=os.path.join(synthetic_dir, "*.tar"),
        samples=shard0 + shard1[:-1],
        lost=lost,
        orphan_uids=["uid-orphan-0", "uid-orphan-1"],
    )
