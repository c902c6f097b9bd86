"""NYUv2 depth finetuning of a ViT-B/16 image tower: the MIM-depth setting the paper follows.

25 epochs of BTS's 24,231 training pairs at batch 24 (25,240 steps), 480x480 crops (the ViT's position
embeddings are resized to the 30x30 grid when the weights are loaded), flips and photometric jitter; AdamW,
lr 5e-4 decaying by a cosine to 3e-5 after 500 warmup steps, layer-wise lr decay 0.9, drop path 0.1; the
MIM-depth head (3 deconvolutions of 32 channels, conv, bilinear upsampling to full size, sigmoid x 10 m),
SiLog loss (lambda 0.5). Evaluation on the 654 test frames every epoch: two 480x480 windows per 480x640
frame, flip test, Eigen crop, depths in (1e-3, 10) m. Weight decay 0.05 and the warmup length are our
choices; the reference gives none.

  python -m clipjax.main --config=configs/depth/nyu_vit_b16.py --config.init=runs/vit_b16_dr \
      --config.data.path=/data/nyu_depth_v2 --workdir=runs/vit_b16_dr_nyu

data.path holds BTS's layout: nyu_train.txt / nyu_test.txt (lines "<rgb> <depth png> <focal>", paths from
the root) with the RGB images and 16-bit depth PNGs in millimetres. Arguments: epochs=25, batch=24.
"""

from ml_collections import ConfigDict

from clipjax.config import parse_arg

NYU_TRAIN_PAIRS = 24_231


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, epochs=25, batch=24)
    steps_per_epoch = NYU_TRAIN_PAIRS // arg.batch
    c = ConfigDict()
    c.task = "depth"
    c.batch_size = arg.batch
    c.total_steps = arg.epochs * steps_per_epoch
    c.log_every = 100
    c.eval_every = steps_per_epoch
    c.checkpoint_every = steps_per_epoch
    c.model = ConfigDict({"name": "vit_b16", "image_size": 480, "dtype": "bfloat16", "drop_path": 0.1})
    c.optim = ConfigDict(
        {
            "lr": 5e-4,
            "min_lr_ratio": 3e-5 / 5e-4,
            "warmup_steps": 500,
            "weight_decay": 0.05,
            "no_decay": ("pos_embed", "cls_token"),  # as MAE, BEiT and ViTDet finetune
            "b2": 0.999,
            "eps": 1e-8,
            "grad_clip_norm": 0.0,
            "layer_decay": 0.9,
        }
    )
    c.data = ConfigDict(
        {"kind": "nyu", "train_split": "nyu_train.txt", "eval_split": "nyu_test.txt", "flip": True, "num_workers": 8}
    )
    c.finetune = ConfigDict({"eval_batch_size": 16})
    return c
