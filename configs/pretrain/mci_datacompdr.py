"""MobileCLIP's MCi0/1/2 image encoders pretrained on DataCompDR (the paper's mobile-encoder experiments).

Everything `vit_b16_datacompdr.py` sets (global batch 65,536, AdamW lr 1e-3, 1,000 warmup steps, wd 0.2,
beta2 0.95, clip 1.0, bf16, real + synthetic caption losses summed), with MobileCLIP's image side: 256 px
images in [0, 1] without mean/std normalisation, BatchNorm trained with the global batch's statistics, and
MobileCLIP-S1/S2's text tower (the base transformer without the causal mask).

  python -m clipjax.main --config=configs/pretrain/mci_datacompdr.py:model=mci2,cluster=v5p-128 \
      --config.data.path='/data/datacomp/{00000000..00139999}.tar' \
      --config.data.synthetic_path='/data/datacompdr/{00000000..00139999}.tar' \
      --config.eval.zeroshot.path=/data/tensorflow_datasets --workdir=runs/mci2_dr

Arguments: model=mci0|mci1|mci2 (default mci2), steps=20000 (200000: MobileCLIP's full run), captions,
cluster and distill as in vit_b16_datacompdr.py (MobileCLIP-S0/S1/S2 train on distillation alone: distill=1).
"""

import os

from ml_collections import ConfigDict

from clipjax.config import choice, load_config, parse_arg
from clipjax.models.mci import MCI_PRESETS


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, model="mci2", steps=20_000, captions="both", cluster="any", distill=0.0)
    choice("argument model", arg.model, MCI_PRESETS)
    vit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vit_b16_datacompdr.py")
    c = load_config(f"{vit}:steps={arg.steps},captions={arg.captions},cluster={arg.cluster},distill={arg.distill}")
    c.model.update(name=arg.model, image_size=256, embed_dim=512, batch_norm="train")
    c.model.text.causal = False
    c.data.normalize = "none"
    return c
