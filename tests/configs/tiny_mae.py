"""An MAE run small enough to start, compile and finish in seconds, for process-level tests: the tiny ViT of
tiny_pretrain.py (16 px, 8 px patches: 4 patches, 1 visible) with the conv stem, a one-block decoder;
raw-pixel targets (their mean colours are learnt within the 24 steps; norm-pix targets barely move from 1 in
so few); checkpoints every 6 steps and logs every 4, so logging windows straddle checkpoints."""

from ml_collections import ConfigDict


def get_config(arg=None):
    c = ConfigDict()
    c.task = "mae"
    c.batch_size = 16
    c.total_steps = 24
    c.log_every = 4
    c.checkpoint_every = 6
    c.keep_checkpoints = 20
    c.eval_every = 12
    c.progress_bar = False
    c.model = ConfigDict({"name": "vit_ti16", "image_size": 16, "embed_dim": 16})
    c.model.image = ConfigDict({"width": 32, "depth": 2, "heads": 2, "mlp_dim": 64, "patch_size": 8, "stem": "conv"})
    c.mae = ConfigDict({"decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2, "decoder_mlp_dim": 32})
    c.mae.update(norm_pix_loss=False, eval_images=32, eval_batch_size=16, reconstructions=2)
    c.optim = ConfigDict({"lr": 3e-3, "warmup_steps": 4, "weight_decay": 0.05, "b2": 0.95})
    c.data = ConfigDict({"kind": "synthetic", "crop_scale": (0.2, 1.0), "flip": True})
    c.data.synthetic = ConfigDict({"num_examples": 500, "max_objects": 1})
    return c
