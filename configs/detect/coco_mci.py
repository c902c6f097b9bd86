"""COCO instance segmentation with MobileCLIP's MCi0/1/2 image encoders: Mask R-CNN on an FPN.

The ViT-B/16 1x schedule (`coco_vit_b16_mask_rcnn.py`: 90k iterations at batch 16, large-scale jitter at
1024 px, step decay) with the classic FPN Mask R-CNN heads (detectron2's mask_rcnn_R_50_FPN: FPN neck with
stride 64 subsampled, 1-conv RPN head, 2fc box head, mask head without norms) on MCi's stride-4/8/16/32
features, MobileCLIP's inputs in [0, 1], BatchNorm on the global batch's statistics. lr 2e-4, layer decay 0.8
and drop path 0.05 / 0.1 / 0.1 are our choices for these depths; the paper reports MCi2 at 49.5 box AP without
its hyperparameters.

  python -m clipjax.main --config=configs/detect/coco_mci.py:model=mci2 --config.init=runs/mci2_dr \
      --config.data.path=/data/coco --workdir=runs/mci2_coco

Arguments: model=mci0|mci1|mci2 (default mci2), steps, batch as in coco_vit_b16_mask_rcnn.py.
"""

import os

from ml_collections import ConfigDict

from clipjax.config import choice, load_config, parse_arg
from clipjax.models.mci import MCI_PRESETS

DROP_PATH = {"mci0": 0.05, "mci1": 0.1, "mci2": 0.1}


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, model="mci2", steps=90_000, batch=16)
    choice("argument model", arg.model, MCI_PRESETS)
    vit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coco_vit_b16_mask_rcnn.py")
    c = load_config(f"{vit}:steps={arg.steps},batch={arg.batch}")
    c.model.update(name=arg.model, batch_norm="train", drop_path=DROP_PATH[arg.model])
    c.optim.update(lr=2e-4, layer_decay=0.8)
    c.data.normalize = "none"
    c.detection.update(window_size=0, rpn_convs=1, box_conv_dims=(), box_fc_dims=(1024, 1024),
                       head_norm=False)  # fmt: skip
    return c
