"""ImageNet-1k finetuning of MobileCLIP's MCi0/1/2 image encoders.

The ViT-B/16 recipe (`imagenet_vit_b16.py`: 100 epochs, batch 1,024, AdamW lr 2e-3, wd 0.05, RandAugment,
mixup / cutmix, label smoothing, random erasing) with MobileCLIP's image side: 256 px inputs in [0, 1]
(no mean/std normalisation; the weights' own setting wins when config.init is given), BatchNorm statistics
of each batch with running averages kept, evaluation on 256 px centre crops at ratio 0.9 (timm's FastViT
default). Layer decay 0.8 over the 22-40 blocks and drop path 0.05 / 0.1 / 0.1 (MCi0 / 1 / 2) are our
choices for these depths; the paper gives no MCi finetuning hyperparameters.

  python -m clipjax.main --config=configs/finetune/imagenet_mci.py:model=mci2 \
      --config.init=runs/mci2_dr --config.data.path=/data/tensorflow_datasets --workdir=runs/mci2_in1k

Arguments: model=mci0|mci1|mci2 (default mci2), data, epochs, batch as in imagenet_vit_b16.py.
"""

import os

from ml_collections import ConfigDict

from clipjax.config import choice, load_config, parse_arg
from clipjax.models.mci import MCI_PRESETS

DROP_PATH = {"mci0": 0.05, "mci1": 0.1, "mci2": 0.1}


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, model="mci2", data="tfds", epochs=100, batch=1024)
    choice("argument model", arg.model, MCI_PRESETS)
    vit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_vit_b16.py")
    c = load_config(f"{vit}:data={arg.data},epochs={arg.epochs},batch={arg.batch}")
    c.model.update(name=arg.model, image_size=256, batch_norm="train", drop_path=DROP_PATH[arg.model])
    c.optim.layer_decay = 0.8
    c.data.normalize = "none"
    c.finetune.eval_crop_ratio = 0.9
    return c
