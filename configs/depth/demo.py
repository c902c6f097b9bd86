"""Demo: finetune the demo's pretrained tiny CLIP image tower to estimate the synthetic scenes' depth.

  python -m clipjax.main --config=configs/demo.py --workdir=runs/demo                     # pretrain first
  python -m clipjax.main --config=configs/depth/demo.py --config.init=runs/demo --workdir=runs/demo_depth
  python -m clipjax.main --config=configs/depth/demo.py --workdir=runs/demo_depth_scratch  # the baseline

The NYUv2 recipe's machinery at toy scale on 2 CPU cores: 32 px scenes with metric depth maps (a sloping
background at 5-9.5 m, shapes at 1.5-4.5 m), the MIM-depth head on the stride-8 patch grid, SiLog loss, layer
decay 0.9, flips and photometric jitter, 300 steps of batch 32; rmse, abs_rel, delta1, ... over 200
held-out scenes (whole images, flip test, no Eigen crop: that is NYU's frame) every 100 steps.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.task = "depth"
    c.batch_size = 32
    c.total_steps = 300
    c.log_every = 50
    c.eval_every = 100
    c.checkpoint_every = 150
    # The demo pretraining's architecture (when config.init is given, it is read from the weights).
    c.model = ConfigDict({"name": "vit_ti16", "image_size": 32, "embed_dim": 128, "drop_path": 0.1})
    c.model.image = ConfigDict({"width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "patch_size": 8, "stem": "conv"})
    c.optim = ConfigDict({"lr": 1e-3, "warmup_steps": 30, "weight_decay": 0.05, "layer_decay": 0.9})
    c.finetune = ConfigDict({"eval_examples": 200, "eval_batch_size": 100})
    c.depth = ConfigDict({"eigen_crop": False})
    c.data = ConfigDict({"kind": "synthetic", "flip": True})
    c.data.synthetic = ConfigDict({"num_examples": 2000, "max_objects": 4})
    return c
