"""Demo: linear probes of a pretrained tower on the built-in synthetic scenes, on a CPU, in about 15 seconds.

  python -m clipjax.main --config=configs/demo.py --workdir=runs/demo                        # pretrain first
  python -m clipjax.main --config=configs/probe/demo.py --config.init=runs/demo --workdir=runs/demo_probe
  python -m clipjax.main --config=configs/probe/demo.py --workdir=runs/demo_probe_random   # the baseline
  python -m clipjax.main --config=configs/probe/demo.py:task=segment --config.init=runs/demo_mae \
      --workdir=runs/demo_mae_probe_seg

The frozen tower's features of 2,000 training and 500 held-out scenes are computed once and cached in the
workdir; a linear head is fitted for every lr x weight decay of the grid (the best on the last 10% of the
training scenes) and scored on the held-out ones. Arguments: task=classify (the largest shape's category, top-1
/ top-5), segment (11 classes per pixel, mIoU) or depth (metres, rmse / abs_rel / delta1).
"""

from ml_collections import ConfigDict

from clipjax.config import choice, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, task="classify")
    choice("argument task", arg.task, ("classify", "segment", "depth"))
    c = ConfigDict()
    c.task = "probe"
    # The head's grid, measured on the demo tower's segmentation features (2026-12-06): after 400 steps of 64
    # the held-out slice picks lr 1 (lower ones are still far from converged at this step count). Depth's
    # `max_depth * sigmoid` head saturates at lr 1 and 3 on every tower, pretrained or random (a constant
    # prediction, rmse 3.98 m on the perspective scenes; docs/MINIATURE.md, 2026-12-07), so its grid is lower.
    lrs = (0.01, 0.03, 0.1) if arg.task == "depth" else (0.3, 1.0, 3.0)
    c.probe = ConfigDict({"task": arg.task, "lrs": lrs, "weight_decays": (0.0,), "steps": 400, "batch_size": 64})
    # The demo pretraining's tower (with config.init the architecture comes from the weights; without it this
    # tower is probed at random initialisation, the baseline) at its resolution.
    c.model = ConfigDict({"name": "vit_ti16", "image_size": 32, "embed_dim": 128})
    c.model.image = ConfigDict({"width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "patch_size": 8, "stem": "conv"})
    c.finetune = ConfigDict({"eval_examples": 500, "eval_batch_size": 128})
    c.data = ConfigDict({"kind": "synthetic"})
    # The scenes of the demo finetuning of the same task: one shape (classification, segmentation), or
    # clutter (depth).
    c.data.synthetic = ConfigDict({"num_examples": 2000, "max_objects": 4 if arg.task == "depth" else 1})
    return c
