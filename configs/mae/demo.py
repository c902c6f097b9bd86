"""Demo: masked-autoencoder pretraining of the demo's tiny ViT on the built-in synthetic scenes, on a CPU.

  python -m clipjax.main --config=configs/mae/demo.py --workdir=runs/demo_mae
  python -m clipjax.main --config=configs/depth/demo.py --config.init=runs/demo_mae --workdir=runs/demo_mae_depth

The demo CLIP's image tower (32 px, 8 px patches, the convolutional stem, whose view of the removed patches is
blanked before it runs) with He et al.'s recipe at toy scale: 75% of the 16 patches removed, normalised-pixel
targets, a decoder of 2 blocks of width 64; AdamW (0.9, 0.95), weight decay 0.05, base lr 1.5e-4 x batch /
256, warmup, cosine; RandomResizedCrop (0.2-1) + flips. The samples seen match the demo CLIP pretraining's
(1,200 steps of 128). Reconstructions land in runs/demo_mae/reconstructions/. Argument: smoke (a shallower
tower, 60 steps: for tests).
"""

from ml_collections import ConfigDict

from clipjax.config import parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, smoke=False)
    c = ConfigDict()
    c.task = "mae"
    c.batch_size = 128
    c.total_steps = 1200
    c.log_every = 50
    c.checkpoint_every = 400
    c.eval_every = 400
    # The demo CLIP's image tower, so the two pretrainings finetune alike.
    c.model = ConfigDict({"name": "vit_ti16", "image_size": 32, "embed_dim": 128})
    c.model.image = ConfigDict({"width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "patch_size": 8, "stem": "conv"})
    c.mae = ConfigDict({"decoder_width": 64, "decoder_depth": 2, "decoder_heads": 4, "decoder_mlp_dim": 256})
    c.mae.update(eval_images=256, eval_batch_size=128, reconstructions=8)
    c.optim = ConfigDict(
        {"lr": 1.5e-4 * c.batch_size / 256 * 10, "warmup_steps": 100, "weight_decay": 0.05, "b1": 0.9, "b2": 0.95}
    )
    c.data = ConfigDict({"kind": "synthetic", "crop_scale": (0.2, 1.0), "flip": True})
    c.data.synthetic = ConfigDict({"num_examples": 200_000, "max_objects": 1})
    if arg.smoke:
        c.total_steps = 60
        c.log_every = 10
        c.checkpoint_every = 30
        c.eval_every = 30
        c.optim.warmup_steps = 10
        c.model.image.update(width=64, depth=2, mlp_dim=256)
        c.mae.update(eval_images=128)
    return c
