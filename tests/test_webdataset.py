"""webdataset shards in the DataComp / DataCompDR layouts: indexing, caching, random access, the uid join,
and each kind of bad sample skipped and counted under each caption policy."""

import collections
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf
from torchvision.transforms.autoaugment import _apply_op

from clipjax.data import tar_index
from clipjax.data.augment import TORCHVISION_RAND_AUGMENT_OPS
from clipjax.data.batching import host_batches
from clipjax.data.datacomp import webdataset_example
from clipjax.data.images import decode_image
from clipjax.data.webdataset import WebDatasetSource, expand_shards
from clipjax.tokenizer import tokenize
from tests.shards import AUGMENTATIONS, TEACHER_WIDTH, write_datasets


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_datasets(str(tmp_path_factory.mktemp("shards")))


@pytest.fixture(scope="module")
def source(written):
    logs = []
    src = WebDatasetSource(
        expand_shards(written.image_pattern), expand_shards(written.synthetic_pattern), log=logs.append
    )
    src.logs = logs
    return src


def transform(captions, teacher_width=None, image_size=24):
    def apply(sample, rng):
        return webdataset_example(
            sample,
            rng,
            captions=captions,
            synthetic_prob=0.5,
            image_size=image_size,
            context_length=16,
            crop_scale=(0.9, 1.0),
            flip=False,
            teacher_width=teacher_width,
        )

    return apply


def test_expand_shards_understands_brace_ranges_lists_globs_and_joins(tmp_path):
    for name in ("a-000.tar", "a-001.tar", "a-002.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"")
    root = str(tmp_path)
    assert expand_shards(f"{root}/a-{{000..002}}.tar") == [f"{root}/a-00{i}.tar" for i in range(3)]
    assert expand_shards(f"{root}/{{b,a-001}}.tar") == [f"{root}/b.tar", f"{root}/a-001.tar"]
    assert expand_shards(f"{root}/a-*.tar::{root}/b.tar") == [f"{root}/a-00{i}.tar" for i in range(3)] + [
        f"{root}/b.tar"
    ]


def test_index_groups_members_by_key_and_leaves_out_the_truncated_sample(written, source):
    assert len(source) == len(written.samples)
    for i, sample in enumerate(written.samples):
        record = source[i]
        assert record["__key__"] == sample.key
        for extension, data in sample.members.items():
            assert record[extension] == data  # byte-exact members, read by offset
    assert not any(record_key in {source[i]["__key__"] for i in range(len(source))} for record_key in written.lost)
    assert any("00001.tar is truncated" in line and "3 complete samples" in line for line in source.logs)


@pytest.mark.parametrize(
    "damage, kept",
    [
        ("none", ["a", "b", "c"]),
        ("cut inside the last header", ["a", "b"]),  # c's txt header is cut: c may have lost members
        ("cut at a header boundary", ["a", "b"]),  # no end-of-archive zeros: c's next member may be gone
        ("cut inside a member", ["a", "b"]),  # c's txt is cut
        ("damaged header in the middle", ["a"]),  # b's txt header: everything from there on is unreadable
    ],
)
def test_a_cut_or_damaged_tar_is_marked_truncated_and_its_last_sample_left_out(tmp_path, damage, kept):
    """tarfile stops without an error at a bad header past the first one; the index must notice."""
    from tests.shards import write_tar

    path = str(tmp_path / "shard.tar")
    members = [
        (f"{key}.{extension}", f"{key} {extension}".encode() * 100) for key in "abc" for extension in ("jpg", "txt")
    ]
    write_tar(path, members)
    with tarfile.open(path) as archive:
        headers = [info.offset for info in archive]  # one per member, in order
    with open(path, "r+b") as f:
        if damage == "cut inside the last header":
            f.truncate(headers[-1] + 100)
        elif damage == "cut at a header boundary":
            f.truncate(headers[-1])
        elif damage == "cut inside a member":
            f.truncate(headers[-1] + 512 + 10)
        elif damage == "damaged header in the middle":
            f.seek(headers[3] + 20)  # inside the name field: the checksum no longer matches
            f.write(b"\xff")
    index = tar_index.scan_shard(path)
    assert list(index.keys) == kept
    assert index.truncated == (damage != "none")
    with open(path, "rb") as f:
        data = f.read()
    for i, key in enumerate(kept):  # what is kept is read exactly
        offset, size = index.members["txt"][i]
        assert data[offset : offset + size] == f"{key} txt".encode() * 100


def test_synthetic_captions_are_joined_by_uid_not_by_position(written, source):
    import json

    for i, sample in enumerate(written.samples):
        record = source[i]
        if sample.synthetic is None:
            assert "syn.json" not in record
        else:
            assert json.loads(record["syn.json"])["syn_text"] == sample.synthetic
            assert "paug.json" in record
            assert ("npz" in record) == (sample.key != "s0/008")  # the one record written without it
    # Two orphan DataCompDR records plus the one whose image was lost to the truncation.
    assert source.missing_images == len(written.orphan_uids) + len(written.lost)


def test_a_sample_is_read_with_positioned_reads_of_its_members_only(written, source, monkeypatch):
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, size, offset: reads.append(size) or real_pread(fd, size, offset))
    sample = written.samples[0]
    source[0]
    image_side = sum(len(data) for data in sample.members.values())
    synthetic_side = sum(reads) - image_side
    assert sorted(reads)[-1] == len(sample.members["jpg"]) and 0 < synthetic_side < 20_000


