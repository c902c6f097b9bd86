"""ADE20K semantic segmentation with MobileCLIP's MCi0/1/2 image encoders: Semantic FPN.

The ViT-B/16 schedule (`ade20k_vit_b16.py`: 160k iterations at batch 16, 512x512 crops, mmseg's pipeline,
warmup + polynomial decay, auxiliary FCN head) with MobileCLIP's image side: inputs in [0, 1] (the weights'
own normalisation wins when config.init is given), BatchNorm on each batch's statistics, the Semantic FPN
decoder on MCi's stride-4/8/16/32 features. lr 2e-4, layer decay 0.8 and drop path 0.05 / 0.1 / 0.1 are our
choices for these depths; the paper gives no MCi segmentation hyperparameters.

  python -m clipjax.main --config=configs/segment/ade20k_mci.py:model=mci2 --config.init=runs/mci2_dr \
      --config.data.path=/data/ade --workdir=runs/mci2_ade

Arguments: model=mci0|mci1|mci2 (default mci2), steps, batch as in ade20k_vit_b16.py.
"""

import os

from ml_collections import ConfigDict

from clipjax.config import choice, load_config, parse_arg
from clipjax.models.mci import MCI_PRESETS

DROP_PATH = {"mci0": 0.05, "mci1": 0.1, "mci2": 0.1}


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, model="mci2", steps=160_000, batch=16)
    choice("argument model", arg.model, MCI_PRESETS)
    vit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ade20k_vit_b16.py")
    c = load_config(f"{vit}:steps={arg.steps},batch={arg.batch}")
    c.model.update(name=arg.model, batch_norm="train", drop_path=DROP_PATH[arg.model])
    c.optim.update(lr=2e-4, layer_decay=0.8)
    c.data.normalize = "none"
    c.segmentation.decoder = "semantic_fpn"
    return c
