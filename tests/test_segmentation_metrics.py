"""ADE20K segmentation: confusion matrix and mmseg metrics against plain numpy oracles, the loss against torch."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipjax.evals.segmentation_metrics import confusion_matrix, segmentation_metrics
from clipjax.losses.segmentation import segmentation_loss
from clipjax.ops.labels import IGNORE_LABEL
from clipjax.ops.resize import resize_logits


def numpy_confusion(pred, label, num_classes, valid=None, ignore_index=IGNORE_LABEL):
    """Pixel by pixel with np.add.at: the pairs that count, everything else skipped."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for b in range(len(pred)):
        if valid is not None and not valid[b]:
            continue
        p, t = pred[b].ravel().astype(np.int64), label[b].ravel().astype(np.int64)
        keep = (t != ignore_index) & (t >= 0) & (t < num_classes)
        np.add.at(confusion, (t[keep], p[keep]), 1)
    return confusion


def numpy_mmseg_metrics(pred, label, num_classes, ignore_index=IGNORE_LABEL):
    """mmseg's recipe from the label maps, not from a confusion: per-class histograms of the intersection,
    prediction and label, union = pred + label - intersect, then intersect / union, intersect / label, nanmean."""
    keep = label != ignore_index
    p, t = pred[keep], label[keep]
    edges = np.arange(num_classes + 1)
    intersect = np.histogram(p[p == t], edges)[0].astype(np.float64)
    area_pred = np.histogram(p, edges)[0].astype(np.float64)
    area_label = np.histogram(t, edges)[0].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / (area_pred + area_label - intersect)
        acc = intersect / area_label
    return iou, acc, intersect.sum() / area_label.sum()


def random_maps(seed=0, batch=4, height=16, width=20, num_classes=7):
    """Predictions in [0, K); labels with ignore pixels, labels K and -3 (out of range), and image 2 as padding."""
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, num_classes, (batch, height, width)).astype(np.int32)
    label = rng.integers(0, num_classes, (batch, height, width)).astype(np.int32)
    label[rng.random(label.shape) < 0.2] = IGNORE_LABEL
    label[0, 0, :5] = num_classes
    label[1, 3, :4] = -3
    valid = np.array([True, True, False, True][:batch])
    return pred, label, valid


# --- confusion matrix ---------------------------------------------------------------------------------------------


def test_confusion_matches_numpy_oracle_with_ignore_out_of_range_and_padding():
    pred, label, valid = random_maps()
    got = jax.jit(confusion_matrix, static_argnums=2)(pred, label, 7, valid)
    assert got.dtype == jnp.int32 and got.shape == (7, 7)
    np.testing.assert_array_equal(np.asarray(got), numpy_confusion(pred, label, 7, valid))
    # Without valid every image counts; padding made a difference above.
    all_images = np.asarray(confusion_matrix(pred, label, 7))
    np.testing.assert_array_equal(all_images, numpy_confusion(pred, label, 7))
    assert all_images.sum() > np.asarray(got).sum()


def test_confusion_rows_are_ground_truth():
    label = np.zeros((1, 1, 3), np.int32)
    pred = np.array([[[0, 2, 2]]], np.int32)
    got = np.asarray(confusion_matrix(pred, label, 3))
    assert got[0, 2] == 2 and got[0, 0] == 1 and got.sum() == 3


def test_confusion_uint8_labels_and_other_ignore_index():
    pred, label, _ = random_maps(seed=1)
    label = np.where((label < 0) | (label >= 7), IGNORE_LABEL, label).astype(np.uint8)  # 255 must not wrap 255 * K
    np.testing.assert_array_equal(
        np.asarray(confusion_matrix(pred, label, 7)), numpy_confusion(pred, label.astype(np.int64), 7)
    )
    np.testing.assert_array_equal(
        np.asarray(confusion_matrix(pred, label, 7, ignore_index=3)),
        numpy_confusion(pred, label.astype(np.int64), 7, ignore_index=3),
    )


