"""ADE20K semantic segmentation with a ViT-B/16 image tower: UperNet on a ViTDet simple feature pyramid.

The paper's setting (REFERENCE.md): 160k iterations at batch 16 on 512x512 crops (the ViT's position
embeddings are resized to the 32x32 grid when the weights are loaded), AdamW, warmup of 1,500 iterations then
polynomial decay (power 1), weight decay 0.01; mmseg's training pipeline (random resize of (2048, 512) by
0.5-2.0, crop with the 0.75 one-class cap, flip, photometric distortion); an auxiliary FCN head (weight 0.4)
on the pyramid's stride-16 level. Evaluation every 16k iterations on the 2,000 validation images resized to
short side 512, sliding 512x512 windows with stride 341, logits resized to each image's original size,
mIoU from the dataset-level confusion matrix. The lr is swept in 5e-5..5e-4 by the paper (1e-4 here:
`--config.optim.lr`); layer decay 0.65 and drop path 0.1 follow MAE / BEiT's ADE20K finetuning.

  python -m clipjax.main --config=configs/segment/ade20k_vit_b16.py --config.init=runs/vit_b16_dr \
      --config.data.path=/data/ade --workdir=runs/vit_b16_dr_ade

data.path holds ADEChallengeData2016/{images,annotations}/{training,validation}. Arguments: steps=160000,
batch=16.
"""

from ml_collections import ConfigDict

from clipjax.config import parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, steps=160_000, batch=16)
    c = ConfigDict()
    c.task = "segment"
    c.batch_size = arg.batch
    c.total_steps = arg.steps
    c.log_every = 100
    c.eval_every = arg.steps // 10
    c.checkpoint_every = arg.steps // 20
    c.model = ConfigDict({"name": "vit_b16", "image_size": 512, "dtype": "bfloat16", "drop_path": 0.1})
    c.optim = ConfigDict(
        {
            "lr": 1e-4,
            "warmup_steps": 1500,
            "schedule": "poly",
            "poly_power": 1.0,
            "weight_decay": 0.01,
            "no_decay": ("pos_embed", "cls_token"),  # as MAE, BEiT and ViTDet finetune
            "b2": 0.999,
            "eps": 1e-8,
            "grad_clip_norm": 0.0,
            "layer_decay": 0.65,
        }
    )
    c.data = ConfigDict({"kind": "ade20k", "flip": True, "num_workers": 8})
    c.finetune = ConfigDict({"eval_batch_size": 8})
    c.segmentation = ConfigDict({"decoder": "upernet", "mode": "slide", "eval_stride": 341})
    return c
