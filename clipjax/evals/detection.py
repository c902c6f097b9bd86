"""COCO detection and instance segmentation evaluation over a split: box and mask AP from pycocotools.

The network predicts each image's detections on its resized input (boxes in the input's pixels, an m x m
mask probability per detection); on the host, each detection's box is mapped back to the original image
(divided by the resize scale, clipped to the image), boxes left with no area are dropped (detectron2's
`detector_postprocess`), masks are pasted into the original image (`paste_masks`), and all images' results
are scored together against the ground truth of the evaluated images.

Outputs are replicated over the mesh, so every host holds every row, computes the same metrics, and no host
waits for another after the last batch.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from clipjax.errors import UserError
from clipjax.evals.batches import eval_batches, load_or_stop
from clipjax.evals.coco_metrics import coco_metrics, coco_results, load_ground_truth, paste_masks
from clipjax.parallel import replicated

# The batch fields the host needs beside the predictions, to map them back to the original images.
_PASSED = ("valid", "image_id", "scale", "original_size")
_INT32_MAX = np.iinfo(np.int32).max


def to_original_boxes(boxes: np.ndarray, scale: float, original_size: Sequence[int]) -> np.ndarray:
    """Boxes on the resized input -> boxes on the original image.

    Args:
      boxes: float [K, 4], (x0, y0, x1, y1) in the network input's pixels.
      scale: resized / original side.
      original_size: the original image's (height, width).

    Returns:
      float32 [K, 4] in the original image's pixels, clipped to [0, width] x [0, height].
    """
    height, width = (float(s) for s in original_size)
    out = np.asarray(boxes, np.float32) / np.float32(scale)
    out[:, 0::2] = np.clip(out[:, 0::2], 0.0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0.0, height)
    return out


class DetectionEvaluator:
    """`evaluator(variables, prefix="eval") -> {prefix/box_ap, prefix/box_ap50, ..., prefix/mask_apl}` over
    the first `num_examples` records of `source`; `last_results` then holds the COCO result entries.

    Args:
      predict: (variables, batch) -> {"boxes": float32 [B, K, 4] (x0, y0, x1, y1 in the input's pixels),
        "scores": float32 [B, K], "classes": int32 [B, K] (contiguous), "masks": float32 [B, K, m, m]
        (probabilities; optional: box AP only without it), "valid": bool [B, K]}; jitted here.
      mesh: the batches' mesh.
      source: random access records.
      load: record -> {"image": uint8 [S, S, 3], "image_size": int32 [2], "scale": float32 [] (resized /
        original), "original_size": int32 [2] (h, w), "image_id": int64 []}.
      ground_truth: the COCO dataset dict or the annotation JSON's path (read once, at the first call).
      category_ids: the COCO category id of each contiguous class.
      batch_size: global; divides over the data-parallel devices and the processes.
      num_examples: evaluate the first this many records (default: all); AP is over these images only.
      results_path: host 0 writes the result entries there as JSON after each call (atomically).
      mask_threshold: pasted mask probabilities at or above this are the instance.
    """

    def __init__(
        self,
        predict: Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]],
        mesh: Mesh,
        source: Any,
        load: Callable[[Any], dict[str, np.ndarray]],
        *,
        ground_truth: dict[str, Any] | str,
        category_ids: Sequence[int],
        batch_size: int,
        num_examples: int | None = None,
        num_threads: int = 8,
        results_path: str | None = None,
        mask_threshold: float = 0.5,
    ) -> None:
        self._mesh, self._source, self._load = mesh, source, load
        self._ground_truth, self._coco = ground_truth, None
        self._category_ids = [int(c) for c in category_ids]
        self._batch_size, self._num_examples, self._num_threads = batch_size, num_examples, num_threads
        self._results_path, self._mask_threshold = results_path, mask_threshold
        self.last_results: list[dict[str, Any]] = []

        def run(variables: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
            out = predict(variables, batch)
            fields = ("boxes", "scores", "classes", "masks", "valid")
            detections = {key: out[key] for key in fields if key in out}
            return {"detections": detections, **{key: batch[key] for key in _PASSED}}

        # Replicated outputs: every host gets all rows (the all-gather happens on the devices).
        self._predict = jax.jit(run, out_shardings=replicated(mesh))

    def __call__(self, variables: Any, prefix: str = "eval") -> dict[str, float]:
        if self._coco is None:
            try:
                self._coco = load_ground_truth(self._ground_truth)
            except OSError as e:
                raise UserError(f"detection ground truth {self._ground_truth} cannot be read ({e})") from None
        results: list[dict[str, Any]] = []
        image_ids: list[int] = []
        with_masks = True
        batches = eval_batches(
            self._source,
            _checked(self._load),
            self._mesh,
            batch_size=self._batch_size,
            num_examples=self._num_examples,
            num_threads=self._num_threads,
        )
        for batch in batches:
            out = jax.device_get(self._predict(variables, batch))
            with_masks = "masks" in out["detections"]
            for row in np.flatnonzero(out["valid"]):
                image_ids.append(int(out["image_id"][row]))
                results.extend(self._image_results(out, row))
        seen = set(image_ids)
        if len(seen) < len(image_ids):
            twice = sorted(i for i in seen if image_ids.count(i) > 1)
            raise UserError(f"images {twice[:10]} appear more than once in the detection evaluation data")
        missing = seen - set(self._coco.getImgIds())
        if missing:
            raise UserError(f"evaluated images {sorted(missing)[:10]} are not in the ground truth annotations")
        self.last_results = results
        if self._results_path is not None and jax.process_index() == 0:
            _write_json(self._results_path, results)
        iou_types = ("bbox", "segm") if with_masks else ("bbox",)
        metrics = coco_metrics(self._coco, results, image_ids=image_ids, iou_types=iou_types)
        return {f"{prefix}/{name}": float(value) for name, value in metrics.items()}

    def _image_results(self, out: dict[str, Any], row: int) -> list[dict[str, Any]]:
        """The COCO result entries of one batch row's valid detections, on its original image."""
        detections = {key: value[row] for key, value in out["detections"].items()}
        height, width = (int(s) for s in out["original_size"][row])
        keep = np.asarray(detections["valid"], bool)
        boxes = to_original_boxes(detections["boxes"][keep], float(out["scale"][row]), (height, width))
        # Boxes wholly outside the image are empty after clipping: no instance (detectron2 drops them too).
        keep_boxes = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes = boxes[keep_boxes]
        masks = None
        if "masks" in detections:
            probabilities = detections["masks"][keep][keep_boxes]
            masks = paste_masks(probabilities, boxes, height, width, self._mask_threshold)
        return coco_results(
            int(out["image_id"][row]),
            boxes,
            detections["scores"][keep][keep_boxes],
            detections["classes"][keep][keep_boxes],
            masks,
            self._category_ids,
        )


def _checked(load: Callable[[Any], dict[str, np.ndarray]]) -> Callable[[Any], dict[str, np.ndarray]]:
    """`load` whose undecodable images stop the evaluation with the record's name, and whose image ids are
    int32 (what JAX carries without 64-bit mode; every COCO id fits)."""

    def checked(record: Any) -> dict[str, np.ndarray]:
        example = load_or_stop(load, record)
        image_id = int(example["image_id"])
        if not 0 <= image_id <= _INT32_MAX:
            raise UserError(f"image id {image_id} is outside 0..{_INT32_MAX}")
        return {**example, "image_id": np.asarray(image_id, np.int32)}

    return checked


def _write_json(path: str, value: Any) -> None:
    """json.dump to a temporary file beside `path`, then renamed over it: readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False, encoding="utf-8") as f:
        try:
            json.dump(value, f)
        except BaseException:
            f.close()
            os.remove(f.name)
            raise
    os.replace(f.name, path)
