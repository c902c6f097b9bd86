"""MAE pretraining of a ViT-B/16 (He et al. 2021): the paper's self-supervised baseline.

He et al.'s recipe: 75% of the patches removed per image, normalised-pixel targets, a decoder of 8 blocks of
width 512 with 16 heads; AdamW (0.9, 0.95), weight decay 0.05, base lr 1.5e-4 x batch / 256 at global batch
4,096, 40 warmup epochs then cosine, per iteration; RandomResizedCrop (0.2-1, bicubic) + flips only; the
encoder in MAE's layout (no ln_pre, fixed sine-cosine position embedding, LayerNorm epsilon 1e-6) with
ImageNet normalisation; bfloat16 compute.

  # ImageNet-1k, 1600 epochs (2.05B samples seen, the paper's match for CLIP): TFDS or an ImageFolder
  python -m clipjax.main --config=configs/pretrain/mae_vit_b16.py --config.data.path=/data/tensorflow_datasets \
      --workdir=runs/mae_b16_in1k
  python -m clipjax.main --config=configs/pretrain/mae_vit_b16.py:data=folder --config.data.path=/data/imagenet \
      --workdir=runs/mae_b16_in1k
  # the images of DataComp shards (captions ignored), as many samples as a CLIP run of 20k steps at 65,536
  python -m clipjax.main --config=configs/pretrain/mae_vit_b16.py:data=webdataset,samples_seen=1310720000 \
      --config.data.path='/data/datacomp/{00000000..00139999}.tar' --workdir=runs/mae_b16_datacomp

Arguments: data=tfds|folder|webdataset; epochs=1600 (of ImageNet-1k's 1,281,167 images: the step count and the
40 warmup epochs); samples_seen=N (instead of epochs: total steps = N / batch, warmup 40 / 1600 of them);
batch=4096 (the lr scales); cluster=any|v4-64|v5p-128|h100x16 (the meshes of the CLIP configs).
"""

from ml_collections import ConfigDict

from clipjax.config import choice, parse_arg

IMAGENET_TRAIN_IMAGES = 1_281_167
MAE_EPOCHS, WARMUP_EPOCHS = 1600, 40
MESHES = {"any": {"data": -1, "fsdp": 1}, "v4-64": {"data": -1, "fsdp": 4}, "v5p-128": {"data": -1, "fsdp": 4},
          "h100x16": {"data": -1, "fsdp": 8}}  # fmt: skip


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, data="tfds", epochs=MAE_EPOCHS, samples_seen=0, batch=4096, cluster="any")
    choice("argument data", arg.data, ("tfds", "folder", "webdataset"))
    choice("argument cluster", arg.cluster, tuple(MESHES))
    samples = arg.samples_seen or arg.epochs * IMAGENET_TRAIN_IMAGES
    c = ConfigDict()
    c.task = "mae"
    c.batch_size = arg.batch
    c.total_steps = max(1, samples // arg.batch)
    warmup = (
        c.total_steps * WARMUP_EPOCHS // MAE_EPOCHS
        if arg.samples_seen
        else WARMUP_EPOCHS * IMAGENET_TRAIN_IMAGES // arg.batch
    )
    c.log_every = 100
    c.checkpoint_every = 2000
    c.keep_checkpoints = 2
    c.eval_every = 10_000
    c.mesh = ConfigDict(MESHES[arg.cluster])
    c.model = ConfigDict({"name": "vit_b16", "image_size": 224, "dtype": "bfloat16"})
    c.model.image = ConfigDict({"layout": "mae"})
    c.optim = ConfigDict(
        {
            "lr": 1.5e-4 * arg.batch / 256,
            "warmup_steps": warmup,
            "weight_decay": 0.05,
            "b1": 0.9,
            "b2": 0.95,
            "eps": 1e-8,
            "grad_clip_norm": 0.0,  # MAE does not clip
        }
    )
    c.data = ConfigDict(
        {
            "kind": arg.data,
            "normalize": "imagenet",
            "crop_scale": (0.2, 1.0),
            "flip": True,
            "num_workers": 16,
            "eval_split": "validation" if arg.data == "tfds" else "val",
        }
    )
    c.eval = ConfigDict({"num_threads": 32})
    return c
