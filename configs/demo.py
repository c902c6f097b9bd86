"""Demo: pretrain a tiny CLIP on the built-in synthetic scenes, on a laptop CPU, in under 10 minutes.

  python -m clipjax.main --config=configs/demo.py --workdir=runs/demo
  python -m clipjax.main --config=configs/demo.py:smoke --workdir=runs/smoke   # under 2 minutes, for tests

The captions are the synthetic dataset's quality captions (the DataCompDR analogue); add
`--config.data.captions=real` to train on its noisy alt-text captions instead and compare.
"""

from ml_collections import ConfigDict

from clipjax.config import parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, smoke=False)
    c = ConfigDict()
    c.batch_size = 128
    c.total_steps = 1500
    c.log_every = 50
    c.checkpoint_every = 500
    c.eval_every = 500

    c.model = ConfigDict()
    c.model.name = "vit_ti16"  # shrunk below: 64 px scenes in 8 px patches
    c.model.image_size = 64
    c.model.embed_dim = 128
    c.model.image = ConfigDict({"width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "patch_size": 8})
    c.model.text = ConfigDict({"width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "context_length": 64})

    c.optim = ConfigDict({"lr": 1e-3, "warmup_steps": 100, "weight_decay": 0.1})
    c.data = ConfigDict({"captions": "synthetic", "synthetic": {"num_examples": 200_000}})
    c.eval = ConfigDict({"zeroshot": {"num_examples": 1000, "batch_size": 200}})

    if arg.smoke:
        c.total_steps = 60
        c.log_every = 10
        c.checkpoint_every = 30
        c.eval_every = 0
        c.batch_size = 64
        c.model.image.depth = 2
        c.model.text.depth = 2
        c.optim.warmup_steps = 10
        c.eval.zeroshot = ConfigDict({"num_examples": 400, "batch_size": 200})
    return c
