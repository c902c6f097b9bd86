"""Linear probes of a pretrained tower on the paper's datasets: ImageNet-1k classification, ADE20K
segmentation, NYUv2 depth (DINOv2's linear protocol, with a grid over the head's lr and weight decay).

  python -m clipjax.main --config=configs/probe/paper.py:task=classify --config.init=runs/b16_dr_20k \
      --config.data.path=/data/tensorflow_datasets --workdir=runs/b16_dr_20k_probe_in1k
  python -m clipjax.main --config=configs/probe/paper.py:task=segment --config.init=runs/mae_b16_in1k \
      --config.data.path=/data/ade --workdir=runs/mae_b16_probe_ade
  python -m clipjax.main --config=configs/probe/paper.py:task=depth --config.init=weights/mae_b16 \
      --config.data.path=/data/nyu_depth_v2 --workdir=runs/mae_b16_probe_nyu

The tower's features of every training and validation image are computed once (224 px centre crops for
ImageNet, as its finetuning evaluates; 512 px central squares of ADE20K images resized to short side 512; the
central 480 x 480 window of NYUv2's 480 x 640 frames) and cached in the workdir; dense features are stored in
float16 (ADE20K's 20,210 training images at ViT-B/16's 32 x 32 x 768 take about 32 GB: give the workdir room,
or probe a subset with :train=N). Arguments: task=classify|segment|depth; data=tfds|folder (classify);
train=N (the first N training images; 0: all); features=pooled|blocks (classify: DINOv2's last 4 blocks).
"""

from ml_collections import ConfigDict

from clipjax.config import choice, parse_arg

SETTINGS = {  # image size, data kind, evaluation batch
    "classify": (224, None, 256),
    "segment": (512, "ade20k", 16),
    "depth": (480, "nyu", 16),
}


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, task="classify", data="tfds", train=0, features="pooled")
    choice("argument task", arg.task, tuple(SETTINGS))
    choice("argument data", arg.data, ("tfds", "folder"))
    size, kind, eval_batch = SETTINGS[arg.task]
    c = ConfigDict()
    c.task = "probe"
    c.model = ConfigDict({"name": "vit_b16", "image_size": size, "dtype": "bfloat16"})
    c.probe = ConfigDict(
        {
            "task": arg.task,
            "features": arg.features,
            # AdamW on standardised features; on the demo scenes the best lr lies near 0.1-1 (300 steps).
            "lrs": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
            "weight_decays": (0.0, 1e-4),
            # About 8 epochs of ImageNet's cached features; 3 of ADE20K's and NYUv2's.
            "steps": 10_000 if arg.task == "classify" else 4000,
            "batch_size": 1024 if arg.task == "classify" else 16,
            "train_examples": arg.train or None,
        }
    )
    c.finetune = ConfigDict({"eval_batch_size": eval_batch})
    c.data = ConfigDict({"kind": kind or arg.data, "num_workers": 16})
    if arg.task == "classify":
        c.data.eval_split = "validation" if arg.data == "tfds" else "val"
    if arg.task == "depth":
        c.data.train_split, c.data.eval_split = "nyu_train.txt", "nyu_test.txt"
    c.eval = ConfigDict({"num_threads": 32})
    return c