def test_confusion_merges_by_addition():
    pred, label, valid = random_maps(seed=2)
    whole = np.asarray(confusion_matrix(pred, label, 7, valid), np.int64)
    halves = sum(
        np.asarray(confusion_matrix(pred[s], label[s], 7, valid[s]), np.int64) for s in (slice(0, 2), slice(2, 4))
    )
    np.testing.assert_array_equal(whole, halves)


def test_confusion_ade20k_size():
    # K = 150 at 512 x 512: the bincount path, checked against np.add.at.
    rng = np.random.default_rng(3)
    label = rng.integers(0, 150, (2, 512, 512)).astype(np.int32)
    label[:, :100] = IGNORE_LABEL
    pred = np.where(rng.random(label.shape) < 0.5, label % 150, rng.integers(0, 150, label.shape)).astype(np.int32)
    got = jax.jit(confusion_matrix, static_argnums=2)(pred, label, 150, np.array([True, True]))
    np.testing.assert_array_equal(np.asarray(got), numpy_confusion(pred, label, 150))
    # Memory-light: scratch of a few int32 per pixel (8 x 512 x 512 -> 8 MiB each), never a [B, H, W, K] one-hot
    # (1.2 GiB here).
    batch = jax.ShapeDtypeStruct((8, 512, 512), jnp.int32)
    compiled = jax.jit(confusion_matrix, static_argnums=2).lower(batch, batch, 150).compile()
    stats = compiled.memory_analysis()
    if stats is not None:
        assert stats.temp_size_in_bytes < 64 * 2**20


# --- metrics ------------------------------------------------------------------------------------------------------


