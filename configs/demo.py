"""Demo: pretrain a tiny CLIP on the built-in synthetic scenes, on a CPU, in under 10 minutes.

  python -m clipjax.main --config=configs/demo.py --workdir=runs/demo
  python -m clipjax.main --config=configs/demo.py:smoke --workdir=runs/smoke   # under 2 minutes, for tests

Scenes are 32 px with one object each (10 shapes, 8 colours, 2 sizes, 9 places); the captions are the
quality captions (the DataCompDR analogue). Add `--config.data.captions=real` to train on the noisy
alt-text-like captions instead and compare, or `--config.data.synthetic.max_objects=4` for cluttered
scenes (harder: a ViT this small needs far more steps to pick the main object out).

The image tower uses a convolutional stem: at this scale it learns shapes about twice as fast as the
plain patch embedding, which is what makes 10 minutes on 2 cores enough.
"""

from ml_collections import ConfigDict

from clipjax.config import parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, smoke=False)
    c = ConfigDict()
    c.batch_size = 128
    c.total_steps = 1200
    c.log_every = 50
    c.checkpoint_every = 400
    c.eval_every = 400

    c.model = ConfigDict()
    c.model.name = "vit_ti16"  # shrunk below
    c.model.image_size = 32
    c.model.embed_dim = 128
    c.model.image = ConfigDict({"width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "patch_size": 8, "stem": "conv"})
    c.model.text = ConfigDict({"width": 64, "depth": 2, "heads": 4, "mlp_dim": 256, "context_length": 16})

    c.optim = ConfigDict({"lr": 1e-3, "warmup_steps": 100, "weight_decay": 0.1})
    c.data = ConfigDict({"captions": "synthetic", "synthetic": {"num_examples": 200_000, "max_objects": 1}})
    c.eval = ConfigDict({"zeroshot": {"num_examples": 1000, "batch_size": 200}})

    if arg.smoke:  # a narrower, shallower image tower and fewer steps: above chance in about a minute
        c.total_steps = 250
        c.log_every = 25
        c.checkpoint_every = 125
        c.eval_every = 0
        c.model.image.update(width=64, depth=2, mlp_dim=256)
        c.optim.warmup_steps = 25
        c.eval.zeroshot = ConfigDict({"num_examples": 400, "batch_size": 200})
    return c