def test_index_is_cached_beside_the_shard_and_rebuilt_when_the_shard_changes(written, tmp_path, monkeypatch):
    shard = str(tmp_path / "00000.tar")
    shutil.copy(expand_shards(written.image_pattern)[0], shard)
    first = tar_index.load_or_build(shard, str(tmp_path / "cache"), read_uids=True)
    assert os.path.exists(shard + ".clipjax-index.npz")
    scans = []
    real_scan = tar_index.scan_shard
    monkeypatch.setattr(tar_index, "scan_shard", lambda *a: scans.append(a) or real_scan(*a))
    again = tar_index.load_or_build(shard, str(tmp_path / "cache"), read_uids=True)
    assert scans == [] and list(again.keys) == list(first.keys) and list(again.uids) == list(first.uids)
    os.utime(shard, ns=(0, 0))  # a replaced shard: new modification time
    tar_index.load_or_build(shard, str(tmp_path / "cache"), read_uids=True)
    assert len(scans) == 1


def test_index_goes_to_the_cache_directory_when_the_shard_directory_is_not_writable(written, tmp_path):
    shard = str(tmp_path / "00000.tar")
    shutil.copy(expand_shards(written.image_pattern)[0], shard)
    os.mkdir(shard + ".clipjax-index.npz")  # a name that cannot be written as a file
    tar_index.load_or_build(shard, str(tmp_path / "cache"), read_uids=False)
    assert [name.startswith("00000.tar.") for name in os.listdir(tmp_path / "cache")] == [True]


def test_an_unreadable_shard_is_named_in_the_log_and_skipped(written, tmp_path):
    bad = tmp_path / "broken.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    logs = []
    shards = [str(bad), expand_shards(written.image_pattern)[0], str(tmp_path / "missing.tar")]
    src = WebDatasetSource(shards, log=logs.append)
    assert len(src) == 16
    assert any(str(bad) in line and "cannot open" in line for line in logs)
    assert any("missing.tar" in line for line in logs)


def test_a_shard_failing_transiently_is_retried_and_one_that_keeps_failing_stops_the_run(written, monkeypatch):
    """Leaving out a shard that failed with EIO would renumber the samples after it (a resumed run or another
    host would read others under the same numbers)."""
    import errno

    from clipjax.data import webdataset
    from clipjax.errors import UserError

    shards = expand_shards(written.image_pattern)
    real, failures = webdataset.load_or_build, {"left": 1}

    def flaky(path, *args):
        if path == shards[1] and failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *args)

    monkeypatch.setattr(webdataset, "load_or_build", flaky)
    monkeypatch.setattr(webdataset, "_RETRY_DELAYS_S", (0.0, 0.0))
    logs = []
    whole = WebDatasetSource(shards, log=logs.append)
    assert len(whole) == len(written.samples) and any("retrying" in line for line in logs)
    failures["left"] = 3  # the first try and both retries
    with pytest.raises(UserError, match=r"00001.tar cannot be read \(\[Errno 5\].*remove the shard"):
        WebDatasetSource(shards, log=logs.append)


