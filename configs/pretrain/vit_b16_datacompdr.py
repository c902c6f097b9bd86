"""CLIP ViT-B/16 on DataCompDR-1B: the paper's quality-caption pretraining (MobileCLIP's recipe).

Global batch 65,536; each image is paired with its real caption and one of its 5 synthetic captions and
the two losses are summed. AdamW lr 1e-3, 1,000 warmup steps, cosine to 0, weight decay 0.2, beta2 0.95,
grad-norm clip 1.0, bfloat16 compute. The paper's data-scaling runs use 20k steps (1.31B samples seen);
the long run uses 200k (`:steps=200000`).

  python -m clipjax.main --config=configs/pretrain/vit_b16_datacompdr.py \
      --config.data.path='/data/datacomp/{00000000..00139999}.tar' \
      --config.data.synthetic_path='/data/datacompdr/{00000000..00139999}.tar' \
      --config.eval.zeroshot.path=/data/tensorflow_datasets \
      --config.eval.retrieval.path=/data/coco/test5k.jsonl --workdir=runs/vit_b16_dr

`:cluster=v4-64`, `v5p-128` or `h100x16` (2 nodes x 8 H100) picks a mesh for that machine (see CLUSTERS and
README "Scaling out"). The images come from the DataComp shards; each DataCompDR shard of the same file name holds their
synthetic captions, joined by uid. Arguments (`file.py:key=value,...`): steps=20000; captions=both (real +
synthetic, summed), synthetic, mixed, or real; distill=W adds MobileCLIP's distillation from the teacher
embeddings the DataCompDR shards store, the loss becoming (1 - W) CLIP + W KD (MobileCLIP-B: distill=0.75);
off by default, so that the run isolates caption quality. `vit_b16_datacomp.py` is the web-caption baseline.
Evaluation: zero-shot ImageNet from TFDS (`--config.eval.zeroshot.kind=folder` for an ImageFolder,
`none` to skip it) and, when a path is given, retrieval.
"""

from ml_collections import ConfigDict

from clipjax.config import choice, parse_arg

# Mesh and input workers per cluster (`:cluster=NAME`). The batch splits over every device either way;
# fsdp shards parameters and AdamW moments over the inner axis, which the device order puts on the fastest
# links (a host's ICI neighbours on TPU, NVLink within a GPU node). Global batch 65,536 gives per device:
# v4-64 (32 chips, 8 hosts) 2,048; v5p-128 (64 chips, 16 hosts) 1,024; 2 nodes x 8 H100 4,096.
CLUSTERS = {
    "any": {"mesh": {"data": -1, "fsdp": 1}},
    "v4-64": {"mesh": {"data": 8, "fsdp": 4}},
    "v5p-128": {"mesh": {"data": 16, "fsdp": 4}},
    # 4,096 pairs per 80 GB GPU need the blocks' activations recomputed (saving only matmul outputs).
    "h100x16": {"mesh": {"data": 2, "fsdp": 8}, "remat": "dots"},
}


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, steps=20_000, captions="both", cluster="any", distill=0.0)
    choice("argument cluster", arg.cluster, CLUSTERS)
    cluster = CLUSTERS[arg.cluster]
    c = ConfigDict()
    c.batch_size = 65_536
    c.total_steps = arg.steps
    c.log_every = 100
    c.checkpoint_every = 1000
    c.keep_every = 10_000
    c.eval_every = 2000

    c.mesh = ConfigDict(cluster["mesh"])
    c.model = ConfigDict({"name": "vit_b16", "image_size": 224, "embed_dim": 512, "dtype": "bfloat16"})
    c.model.remat = cluster.get("remat", "none")
    c.model.text = ConfigDict({"name": "base", "context_length": 77})

    c.optim = ConfigDict(
        {"lr": 1e-3, "warmup_steps": 1000, "weight_decay": 0.2, "b1": 0.9, "b2": 0.95, "grad_clip_norm": 1.0}
    )
    c.loss = ConfigDict({"distill_weight": arg.distill})
    c.data = ConfigDict({"kind": "webdataset", "captions": arg.captions, "num_workers": 16, "crop_scale": (0.9, 1.0)})
    c.eval = ConfigDict(
        {
            "zeroshot": {"kind": "tfds", "dataset": "imagenet2012", "split": "validation", "batch_size": 1024},
            "retrieval": {"batch_size": 1024},
            "num_threads": 32,
        }
    )
    return c
