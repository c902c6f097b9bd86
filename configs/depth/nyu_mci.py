"""NYUv2 depth finetuning of MobileCLIP's MCi0/1/2 image encoders: the multi-scale depth head.

The ViT-B/16 recipe (`nyu_vit_b16.py`: 25 epochs at batch 24, 480x480 crops, AdamW 5e-4 -> 3e-5, SiLog,
flip test, Eigen crop) with MobileCLIP's image side: inputs in [0, 1] (the weights' own normalisation wins
when config.init is given), BatchNorm on each batch's statistics. The head starts from MCi's stride-32
features (3 deconvolutions, 2 bilinear upsamplings) with skips from its stride-16/8/4 stages; the 480x640
test frames fit whole (both sides are multiples of 32) but are still evaluated in 480x480 windows, as the
ViT is. Layer decay 0.8 and drop path 0.05 / 0.1 / 0.1 are our choices for these depths.

  python -m clipjax.main --config=configs/depth/nyu_mci.py:model=mci2 --config.init=runs/mci2_dr \
      --config.data.path=/data/nyu_depth_v2 --workdir=runs/mci2_nyu

Arguments: model=mci0|mci1|mci2 (default mci2), epochs, batch as in nyu_vit_b16.py.
"""

import os

from ml_collections import ConfigDict

from clipjax.config import choice, load_config, parse_arg
from clipjax.models.mci import MCI_PRESETS

DROP_PATH = {"mci0": 0.05, "mci1": 0.1, "mci2": 0.1}


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, model="mci2", epochs=25, batch=24)
    choice("argument model", arg.model, MCI_PRESETS)
    vit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nyu_vit_b16.py")
    c = load_config(f"{vit}:epochs={arg.epochs},batch={arg.batch}")
    c.model.update(name=arg.model, batch_norm="train", drop_path=DROP_PATH[arg.model])
    c.optim.layer_decay = 0.8
    c.data.normalize = "none"
    return c