def test_the_fingerprint_tells_sources_that_number_samples_differently_apart(written, tmp_path):
    shards = expand_shards(written.image_pattern)
    same = WebDatasetSource(shards, log=lambda _: None).fingerprint()
    assert same.dtype == np.uint32 and same.shape == (4,)
    np.testing.assert_array_equal(WebDatasetSource(shards, log=lambda _: None).fingerprint(), same)
    missing = WebDatasetSource([*shards[:1], str(tmp_path / "gone.tar"), *shards[1:]], log=lambda _: None)
    assert len(missing) == len(written.samples)  # the missing shard adds nothing ...
    np.testing.assert_array_equal(missing.fingerprint(), same)  # ... and changes no sample's number
    assert not np.array_equal(WebDatasetSource(shards[1:], log=lambda _: None).fingerprint(), same)
    joined = WebDatasetSource(shards, expand_shards(written.synthetic_pattern), log=lambda _: None)
    assert not np.array_equal(joined.fingerprint(), same)


@pytest.mark.parametrize("captions", ["real", "synthetic", "mixed", "both"])
def test_every_bad_sample_is_skipped_with_its_reason(written, source, captions):
    counts = collections.Counter()
    for i, sample in enumerate(written.samples):
        example = transform(captions)(source[i], np.random.default_rng(i))
        if "__skipped__" in example:
            counts[example["__skipped__"]] += 1
            assert sample.bad.get(captions) == example["__skipped__"], sample.key
        else:
            assert not sample.bad.get(captions), sample.key
            assert example["image"].shape == (24, 24, 3) and example["image"].dtype == np.uint8
            assert example["text"].shape == (16,)
            assert ("text_synthetic" in example) == (captions == "both")
    assert counts == written.expected_skips(captions)


@pytest.mark.parametrize("captions", ["real", "both"])
def test_under_distillation_samples_without_usable_reinforcements_are_skipped_too(written, source, captions):
    counts = collections.Counter()
    for i in range(len(written.samples)):
        example = transform(captions, teacher_width=TEACHER_WIDTH)(source[i], np.random.default_rng(i))
        if "__skipped__" in example:
            counts[example["__skipped__"]] += 1
        else:
            assert example["teacher_image"].shape == (TEACHER_WIDTH,) and example["teacher_image"].dtype == np.float32
            assert ("teacher_text_synthetic" in example) == (captions == "both")
    assert counts == written.expected_skips(captions, distill=True)
    assert counts["bad_reinforcement"] == 2 and counts["missing_reinforcement"] == (2 if captions == "real" else 1)


def test_distillation_replays_a_stored_augmentation_and_brings_the_teacher_embeddings_that_match(written, source):
    size, checked = 64, 0
    for i, sample in enumerate(written.samples):
        example = transform("both", teacher_width=TEACHER_WIDTH, image_size=size)(source[i], np.random.default_rng(i))
        if "__skipped__" in example:
            continue
        params, image_emb, text_emb = sample.reinforcement
        # The teacher's embedding of exactly one stored augmentation came along ...
        (chosen,) = [a for a in range(AUGMENTATIONS) if np.array_equal(image_emb[a], example["teacher_image"])]
        # ... and the image is that augmentation as torchvision renders it, not another one.
        encoded = next(sample.members[e] for e in ("jpg", "png", "webp") if e in sample.members)
        original = Image.fromarray(decode_image(encoded))
        renders = []
        for (top, left, height, width), ops in params:
            image = tvf.resized_crop(original, top, left, height, width, [size, size], InterpolationMode.BICUBIC)
            for index, magnitude in ops or ():
                op = TORCHVISION_RAND_AUGMENT_OPS[index]
                image = _apply_op(image, op, magnitude, interpolation=InterpolationMode.NEAREST, fill=None)
            renders.append(np.mean(np.abs(np.asarray(image, np.float64) - example["image"])))
        others = [render for a, render in enumerate(renders) if a != chosen]
        assert renders[chosen] < 10.0 and renders[chosen] < min(others) / 2, (sample.key, renders)
        # The real caption's embedding is row 0; synthetic caption k's is row 1 + k.
        np.testing.assert_array_equal(example["teacher_text"], text_emb[0])
        (k,) = [
            k
            for k, text in enumerate(sample.synthetic)
            if np.array_equal(tokenize(text, 16)[0], example["text_synthetic"])
        ]
        np.testing.assert_array_equal(example["teacher_text_synthetic"], text_emb[1 + k])
        checked += 1
    assert checked == 8  # the 11 usable under "both", less the 3 whose reinforcements are not


