"""Semantic segmentation (ADE20K) metrics: a mergeable confusion matrix and mmsegmentation's mIoU / mAcc / aAcc.

`confusion_matrix` runs inside jit on a batch of predicted and ground-truth label maps and returns int32 [K, K]
counts; confusions from batches and hosts merge by addition (accumulate them in int64 on the host: a full split
can exceed 2^31 pixels), and `segmentation_metrics` turns the total into the numbers once at the end.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.ops.labels import IGNORE_LABEL


def confusion_matrix(
    pred: jax.Array,
    label: jax.Array,
    num_classes: int,
    valid: jax.Array | None = None,
    ignore_index: int = IGNORE_LABEL,
) -> jax.Array:
    """Pixel counts per (ground-truth class, predicted class) pair over a batch of label maps. Jit-able.

    A pixel counts when its image is valid, its label is in [0, num_classes) and != ignore_index, and its prediction
    is in [0, num_classes). Everything else counts nothing: ignore pixels, padding images (valid False), and labels
    outside [0, num_classes) that are not ignore_index. mmseg's `intersect_and_union` would still add such an
    out-of-range-label pixel's prediction to that class's union (its histograms are taken separately); a confusion
    matrix cannot hold a pixel without a ground-truth row, and ADE20K (0..149 or 255) never has such labels, so they
    are dropped whole. Predictions outside [0, num_classes) cannot come from an argmax and are dropped likewise.

    Memory: one int32 bin index per pixel and a K * K + 1 histogram (a scatter-add), never a [B, H, W, K] one-hot.

    Args:
      pred: int [B, H, W] predicted classes (e.g. the argmax of the logits), any int dtype.
      label: int [B, H, W] ground-truth classes, any int dtype (uint8 is fine: it is widened before K * label).
      num_classes: K, a static Python int >= 1.
      valid: optional bool [B], False for padding images of an evaluation batch; None means all valid.
      ignore_index: the label value of unlabelled pixels.

    Returns:
      int32 [K, K], rows = ground truth, columns = prediction: entry [i, j] is the number of counted pixels labelled
      i and predicted j, so the diagonal holds the true positives.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pred.shape != label.shape or pred.ndim != 3:
        raise ValueError(f"pred and label must both be [B, H, W], got {pred.shape} and {label.shape}")
    pred = pred.astype(jnp.int32)
    label = label.astype(jnp.int32)
    counted = (label != ignore_index) & (label >= 0) & (label < num_classes) & (pred >= 0) & (pred < num_classes)
    if valid is not None:
        counted = counted & valid.astype(bool)[:, None, None]
    # Route every pixel that does not count to one extra bin past the K * K pairs, dropped below; this keeps the
    # bincount length static (jit) without a boolean gather.
    trash = num_classes * num_classes
    bins = jnp.where(counted, label * num_classes + pred, trash)
    counts = jnp.bincount(bins.reshape(-1), length=trash + 1)
    return counts[:trash].reshape(num_classes, num_classes).astype(jnp.int32)


def _nan_to_none(value: float) -> float | None:
    # NaN is not valid JSON (json.dumps writes a bare NaN token); null is.
    return None if np.isnan(value) else float(value)


def segmentation_metrics(
    confusion: np.ndarray, prefix: str = "eval", class_names: Sequence[str] | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """mmsegmentation's IoUMetric numbers (as fractions in [0, 1], not mmseg's percentages) from a total confusion.

    Per class c, with TP = confusion[c, c], FN = row c minus TP, FP = column c minus TP (exactly mmseg 1.x
    `IoUMetric.total_area_to_metrics`, intersect / union and intersect / area_label, then np.nanmean):
      IoU_c = TP / (TP + FP + FN): NaN only when the class is neither in the ground truth nor predicted (0 / 0). A
        class absent from the ground truth but predicted has IoU 0 and DOES count in miou.
      Acc_c = TP / (TP + FN): NaN when the class is absent from the ground truth, and then left out of macc.
      miou = nanmean IoU, macc = nanmean Acc, aacc = trace / number of counted pixels.

    Args:
      confusion: int [K, K] (rows = ground truth, columns = prediction), the sum of `confusion_matrix` over all
        batches and hosts (add in int64).
      prefix: the metric name prefix.
      class_names: optional K distinct names for the per-class table; default the class indices as strings ("0",
        "1", ...: JSON object keys are strings anyway).

    Returns:
      ({f"{prefix}/miou", f"{prefix}/macc", f"{prefix}/aacc"}: Python floats,
       {"per_class": {name: {"iou": float | None, "acc": float | None}}}) where None stands for NaN so the second
      dict goes into JSON as it is.

    Raises:
      ValueError: a non-square or negative confusion, a wrong number of or repeated class names, or no counted
        pixel at all (every metric would be 0 / 0).
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] < 1:
        raise ValueError(f"the confusion matrix must be [K, K] with K >= 1, got shape {confusion.shape}")
    confusion = confusion.astype(np.int64)
    if (confusion < 0).any():
        raise ValueError("the confusion matrix has negative counts (int32 overflow? add batches in int64)")
    num_classes = confusion.shape[0]
    names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for a {num_classes}-class confusion matrix")
    if len(set(names)) != num_classes:
        raise ValueError("class names must be distinct (they key the per-class table)")
    total = int(confusion.sum())
    if total == 0:
        raise ValueError(
            "the confusion matrix counts no labelled pixel (all ignore_index, padding or out-of-range labels): "
            "the segmentation metrics are undefined"
        )
    true_pos = np.diag(confusion).astype(np.float64)
    label_area = confusion.sum(axis=1).astype(np.float64)  # TP + FN
    pred_area = confusion.sum(axis=0).astype(np.float64)  # TP + FP
    union = label_area + pred_area - true_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = true_pos / union
        acc = true_pos / label_area
    # total > 0 means some class has label_area > 0 (so union > 0): neither nanmean sees an all-NaN array.
    metrics = {
        f"{prefix}/miou": float(np.nanmean(iou)),
        f"{prefix}/macc": float(np.nanmean(acc)),
        f"{prefix}/aacc": float(true_pos.sum() / total),
    }
    per_class = {name: {"iou": _nan_to_none(i), "acc": _nan_to_none(a)} for name, i, a in zip(names, iou, acc)}
    return metrics, {"per_class": per_class}
