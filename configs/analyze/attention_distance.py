"""The mean attention distance of every head of every block (the paper's Fig. 3) for one or more checkpoints.

  # the demo: quality vs noisy captions (pretrain both with configs/demo.py, the second with
  # --config.data.captions=real), on 1,000 held-out synthetic scenes
  python -m clipjax.main --config=configs/analyze/attention_distance.py \
      --config.analyze.inits='("runs/demo", "runs/demo_real")' --workdir=runs/attention_demo
  # the paper's: ImageNet-1k validation (TFDS, or :data=folder with <path>/val/<class>/<image>)
  python -m clipjax.main --config=configs/analyze/attention_distance.py:data=tfds \
      --config.analyze.inits='("runs/b16_datacomp", "runs/b16_datacompdr")' \
      --config.data.path=/data/tensorflow_datasets --workdir=runs/attention_in1k

Writes attention_distance.json and attention_distance.png into the workdir. Arguments: data=synthetic|tfds|
folder; images=N (default 1000; the paper's figure uses the 50,000 of ImageNet val: images=50000).
"""

from ml_collections import ConfigDict

from clipjax.config import choice, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, data="synthetic", images=1000)
    choice("argument data", arg.data, ("synthetic", "tfds", "folder"))
    c = ConfigDict()
    c.task = "analyze"
    c.analyze = ConfigDict({"kind": "attention_distance", "num_images": arg.images, "batch_size": 64})
    c.data = ConfigDict({"kind": arg.data})
    if arg.data == "tfds":
        c.data.eval_split = "validation"
    elif arg.data == "folder":
        c.data.eval_split = "val"
    else:  # the demo pretraining's scenes: one shape each
        c.data.synthetic = ConfigDict({"max_objects": 1})
    return c