def test_a_small_stored_crop_of_a_large_jpeg_is_cut_from_the_full_resolution_decode():
    """A JPEG whose shorter side is twice the output may decode at half scale, but not when the stored crop is
    small: the student would see the crop upsampled from half the pixels the teacher saw."""
    import io
    import json

    from skimage import data as skimage_data

    photo = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((512, 480), Image.BICUBIC))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=95)
    encoded, size, width = buffer.getvalue(), 224, 4
    top, left, height, width_box = 150, 180, 136, 145  # 4% of the area, upsampled to 224
    embeddings = io.BytesIO()
    np.savez(embeddings, image_emb=np.ones((1, width), np.float16), text_emb=np.ones((1, width), np.float16))
    sample = {
        "jpg": encoded,
        "txt": b"an astronaut",
        "paug.json": json.dumps({"param_aug": [[[top, left, height, width_box], None]]}).encode(),
        "npz": embeddings.getvalue(),
    }
    example = transform("real", teacher_width=width, image_size=size)(sample, np.random.default_rng(0))
    full = Image.fromarray(decode_image(encoded))
    expected = tvf.resized_crop(full, top, left, height, width_box, [size, size], InterpolationMode.BICUBIC)
    half = Image.fromarray(decode_image(encoded, target=size))  # what the run decoded before: 256 x 240
    assert half.size == (256, 240)
    blurred = tvf.resized_crop(
        half, top // 2, left // 2, height // 2, width_box // 2, [size, size], InterpolationMode.BICUBIC
    )
    error = np.abs(example["image"].astype(np.float64) - np.asarray(expected, np.float64)).mean()
    half_error = np.abs(np.asarray(blurred, np.float64) - np.asarray(expected, np.float64)).mean()
    assert error < 1.0 < half_error, (error, half_error)


def test_batches_hold_only_usable_pairs_and_count_what_was_dropped(written, source):
    # One host, batches of 4, over several epochs of the 19 samples (7 unusable under "real").
    batches = host_batches(
        source, transform("real"), seed=0, batch_size=4, process_index=0, process_count=1, num_threads=2
    )
    iterator = iter(batches)
    usable, dropped = 0, collections.Counter()
    for _ in range(12):  # 48 usable pairs: exactly 4 epochs of the 12 usable samples
        batch = next(iterator)
        assert batch["image"].shape == (4, 24, 24, 3) and batch["text"].shape == (4, 16)
        usable += 4
        dropped.update(batch["__skipped__"])
    expected = written.expected_skips("real")
    # Each epoch drops every unusable sample once; the last epoch's are dropped before its last usable
    # pair, or remain after it, so between 3 and 4 epochs' worth of drops.
    for reason, count in expected.items():
        assert 3 * count <= dropped[reason] <= 4 * count


def test_worker_processes_give_the_same_batches_as_threads(source):
    def first(num_workers):
        batches = host_batches(
            source,
            transform("both"),
            seed=3,
            batch_size=4,
            process_index=0,
            process_count=1,
            num_workers=num_workers,
        )
        iterator = iter(batches)
        return [next(iterator) for _ in range(3)]

    for threaded, multiprocess in zip(first(0), first(2)):
        assert threaded["__skipped__"] == multiprocess["__skipped__"]
        for key in ("image", "text", "text_synthetic"):
            np.testing.assert_array_equal(threaded[key], multiprocess[key])


def test_restored_iterator_state_continues_with_the_same_batches(source):
    def batches():
        return iter(host_batches(source, transform("mixed"), seed=1, batch_size=4, process_index=1, process_count=2))

    uninterrupted = batches()
    for _ in range(2):
        next(uninterrupted)
    state = uninterrupted.get_state()
    expected = [next(uninterrupted) for _ in range(3)]
    resumed = batches()
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(3)]):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["text"], got["text"])
        assert want["__skipped__"] == got["__skipped__"]
