"""Zero-shot ImageNet (and, given a JSONL, retrieval) of saved weights, without training.

  python -m clipjax.convert --source=open_clip --model=ViT-B-16 --checkpoint=open_clip_model.safetensors \
      --workdir=weights/vit_b16
  python -m clipjax.main --config=configs/evaluate.py --config.init=weights/vit_b16 \
      --config.eval.zeroshot.path=/data/tensorflow_datasets --workdir=runs/eval_vit_b16

`config.init` may also be a pretraining workdir (its newest checkpoint). The model and the image
normalisation come from the weights. `--config.eval.zeroshot.kind=folder --config.eval.zeroshot.path=
/data/imagenet/val` reads an ImageFolder instead of TFDS; add `--config.eval.retrieval.path=coco.jsonl`
for retrieval.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.task = "evaluate"
    c.progress_bar = False
    c.eval = ConfigDict(
        {
            "zeroshot": {"kind": "tfds", "dataset": "imagenet2012", "split": "validation", "batch_size": 256},
            "retrieval": {"batch_size": 256},
        }
    )
    return c
