"""CLIP ViT-B/16 on DataComp-1B with its web captions: the paper's baseline for caption quality.

Everything but the captions is `vit_b16_datacompdr.py`'s (batch 65,536, lr 1e-3, 1,000 warmup steps, wd 0.2,
beta2 0.95, clip 1.0), so the two runs differ in caption quality only.

  python -m clipjax.main --config=configs/pretrain/vit_b16_datacomp.py \
      --config.data.path='/data/datacomp/{00000000..00139999}.tar' \
      --config.eval.zeroshot.path=/data/tensorflow_datasets --workdir=runs/vit_b16_dc

Arguments: steps=20000 (the data-scaling setting) or steps=200000; cluster as in vit_b16_datacompdr.py.
"""

import os

from ml_collections import ConfigDict

from clipjax.config import load_config, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, steps=20_000, cluster="any")
    synthetic = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vit_b16_datacompdr.py")
    return load_config(f"{synthetic}:steps={arg.steps},captions=real,cluster={arg.cluster}")
