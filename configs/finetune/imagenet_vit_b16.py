"""ImageNet-1k finetuning of a ViT-B/16 image tower: MAE's ViT-B recipe, as the paper finetunes every encoder.

100 epochs at global batch 1,024 (125,114 steps), AdamW (0.9, 0.999), lr 5e-4 x 1024 / 256 = 2e-3, 5 warmup
epochs, cosine to 1e-6, weight decay 0.05, layer-wise lr decay 0.65, drop path 0.1, no gradient clipping;
RandAugment m9 mstd0.5, mixup 0.8, cutmix 1.0 (switch 0.5), label smoothing 0.1, random erasing 0.25,
RandomResizedCrop (0.08-1) + flip at 224 px; global average pooling; evaluation on 224 px centre crops of
256 px (ratio 0.875), every epoch; bfloat16 compute.

  python -m clipjax.main --config=configs/finetune/imagenet_vit_b16.py \
      --config.init=runs/vit_b16_dr --config.data.path=/data/tensorflow_datasets \
      --workdir=runs/vit_b16_dr_in1k

`config.init`: a pretraining workdir or a converted checkpoint (`python -m clipjax.convert`); leave it
unset for the from-scratch baseline. Arguments: data=tfds (TFDS imagenet2012 under data.path) or folder
(data.path/train/<wnid>/*.JPEG and data.path/val/<wnid>/*.JPEG); epochs=100; batch=1024 (the lr scales).
"""

from ml_collections import ConfigDict

from clipjax.config import choice, parse_arg

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, data="tfds", epochs=100, batch=1024)
    choice("argument data", arg.data, ("tfds", "folder"))
    steps_per_epoch = IMAGENET_TRAIN_IMAGES // arg.batch
    c = ConfigDict()
    c.task = "finetune"
    c.batch_size = arg.batch
    c.total_steps = arg.epochs * steps_per_epoch
    c.log_every = 100
    c.eval_every = steps_per_epoch
    c.checkpoint_every = steps_per_epoch
    c.keep_checkpoints = 2

    c.model = ConfigDict({"name": "vit_b16", "image_size": 224, "dtype": "bfloat16", "drop_path": 0.1})
    lr = 5e-4 * arg.batch / 256
    c.optim = ConfigDict(
        {
            "lr": lr,
            "warmup_steps": 5 * steps_per_epoch,
            "min_lr_ratio": 1e-6 / lr,
            "weight_decay": 0.05,
            "no_decay": ("pos_embed", "cls_token"),  # as MAE, BEiT and ViTDet finetune
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "grad_clip_norm": 0.0,
            "layer_decay": 0.65,
        }
    )
    c.finetune = ConfigDict({"pool": "mean", "label_smoothing": 0.1, "random_erasing": 0.25})
    c.data = ConfigDict(
        {
            "kind": arg.data,
            "crop_scale": (0.08, 1.0),
            "flip": True,
            "num_workers": 16,
            "eval_split": "validation" if arg.data == "tfds" else "val",
        }
    )
    c.eval = ConfigDict({"num_threads": 32})
    return c
