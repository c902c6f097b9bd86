"""COCO instance segmentation with a ViT-B/16 image tower: Cascade Mask R-CNN, 3x schedule.

`coco_vit_b16_mask_rcnn.py` with three box stages (IoU thresholds 0.5 / 0.6 / 0.7, class-agnostic boxes,
box coder weights 10/20/30, each stage's box-head gradient divided by 3, scores averaged over the stages at
inference) and the 3x schedule: 270k iterations at batch 16.

  python -m clipjax.main --config=configs/detect/coco_vit_b16_cascade.py --config.init=runs/vit_b16_dr \
      --config.data.path=/data/coco --workdir=runs/vit_b16_dr_coco_cascade

Arguments: steps=270000, batch=16.
"""

import os

from ml_collections import ConfigDict

from clipjax.config import load_config, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, steps=270_000, batch=16)
    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coco_vit_b16_mask_rcnn.py")
    c = load_config(f"{base}:steps={arg.steps},batch={arg.batch}")
    c.detection.stage_ious = (0.5, 0.6, 0.7)
    return c
