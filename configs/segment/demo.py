"""Demo: finetune the demo's pretrained tiny CLIP image tower to segment the synthetic scenes.

  python -m clipjax.main --config=configs/demo.py --workdir=runs/demo                          # pretrain first
  python -m clipjax.main --config=configs/segment/demo.py --config.init=runs/demo --workdir=runs/demo_seg
  python -m clipjax.main --config=configs/segment/demo.py --workdir=runs/demo_seg_scratch      # the baseline

The ADE20K recipe's machinery at toy scale on 2 CPU cores: 11 classes (background and the 10 shapes) of
32 px scenes, UperNet on a ViTDet simple feature pyramid from the stride-8 patch grid with an auxiliary FCN
head, random resize (0.5-2x) + crop with the one-class cap, flips, photometric distortion, warmup then
polynomial decay, layer decay 0.9; mIoU / mAcc / aAcc over 200 held-out scenes every 100 steps, whole
images (one window each), the best weights kept in <workdir>/best. At this size (a 4 x 4 patch grid) 300
steps separate the shapes from the background well but tell few shapes apart: mIoU 0.11, pixel accuracy 0.90
(2 cores, 2 minutes, 2026-12-05).
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.task = "segment"
    c.batch_size = 32
    c.total_steps = 300
    c.log_every = 50
    c.eval_every = 100
    c.checkpoint_every = 150
    # The demo pretraining's architecture (when config.init is given, it is read from the weights).
    c.model = ConfigDict({"name": "vit_ti16", "image_size": 32, "embed_dim": 128, "drop_path": 0.1})
    c.model.image = ConfigDict({"width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "patch_size": 8, "stem": "conv"})
    c.optim = ConfigDict({"lr": 1e-3, "warmup_steps": 30, "weight_decay": 0.01, "layer_decay": 0.9, "schedule": "poly"})
    c.finetune = ConfigDict({"eval_examples": 200, "eval_batch_size": 100})
    c.segmentation = ConfigDict({"channels": 64, "eval_bucket": 32})
    c.data = ConfigDict({"kind": "synthetic", "flip": True})
    # One (larger) shape per scene: at 32 px the tower sees a 4 x 4 grid of patches.
    c.data.synthetic = ConfigDict({"num_examples": 2000, "max_objects": 1})
    return c
