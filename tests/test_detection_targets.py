"""Mask R-CNN's training targets: matching against torchvision's Matcher, the balanced sampler's counts and
uniformity, the RPN and RoI targets' deltas, the mask targets against a numpy rasterisation, and the losses
against torch / torchvision."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import Matcher

from clipjax.heads.detection.boxes import ROI_WEIGHTS, decode_boxes, encode_boxes, pairwise_iou
from clipjax.heads.detection.targets import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    mask_targets,
    match,
    rpn_targets,
    sample_priorities,
    sample_rois,
    stage_targets,
)
from clipjax.losses.detection import giou_loss, smooth_l1


def random_boxes(rng: np.random.Generator, n: int, side: float = 100.0) -> np.ndarray:
    xy = rng.uniform(0, side * 0.8, (n, 2))
    wh = rng.uniform(4, side * 0.4, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("low_quality", [False, True])
def test_match_equals_torchvisions_matcher(low_quality):
    rng = np.random.default_rng(0)
    gt, candidates = random_boxes(rng, 6), random_boxes(rng, 300)
    valid = np.array([True] * 5 + [False])
    iou = np.asarray(pairwise_iou(jnp.asarray(gt), jnp.asarray(candidates)))
    matched, label = match(jnp.asarray(iou), jnp.asarray(valid), (0.3, 0.7), (NEGATIVE, IGNORE, POSITIVE), low_quality)
    reference = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(torch.from_numpy(iou[valid])).numpy()
    expected_label = np.where(reference >= 0, POSITIVE, np.where(reference == -1, NEGATIVE, IGNORE))
    np.testing.assert_array_equal(np.asarray(label), expected_label)
    positive = reference >= 0
    np.testing.assert_array_equal(np.asarray(matched)[positive], reference[positive])
    # The low-quality rule adds positives below 0.7 here, so the case tests it.
    assert low_quality == bool((expected_label == POSITIVE).sum() > (iou[valid].max(0) >= 0.7).sum())


def test_match_without_ground_truth_is_all_negative():
    _, label = match(jnp.zeros((3, 10)), jnp.zeros(3, bool), (0.5,), (NEGATIVE, POSITIVE), low_quality=True)
    assert (np.asarray(label) == NEGATIVE).all()


def test_sampler_takes_the_positive_share_then_negatives_uniformly():
    label = np.full(1000, IGNORE, np.int32)
    label[:40] = POSITIVE  # fewer positives than the share: all of them
    label[100:700] = NEGATIVE
    counts = np.zeros(1000)
    for seed in range(200):
        priority = np.asarray(sample_priorities(jnp.asarray(label), 256, 0.5, jax.random.PRNGKey(seed)))
        chosen = priority > 0
        assert (priority[:40] >= 2).all() and chosen.sum() == 256
        assert not chosen[label == IGNORE].any() and ((priority > 1) & (priority < 2)).sum() == 216
        counts += chosen
    # Each negative is drawn with probability 216 / 600 = 0.36: over 200 draws, 72 +- 6.8 (one sigma).
    negatives = counts[100:700]
    assert abs(negatives.mean() - 72) < 1 and negatives.min() > 40 and negatives.max() < 105
    # More positives than the share: exactly int(256 * 0.5) of them.
    label[:500] = POSITIVE
    priority = np.asarray(sample_priorities(jnp.asarray(label), 256, 0.5, jax.random.PRNGKey(0)))
    assert (priority >= 2).sum() == 128 and ((priority > 0) & (priority < 2)).sum() == 128


def test_rpn_targets_decode_back_to_the_matched_ground_truth():
    rng = np.random.default_rng(1)
    anchors, gt = random_boxes(rng, 500), random_boxes(rng, 3)
    label, deltas = rpn_targets(jnp.asarray(anchors), jnp.asarray(gt), jnp.ones(3, bool), jax.random.PRNGKey(0))
    label, deltas = np.asarray(label), np.asarray(deltas)
    positive = label == POSITIVE
    assert 3 <= positive.sum() <= 128 and (label >= 0).sum() <= 256
    iou = np.asarray(pairwise_iou(jnp.asarray(gt), jnp.asarray(anchors)))
    decoded = np.asarray(decode_boxes(jnp.asarray(deltas[positive]), jnp.asarray(anchors[positive])))
    np.testing.assert_allclose(decoded, gt[iou.argmax(0)[positive]], atol=1e-3)
    # Every ground truth box has a positive anchor (its best one).
    assert set(iou.argmax(0)[positive]) == {0, 1, 2}


def test_roi_sampling_appends_ground_truth_and_puts_foreground_first():
    rng = np.random.default_rng(2)
    gt = random_boxes(rng, 4)
    classes = np.array([3, 0, -1, -1], np.int32)  # two valid boxes
    proposals = random_boxes(rng, 50)
    out = sample_rois(
        jnp.asarray(proposals), jnp.ones(50, bool), jnp.asarray(gt), jnp.asarray(classes), jax.random.PRNGKey(3),
        num_samples=64, positive_fraction=0.25,
    )  # fmt: skip
    out = {k: np.asarray(v) for k, v in out.items()}
    assert out["valid"].sum() == 52  # 50 proposals + 2 ground truth boxes, fewer than 64
    fg = out["foreground"]
    assert fg.sum() >= 2 and not fg[fg.sum() :].any()  # foreground first
    iou = np.asarray(pairwise_iou(jnp.asarray(gt[:2]), jnp.asarray(out["boxes"])))
    np.testing.assert_array_equal(fg[out["valid"]], (iou.max(0) >= 0.5)[out["valid"]])
    np.testing.assert_array_equal(out["matched"][fg], iou.argmax(0)[fg])
    for box in gt[:2]:  # both ground truth boxes were sampled, as foreground
        assert any(np.allclose(box, b) for b in out["boxes"][fg])
    matched, fg_07 = stage_targets(jnp.asarray(out["boxes"]), jnp.asarray(out["valid"]), jnp.asarray(gt),
                                   jnp.asarray(classes), 0.7)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(fg_07), out["valid"] & (iou.max(0) >= 0.7))


def test_mask_targets_match_a_rasterised_ground_truth():
    # A ground truth disc inside the box (20, 10, 84, 58) stored box-cropped at 56 x 56; RoIs around it.
    m, size = 56, 28
    box = np.array([20.0, 10.0, 84.0, 58.0], np.float32)
    yy, xx = (np.mgrid[0:m, 0:m] + 0.5) / m
    stored = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) <= 0.2).astype(np.uint8)
    rois = np.array([[20, 10, 84, 58], [10, 0, 70, 50], [40, 30, 100, 70]], np.float32)
    out = np.asarray(mask_targets(jnp.asarray(np.stack([stored] * 3)), jnp.asarray(np.stack([box] * 3)),
                                  jnp.asarray(rois), size))  # fmt: skip
    for roi, target in zip(rois, out):
        # Oracle: the disc in image coordinates, evaluated at the centres of the RoI's size x size bins.
        x = roi[0] + (np.arange(size) + 0.5) * (roi[2] - roi[0]) / size
        y = roi[1] + (np.arange(size) + 0.5) * (roi[3] - roi[1]) / size
        u, v = (x[None, :] - box[0]) / (box[2] - box[0]), (y[:, None] - box[1]) / (box[3] - box[1])
        expected = ((u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.2) & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
        assert target.shape == (size, size) and set(np.unique(target)) <= {0.0, 1.0}
        assert (target != expected).mean() < 0.03, (target != expected).mean()  # boundary pixels only


def test_box_coder_round_trip_with_the_roi_weights():
    rng = np.random.default_rng(4)
    a, b = random_boxes(rng, 20), random_boxes(rng, 20)
    deltas = encode_boxes(jnp.asarray(b), jnp.asarray(a), ROI_WEIGHTS)
    np.testing.assert_allclose(np.asarray(decode_boxes(deltas, jnp.asarray(a), ROI_WEIGHTS)), b, atol=1e-3)


def test_losses_match_torch():
    rng = np.random.default_rng(5)
    a, b = random_boxes(rng, 30), random_boxes(rng, 30)
    expected = torchvision.ops.generalized_box_iou_loss(torch.from_numpy(a), torch.from_numpy(b), reduction="none")
    np.testing.assert_allclose(np.asarray(giou_loss(jnp.asarray(a), jnp.asarray(b))), expected.numpy(), atol=1e-5)
    x = rng.normal(size=100).astype(np.float32)
    for beta in (0.0, 0.5):
        reference = torch.nn.functional.smooth_l1_loss(
            torch.from_numpy(x), torch.zeros(100), beta=beta, reduction="none"
        )
        np.testing.assert_allclose(np.asarray(smooth_l1(jnp.asarray(x), beta)), reference.numpy(), atol=1e-6)
