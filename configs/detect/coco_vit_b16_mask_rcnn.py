"""COCO instance segmentation with a ViT-B/16 image tower: Mask R-CNN on ViTDet's simple feature pyramid.

The paper's setting (REFERENCE.md): Mask R-CNN, 1x schedule = 90k iterations at batch 16, large-scale jitter
(scale 0.1-2.0) at 1024x1024, single-scale test at 1024 px (longer side); box and mask AP from pycocotools
over val2017. The rest is ViTDet's ViT-B recipe (detectron2's mask_rcnn_vitdet_b): window attention (14 x 14)
with global attention in blocks 2, 5, 8 and 11, the CLS token dropped and the position embeddings resized
to the 64 x 64 grid when the weights are loaded; 2-conv RPN head, 4conv1fc box head and mask head with
channel LayerNorm; AdamW lr 1e-4, weight decay 0.1, layer decay 0.7, drop path 0.1, 250 warmup iterations,
lr x 0.1 at 88.9% and 96.3% of the schedule. ViTDet also adds relative position biases to the attention;
clipjax's tower keeps CLIP's absolute position embeddings only.

  python -m clipjax.main --config=configs/detect/coco_vit_b16_mask_rcnn.py --config.init=runs/vit_b16_dr \
      --config.data.path=/data/coco --workdir=runs/vit_b16_dr_coco

data.path holds annotations/instances_{train,val}2017.json and the train2017/ and val2017/ image folders.
Arguments: steps=90000, batch=16.
"""

from ml_collections import ConfigDict

from clipjax.config import parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, steps=90_000, batch=16)
    c = ConfigDict()
    c.task = "detect"
    c.batch_size = arg.batch
    c.total_steps = arg.steps
    c.log_every = 100
    c.eval_every = arg.steps // 6
    c.checkpoint_every = arg.steps // 30
    c.model = ConfigDict({"name": "vit_b16", "image_size": 1024, "dtype": "bfloat16", "drop_path": 0.1})
    c.optim = ConfigDict(
        {
            "lr": 1e-4,
            "warmup_steps": 250,
            "schedule": "step",
            "step_boundaries": (0.889, 0.963),
            "step_factor": 0.1,
            "weight_decay": 0.1,
            "no_decay": ("pos_embed", "cls_token"),  # as MAE, BEiT and ViTDet finetune
            "b2": 0.999,
            "eps": 1e-8,
            "grad_clip_norm": 0.0,
            "layer_decay": 0.7,
        }
    )
    c.data = ConfigDict({"kind": "coco", "flip": True, "num_workers": 8})
    c.finetune = ConfigDict({"eval_batch_size": 8})
    c.detection = ConfigDict({"window_size": 14, "scale_range": (0.1, 2.0)})  # global blocks (2, 5, 8, 11)
    return c
