"""Demo: finetune the demo's pretrained tiny CLIP image tower to classify the synthetic scenes' shapes.

  python -m clipjax.main --config=configs/demo.py --workdir=runs/demo                        # pretrain first
  python -m clipjax.main --config=configs/finetune/demo.py --config.init=runs/demo --workdir=runs/demo_ft
  python -m clipjax.main --config=configs/finetune/demo.py --workdir=runs/demo_scratch        # the baseline

The ImageNet recipe's machinery at toy scale on 2 CPU cores: 10 classes (the largest object's shape) of
32 px scenes, 2,000 training scenes (so that pretraining has something to add), 400 steps of batch 64,
layer decay 0.75, drop path 0.1, mixup / cutmix, RandAugment, random erasing, an EMA of the weights, top-1
and top-5 on 1,000 held-out scenes every 100 steps, the best weights kept in <workdir>/best.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.task = "finetune"
    c.batch_size = 64
    c.total_steps = 400
    c.log_every = 50
    c.eval_every = 100
    c.checkpoint_every = 200
    # The demo pretraining's architecture (when config.init is given, it is read from the weights).
    c.model = ConfigDict({"name": "vit_ti16", "image_size": 32, "embed_dim": 128, "drop_path": 0.1})
    c.model.image = ConfigDict({"width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "patch_size": 8, "stem": "conv"})
    c.optim = ConfigDict({"lr": 1e-3, "warmup_steps": 40, "weight_decay": 0.05, "layer_decay": 0.75, "ema_decay": 0.99})
    # CLIP trained the pooled CLS token; at this scale it is the better feature to finetune from.
    c.finetune = ConfigDict(
        {"pool": "cls", "randaugment_magnitude": 5.0, "eval_examples": 1000, "eval_batch_size": 200}
    )
    c.data = ConfigDict({"kind": "synthetic", "flip": True, "crop_scale": (0.8, 1.0)})
    c.data.synthetic = ConfigDict({"num_examples": 2000, "max_objects": 1})
    return c