def test_metrics_match_mmseg_recipe():
    pred, label, _ = random_maps(seed=4)
    label = np.where((label < 0) | (label >= 7), IGNORE_LABEL, label)
    # Class 5 absent from the ground truth but predicted; class 6 absent from both.
    label[label == 5] = IGNORE_LABEL
    label[label == 6] = IGNORE_LABEL
    pred[pred == 6] = 0
    confusion = np.asarray(confusion_matrix(pred, label, 7))
    metrics, details = segmentation_metrics(confusion, prefix="ade")
    iou, acc, aacc = numpy_mmseg_metrics(pred, label, 7)
    assert iou[5] == 0.0 and math.isnan(acc[5])  # mmseg: IoU 0 (counted), Acc 0 / 0 (left out)
    assert math.isnan(iou[6]) and math.isnan(acc[6])
    assert metrics.keys() == {"ade/miou", "ade/macc", "ade/aacc"}
    assert metrics["ade/miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert metrics["ade/miou"] == pytest.approx(np.mean(iou[:6]), abs=1e-12)  # class 5's zero is in the mean
    assert metrics["ade/macc"] == pytest.approx(np.mean(acc[:5]), abs=1e-12)
    assert metrics["ade/aacc"] == pytest.approx(aacc, abs=1e-12)
    per_class = details["per_class"]
    assert list(per_class) == [str(c) for c in range(7)]
    assert per_class["5"] == {"iou": 0.0, "acc": None}
    assert per_class["6"] == {"iou": None, "acc": None}
    for c in range(5):
        assert per_class[str(c)]["iou"] == pytest.approx(iou[c], abs=1e-12)
        assert per_class[str(c)]["acc"] == pytest.approx(acc[c], abs=1e-12)
    json.dumps(details, allow_nan=False)


def test_metrics_hand_example():
    # GT class 0 x3, class 1 x1; predicted 0, 0, 1, 1 -> TP0 = 2, TP1 = 1, FN0 = 1, FP1 = 1.
    confusion = np.array([[2, 1], [0, 1]])
    metrics, details = segmentation_metrics(confusion, class_names=["wall", "sky"])
    assert metrics["eval/miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics["eval/macc"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["eval/aacc"] == pytest.approx(3 / 4)
    assert details["per_class"]["sky"] == {"iou": 0.5, "acc": 1.0}


def test_perfect_prediction():
    _, label, valid = random_maps(seed=5)
    pred = np.where((label >= 0) & (label < 7), label, 0)
    metrics, _ = segmentation_metrics(np.asarray(confusion_matrix(pred, label, 7, valid)))
    assert metrics == {"eval/miou": 1.0, "eval/macc": 1.0, "eval/aacc": 1.0}


def test_metrics_errors():
    with pytest.raises(ValueError, match="no labelled pixel"):
        segmentation_metrics(np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match=r"\[K, K\]"):
        segmentation_metrics(np.ones((4, 3), np.int64))
    with pytest.raises(ValueError, match="class names"):
        segmentation_metrics(np.eye(2, dtype=np.int64), class_names=["a"])
    with pytest.raises(ValueError, match="negative"):
        segmentation_metrics(-np.eye(2, dtype=np.int64))


# --- loss ---------------------------------------------------------------------------------------------------------


def torch_upsample(logits, size):
    """[B, h, w, K] numpy -> [B, K, H, W] torch, upsampled as mmseg does."""
    nchw = torch.tensor(np.moveaxis(logits, -1, 1), dtype=torch.float64, requires_grad=True)
    return nchw, F.interpolate(nchw, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("small, size", [((5, 7), (17, 23)), ((8, 8), (32, 32)), ((12, 10), (5, 7)), ((6, 6), (6, 6))])
def test_resize_logits_matches_torch(small, size):
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(2, *small, 3)).astype(np.float32)
    got = resize_logits(jnp.asarray(logits), size)
    _, want = torch_upsample(logits, size)
    assert got.dtype == jnp.float32 and got.shape == (2, *size, 3)
    np.testing.assert_allclose(np.asarray(got), np.moveaxis(want.detach().numpy(), 1, -1), atol=1e-5)
    assert resize_logits(jnp.asarray(logits, jnp.bfloat16), size).dtype == jnp.float32


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_and_gradient_match_torch(smoothing):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3, 6, 5, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, (3, 24, 20)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = IGNORE_LABEL
    labels[2] = IGNORE_LABEL  # a fully ignored image still only changes the pixel count
    loss, grad = jax.value_and_grad(segmentation_loss)(
        jnp.asarray(logits), jnp.asarray(labels), IGNORE_LABEL, smoothing
    )
    small, upsampled = torch_upsample(logits, (24, 20))
    want = F.cross_entropy(
        upsampled, torch.tensor(labels, dtype=torch.long), ignore_index=IGNORE_LABEL, label_smoothing=smoothing
    )
    want.backward()
    assert loss.dtype == jnp.float32 and loss.shape == ()
    assert float(loss) == pytest.approx(want.item(), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.moveaxis(small.grad.numpy(), 1, -1), atol=1e-6)


def test_loss_bfloat16_and_out_of_range_labels():
    rng = np.random.default_rng(8)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, 5)), jnp.bfloat16)
    labels = rng.integers(0, 5, (2, 8, 8)).astype(np.int32)
    reference = segmentation_loss(logits.astype(jnp.float32), np.where(labels == 4, IGNORE_LABEL, labels))
    out_of_range = np.where(labels == 4, 9, labels)  # treated as ignored, like 255
    got = jax.jit(segmentation_loss)(logits, out_of_range)
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(float(reference), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_all_ignored_is_zero_with_zero_gradients(smoothing):
    logits = jnp.asarray(np.random.default_rng(9).normal(size=(2, 4, 4, 3)), jnp.float32)
    labels = jnp.full((2, 16, 16), IGNORE_LABEL, jnp.int32)
    loss, grad = jax.jit(jax.value_and_grad(segmentation_loss), static_argnums=(2, 3))(
        logits, labels, IGNORE_LABEL, smoothing
    )
    assert float(loss) == 0.0
    assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad).any()
