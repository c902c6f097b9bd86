"""Segmentation inference and evaluation against numpy / PyTorch: windows placed per image, the flip test,
logits resized to each label's own size, and exact confusion counts over images of many sizes."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from clipjax.evals.segmentation import (
    SegmentationEvaluator,
    _flip_valid,
    canvas_side,
    logits_at_label_size,
    predict_canvas,
)
from clipjax.evals.segmentation_metrics import segmentation_metrics
from clipjax.evals.sliding import window_starts
from clipjax.parallel import make_mesh

K = 3


def fake_logits(x):
    """A 'model' with stride 2 whose output depends on where the window lies: [N, S, S, 3] -> [N, S/2, S/2, K]."""
    n, s = x.shape[:2]
    col = np.arange(s // 2, dtype=np.float32)[None, None, :, None] / s
    pooled = x.reshape(n, s // 2, 2, s // 2, 2, x.shape[-1]).mean(axis=(2, 4))
    return pooled[..., :K] * (1.0 + col) + col


class FakeSegmenter(nn.Module):
    @nn.compact
    def __call__(self, images):
        return {"logits": fake_logits(images)}


def numpy_canvas(image, window, stride):
    """mmseg's slide inference on one image [h, w, 3] (h, w >= window), logits resized to the window."""
    h, w = image.shape[:2]
    total, count = np.zeros((h, w, K)), np.zeros((h, w, 1))
    for top in window_starts(h, window, stride):
        for left in window_starts(w, window, stride):
            out = fake_logits(image[None, top : top + window, left : left + window].astype(np.float32))
            up = torch.nn.functional.interpolate(
                torch.tensor(out).permute(0, 3, 1, 2), size=(window, window), mode="bilinear", align_corners=False
            )
            total[top : top + window, left : left + window] += up[0].permute(1, 2, 0).numpy()
            count[top : top + window, left : left + window] += 1
    return total / count


def to_label_size(logits, size):
    return (
        torch.nn.functional.interpolate(
            torch.tensor(logits, dtype=torch.float32).permute(2, 0, 1)[None],
            size=size,
            mode="bilinear",
            align_corners=False,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )


def test_windows_are_placed_per_image_and_one_window_is_whole_image_inference():
    rng = np.random.default_rng(0)
    canvas = np.zeros((2, 48, 64, 3), np.float32)
    sizes = np.array([[40, 64], [32, 45]], np.int32)
    for b, (h, w) in enumerate(sizes):
        canvas[b, :h, :w] = rng.random((h, w, 3))
    got = np.asarray(
        predict_canvas(fake_logits, jnp.asarray(canvas), jnp.asarray(sizes), mode="slide", window=32, stride=20)
    )
    for b, (h, w) in enumerate(sizes):
        np.testing.assert_allclose(got[b, :h, :w], numpy_canvas(canvas[b, :h, :w], 32, 20), rtol=1e-5, atol=1e-5)
    # Where one window covers the image, sliding-window inference is whole-image inference.
    square = jnp.asarray(canvas[:, :32, :32])
    sizes = jnp.array([[32, 32], [32, 32]], jnp.int32)
    whole = predict_canvas(fake_logits, square, sizes, mode="whole", window=32, stride=20)
    slide = predict_canvas(fake_logits, square, sizes, mode="slide", window=32, stride=20)
    np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), rtol=1e-6, atol=1e-6)


def test_logits_are_resized_to_each_labels_own_size_as_pytorch_does():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 24, 32, K)).astype(np.float32)
    sizes = np.array([[20, 30], [24, 17]], np.int32)
    label_sizes = np.array([[41, 63], [11, 9]], np.int32)
    got = np.asarray(logits_at_label_size(jnp.asarray(logits), jnp.asarray(sizes), jnp.asarray(label_sizes), (48, 64)))
    for b in range(2):
        (h, w), (lh, lw) = sizes[b], label_sizes[b]
        want = to_label_size(logits[b, :h, :w], (int(lh), int(lw)))
        np.testing.assert_allclose(got[b, :lh, :lw], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_evaluator_counts_exactly_over_images_of_many_sizes(flip):
    rng = np.random.default_rng(2)
    # (resized image size, original label size): three canvases after bucketing by 16 px.
    shapes = [
        ((32, 40), (50, 60)),
        ((32, 40), (48, 62)),
        ((32, 32), (32, 32)),
        ((44, 32), (70, 51)),
        ((32, 47), (20, 29)),
    ]
    records = []
    for (h, w), (lh, lw) in shapes:
        label = rng.integers(0, K, (lh, lw)).astype(np.uint8)
        label[rng.random((lh, lw)) < 0.1] = 255
        records.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "label": label})
    evaluator = SegmentationEvaluator(
        FakeSegmenter(),
        make_mesh({"data": -1, "fsdp": 1}),
        records,
        load=lambda r: r,
        size_of=lambda r: (r["image"].shape[:2], r["label"].shape),
        normalize="none",
        num_classes=K,
        mode="slide",
        window=32,
        stride=16,
        flip=flip,
        batch_size=8,
        bucket=16,
    )
    got = evaluator({}, prefix="eval")
    confusion = np.zeros((K, K), np.int64)
    for r in records:
        image = r["image"].astype(np.float32) / 255.0
        logits = numpy_canvas(image, 32, 16)
        if flip:
            logits = (logits + numpy_canvas(image[:, ::-1], 32, 16)[:, ::-1]) / 2
        pred = to_label_size(logits, r["label"].shape).argmax(-1)
        keep = r["label"] != 255
        np.add.at(confusion, (r["label"][keep].astype(int), pred[keep]), 1)
    want, _ = segmentation_metrics(confusion, "eval")
    # float32 on the device against float64 here: a near-tie in the argmax may go the other way for a pixel
    # or two of the ~10,000 (without the flip test the counts agree exactly).
    assert got == pytest.approx(want, abs=0 if not flip else 3e-4)
    assert canvas_side(33, 16, 32) == 48 and canvas_side(20, 16, 32) == 32 and canvas_side(70, 16) == 80


def test_the_flip_test_mirrors_the_image_and_keeps_its_padding():
    canvas = np.random.default_rng(0).random((3, 6, 2)).astype(np.float32)
    canvas[:, 4:] = 0.25  # an image 4 columns wide, padded to 6
    mirrored = np.asarray(_flip_valid(jnp.asarray(canvas), jnp.int32(4)))
    np.testing.assert_array_equal(mirrored[:, :4], canvas[:, 3::-1])
    np.testing.assert_array_equal(mirrored[:, 4:], canvas[:, 4:])
    np.testing.assert_array_equal(np.asarray(_flip_valid(jnp.asarray(mirrored), jnp.int32(4))), canvas)
