"""Mask R-CNN and Cascade Mask R-CNN on a CLIP image tower, with static shapes throughout.

Layout (detectron2's ViTDet and FPN models): the image tower ("image"); a feature pyramid at strides 4..64 of
`pyramid_channels` — ViTDet's simple feature pyramid ("pyramid") on a ViT's last feature map, or an FPN
("neck") on an MCi's stage outputs — with stride 64 subsampled from stride 32 (LastLevelMaxPool); the RPN
("rpn") on every level; RoIAlign from strides 4..32 (level by box size, canonical 224 px at stride 16); one
box head + predictor per stage ("box_head_k", "box_predictor_k": one stage for Mask R-CNN, three with IoU
thresholds 0.5 / 0.6 / 0.7 and class-agnostic boxes for Cascade); the mask head ("mask_head").

`__call__(images, image_sizes=None, targets=None, train=False)`:
  - train=True with `targets` (a "sampling" rng in the apply): {loss name: float32 []} — RPN objectness and
    deltas, each stage's classification and box regression, the mask loss.
  - `init` without train creates the parameters through one box per image (no proposals or NMS, so it
    compiles quickly); the apply then returns only {"masks": ...} of that box.
  - otherwise the detections: {"boxes": float32 [B, D, 4] (input pixels), "scores": float32 [B, D], "classes":
    int32 [B, D] (0..K-1), "masks": float32 [B, D, 2p, 2p] (probabilities of each detection's class inside its
    box), "valid": bool [B, D]}, D = settings.detections_per_image, best first.
images: float [B, H, W, 3] normalised as the tower expects (H, W multiples of 64); image_sizes: int32 [B, 2]
(height, width) of each image's content (None: all of it); targets: {"boxes": float32 [B, G, 4], "classes":
int32 [B, G] (-1 padding), "masks": uint8 [B, G, m, m] (each instance's mask inside its box)}.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from clipjax.heads.detection.anchors import ANCHOR_SIZES, ASPECT_RATIOS, multilevel_anchors
from clipjax.heads.detection.boxes import (
    CASCADE_WEIGHTS,
    ROI_WEIGHTS,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nonempty,
)
from clipjax.heads.detection.nms import batched_nms
from clipjax.heads.detection.roi_align import multilevel_roi_align
from clipjax.heads.detection.roi_heads import BoxHead, BoxPredictor, MaskHead, scale_gradient
from clipjax.heads.detection.rpn import RPNHead, propose
from clipjax.heads.detection.targets import mask_targets, rpn_targets, sample_rois, stage_targets
from clipjax.heads.segmentation import FPN, SimpleFeaturePyramid
from clipjax.heads.towers import check_batch_norm_mode, vit_feature_map
from clipjax.losses.detection import (
    box_classification_loss,
    box_regression_loss,
    giou_loss,
    mask_loss,
    rpn_losses,
    smooth_l1,
)
from clipjax.models.mci import MCi
from clipjax.models.presets import build_image_tower

POOLED_STRIDES = (4, 8, 16, 32)  # RoIAlign reads these levels; the RPN also uses stride 64
BOX_LOSSES = ("smooth_l1", "giou")


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
    """The detector's static hyperparameters: detectron2's ViTDet defaults, except two that static shapes
    need: RoIAlign's fixed `sampling_ratio` (detectron2's 0 adapts the samples to each box's size) and the
    `pre_nms_candidates` cap on the (box, class) pairs entering the final NMS (detectron2 takes every pair
    over the score threshold)."""

    stage_ious: tuple[float, ...] = (0.5,)  # one IoU threshold per box stage: Cascade's (0.5, 0.6, 0.7)
    anchor_sizes: tuple[float, ...] = tuple(ANCHOR_SIZES.values())  # at strides 4, 8, 16, 32, 64
    rpn_convs: int = 2
    rpn_pre_nms: tuple[int, int] = (2000, 1000)  # per level, (training, inference)
    rpn_post_nms: tuple[int, int] = (1000, 1000)
    rpn_nms: float = 0.7
    rpn_samples: int = 256
    rpn_positive_fraction: float = 0.5
    roi_samples: int = 512
    roi_positive_fraction: float = 0.25
    box_conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    box_fc_dims: tuple[int, ...] = (1024,)
    head_norm: bool = True  # channel LayerNorm in the box and mask heads' convs (ViTDet)
    mask_head_convs: int = 4
    mask_head_channels: int = 256
    box_pool: int = 7
    mask_pool: int = 14
    sampling_ratio: int = 2
    box_loss: str = "smooth_l1"
    smooth_l1_beta: float = 0.0
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    pre_nms_candidates: int = 2000  # the best (box, class) pairs that enter the final per-class NMS
    detections_per_image: int = 100

    @property
    def cascade(self) -> bool:
        return len(self.stage_ious) > 1


def stage_weights(settings: DetectorSettings, stage: int) -> tuple[float, ...]:
    """The box coder weights of box stage `stage`."""
    return CASCADE_WEIGHTS[stage] if settings.cascade else ROI_WEIGHTS


class MaskRCNN(nn.Module):
    """See the module docstring."""

    image: nn.Module
    num_classes: int
    settings: DetectorSettings = DetectorSettings()
    pyramid_channels: int = 256

    def pyramid(self, images: jax.Array) -> dict[int, jax.Array]:
        """{stride: [B, H/s, W/s, pyramid_channels] float32} for strides 4..64."""
        if isinstance(self.image, MCi):
            features = {s: f.astype(jnp.float32) for s, f in self.image(images)["features"].items()}
            levels = FPN(self.pyramid_channels, name="neck")(features)
        else:
            grid, stride = vit_feature_map(self.image(images), images)
            levels = SimpleFeaturePyramid(self.pyramid_channels, name="pyramid")(grid, stride)
        levels[64] = levels[32][:, ::2, ::2]  # detectron2's LastLevelMaxPool: a 1x1 max-pool with stride 2
        return levels

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        image_sizes: jax.Array | None = None,
        targets: dict[str, jax.Array] | None = None,
        train: bool = False,
    ) -> dict[str, jax.Array]:
        s = self.settings
        if len(s.anchor_sizes) != len(ANCHOR_SIZES):
            raise ValueError(f"anchor_sizes needs one size per stride {tuple(ANCHOR_SIZES)}, got {s.anchor_sizes}")
        if s.box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss {s.box_loss!r} is not one of {BOX_LOSSES}")
        if images.shape[1] % 64 or images.shape[2] % 64:
            raise ValueError(f"detection needs image sides that are multiples of 64, got {images.shape[1:3]}")
        if train and targets is None:
            raise ValueError("training the detector needs targets")
        check_batch_norm_mode(self, self.image, train)
        batch = images.shape[0]
        if image_sizes is None:
            image_sizes = jnp.broadcast_to(jnp.asarray(images.shape[1:3], jnp.int32), (batch, 2))
        levels = self.pyramid(images)
        pooled = {stride: levels[stride] for stride in POOLED_STRIDES}
        anchors = multilevel_anchors(
            {stride: x.shape[1:3] for stride, x in levels.items()}, dict(zip(sorted(levels), s.anchor_sizes))
        )
        rpn = RPNHead(len(ASPECT_RATIOS), s.rpn_convs, name="rpn")
        rpn_logits, rpn_deltas = rpn(levels)
        box_heads = [
            (
                BoxHead(s.box_conv_dims, s.box_fc_dims, s.head_norm, name=f"box_head_{k}"),
                BoxPredictor(self.num_classes, class_agnostic=s.cascade, name=f"box_predictor_{k}"),
            )
            for k in range(len(s.stage_ious))
        ]
        mask_head = MaskHead(
            self.num_classes, s.mask_head_convs, s.mask_head_channels, norm=s.head_norm, name="mask_head"
        )
        if self.is_initializing() and not train:
            # Parameters only: one box per image through every head, skipping proposals, NMS and top-k, which
            # would make the init's compilation as long as the inference's.
            boxes = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 64.0, 64.0]), (batch, 1, 4))
            for head in box_heads:
                self._stage(pooled, boxes, head)
            return {"masks": mask_head(multilevel_roi_align(pooled, boxes, s.mask_pool, s.sampling_ratio))}
        phase = 0 if train else 1
        proposals, _, proposals_valid = propose(
            rpn_logits,
            rpn_deltas,
            anchors,
            image_sizes,
            pre_nms=s.rpn_pre_nms[phase],
            post_nms=s.rpn_post_nms[phase],
            nms_threshold=s.rpn_nms,
        )
        if train:
            return self._losses(pooled, anchors, rpn_logits, rpn_deltas, proposals, proposals_valid, image_sizes,
                                targets, box_heads, mask_head)  # fmt: skip
        return self._detect(pooled, proposals, proposals_valid, image_sizes, box_heads, mask_head)

    def _stage(self, pooled: dict, boxes: jax.Array, head: tuple[nn.Module, nn.Module]) -> tuple[jax.Array, jax.Array]:
        """One box stage on boxes [B, R, 4]: (class logits [B, R, K + 1], deltas [B, R, K or 1, 4])."""
        s = self.settings
        features = multilevel_roi_align(pooled, boxes, s.box_pool, s.sampling_ratio)
        if s.cascade:
            features = scale_gradient(features, 1.0 / len(s.stage_ious))
        box_head, predictor = head
        return predictor(box_head(features))

    def _losses(self, pooled, anchors, rpn_logits, rpn_deltas, proposals, proposals_valid, image_sizes, targets,
                box_heads, mask_head) -> dict[str, jax.Array]:  # fmt: skip
        s = self.settings
        gt_boxes, gt_classes, gt_masks = targets["boxes"], targets["classes"], targets["masks"]
        batch = gt_boxes.shape[0]
        rng_rpn, rng_roi = jax.random.split(self.make_rng("sampling"))
        all_anchors = jnp.asarray(np.concatenate([anchors[stride] for stride in rpn_logits]))
        rpn_labels, rpn_target_deltas = jax.vmap(
            lambda boxes, valid, key: rpn_targets(
                all_anchors, boxes, valid, key, num_samples=s.rpn_samples, positive_fraction=s.rpn_positive_fraction
            )
        )(gt_boxes, gt_classes >= 0, jax.random.split(rng_rpn, batch))
        losses = rpn_losses(
            jnp.concatenate(list(rpn_logits.values()), axis=1),
            jnp.concatenate(list(rpn_deltas.values()), axis=1),
            rpn_labels,
            rpn_target_deltas,
            s.rpn_samples,
            s.smooth_l1_beta,
        )
        sampled = jax.vmap(
            lambda p, v, b, c, key: sample_rois(
                p, v, b, c, key, num_samples=s.roi_samples, positive_fraction=s.roi_positive_fraction,
                iou_threshold=s.stage_ious[0],
            )
        )(proposals, proposals_valid, gt_boxes, gt_classes, jax.random.split(rng_roi, batch))  # fmt: skip
        take = jax.vmap(lambda x, i: x[i])
        boxes, matched, foreground, valid = (
            sampled["boxes"],
            sampled["matched"],
            sampled["foreground"],
            sampled["valid"],
        )
        for k, head in enumerate(box_heads):
            if k:  # later Cascade stages relabel the previous stage's boxes at their own IoU threshold
                valid = valid & nonempty(boxes)  # detectron2 drops boxes the previous stage clipped away
                matched, foreground = jax.vmap(stage_targets, in_axes=(0, 0, 0, 0, None))(
                    boxes, valid, gt_boxes, gt_classes, s.stage_ious[k]
                )
            logits, deltas = self._stage(pooled, boxes, head)
            classes = jnp.where(foreground, take(gt_classes, matched), self.num_classes)
            losses[f"loss_cls_{k}"] = box_classification_loss(logits, classes, valid)
            weights = stage_weights(s, k)
            chosen = deltas[:, :, 0] if s.cascade else jnp.take_along_axis(
                deltas, jnp.clip(classes, 0, self.num_classes - 1)[..., None, None], axis=2
            )[:, :, 0]  # fmt: skip
            matched_boxes = take(gt_boxes, matched)
            if s.box_loss == "giou":
                per_box = giou_loss(decode_boxes(chosen, boxes, weights), matched_boxes)
            else:
                per_box = smooth_l1(chosen - encode_boxes(matched_boxes, boxes, weights), s.smooth_l1_beta).sum(-1)
            losses[f"loss_box_{k}"] = box_regression_loss(per_box, foreground, valid)
            if k + 1 < len(box_heads):
                boxes = jax.lax.stop_gradient(clip_boxes(decode_boxes(deltas[:, :, 0], boxes, weights), image_sizes))
        # The mask head trains on the first stage's foreground samples, which sample_rois puts first.
        count = int(s.roi_samples * s.roi_positive_fraction)
        fg_boxes = sampled["boxes"][:, :count]
        fg = sampled["foreground"][:, :count]
        fg_matched = sampled["matched"][:, :count]
        logits = mask_head(multilevel_roi_align(pooled, fg_boxes, s.mask_pool, s.sampling_ratio))
        fg_classes = jnp.clip(take(gt_classes, fg_matched), 0, self.num_classes - 1)
        logits = jnp.take_along_axis(logits, fg_classes[:, :, None, None, None], axis=-1)[..., 0]
        size = logits.shape[-1]
        mask_target = jax.vmap(lambda m, b, r: mask_targets(m, b, r, size))(
            take(gt_masks, fg_matched), take(gt_boxes, fg_matched), fg_boxes
        )
        losses["loss_mask"] = mask_loss(logits, mask_target, fg)
        return losses

    def _detect(self, pooled, proposals, proposals_valid, image_sizes, box_heads, mask_head) -> dict[str, jax.Array]:
        s = self.settings
        boxes, probabilities = proposals, []
        for k, head in enumerate(box_heads):
            logits, deltas = self._stage(pooled, boxes, head)
            probabilities.append(jax.nn.softmax(logits, axis=-1))
            predicted = clip_boxes(decode_boxes(deltas, boxes[:, :, None], stage_weights(s, k)), image_sizes[:, None])
            if k + 1 < len(box_heads):
                boxes = predicted[:, :, 0]
        # Cascade scores every stage's classifier (on its own input boxes) and averages them.
        scores = sum(probabilities)[..., :-1] / len(probabilities)  # [B, R, K], background dropped
        predicted = jnp.broadcast_to(predicted, (*scores.shape, 4))
        batch, rois, classes = scores.shape
        candidates = min(s.pre_nms_candidates, rois * classes)
        good = (scores > s.score_threshold) & proposals_valid[..., None]
        good &= (predicted[..., 2] > predicted[..., 0]) & (predicted[..., 3] > predicted[..., 1])
        flat_scores = jnp.where(good, scores, -1.0).reshape(batch, -1)
        top_scores, top = jax.lax.top_k(flat_scores, candidates)
        top_boxes = jnp.take_along_axis(predicted.reshape(batch, -1, 4), top[..., None], axis=1)
        top_classes = (top % classes).astype(jnp.int32)
        keep_index, keep = jax.vmap(
            lambda b, sc, c: batched_nms(b, sc, c, s.nms_threshold, s.detections_per_image, sc > 0)
        )(top_boxes, top_scores, top_classes)
        det_boxes = jnp.take_along_axis(top_boxes, keep_index[..., None], axis=1)
        det_scores = jnp.where(keep, jnp.take_along_axis(top_scores, keep_index, axis=1), 0.0)
        det_classes = jnp.take_along_axis(top_classes, keep_index, axis=1)
        logits = mask_head(multilevel_roi_align(pooled, det_boxes, s.mask_pool, s.sampling_ratio))
        masks = jax.nn.sigmoid(jnp.take_along_axis(logits, det_classes[:, :, None, None, None], axis=-1)[..., 0])
        return {"boxes": det_boxes, "scores": det_scores, "classes": det_classes, "masks": masks, "valid": keep}


def detector_settings(detection: ConfigDict) -> DetectorSettings:
    """DetectorSettings from config.detection: its keys named like the settings' fields (lists become
    tuples); others are the data pipeline's and ignored here."""
    fields = {f.name for f in dataclasses.fields(DetectorSettings)}
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in detection.items() if k in fields}
    return DetectorSettings(**values)


def default_global_blocks(depth: int) -> tuple[int, ...]:
    """ViTDet's global-attention blocks: the last of each quarter of the tower (ViT-B (2, 5, 8, 11), ViT-L (5,
    11, 17, 23), ViT-H (7, 15, 23, 31)); every block for towers shallower than 4."""
    step = max(depth // 4, 1)
    return tuple(range(step - 1, depth, step))


def build_detector(model: ConfigDict, num_classes: int, detection: ConfigDict) -> MaskRCNN:
    """Mask R-CNN (or Cascade, by detection.stage_ious) on the image tower `config.model` describes. ViTs get
    ViTDet's window attention: detection.window_size (0: global everywhere) except in detection.global_blocks
    (None: `default_global_blocks`)."""
    tower = build_image_tower(model)
    if not isinstance(tower, MCi) and detection.get("window_size", 0):
        global_blocks = detection.get("global_blocks")
        tower = tower.clone(
            window_size=detection.window_size,
            global_blocks=default_global_blocks(tower.depth) if global_blocks is None else tuple(global_blocks),
        )
    return MaskRCNN(tower, num_classes, detector_settings(detection), detection.get("pyramid_channels", 256))
