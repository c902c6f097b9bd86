"""Data scaling (the paper's Fig. 2): CLIP pretrained on nested subsets of growing size, per caption policy,
then probed / finetuned; the fits say how the error falls with the pairs and how much data each policy needs.

  python -m clipjax.sweep --sweep=configs/scaling/data_scaling.py:scale=paper,cluster=h100x16 \
      --workdir=/shared/runs/scaling --emit=slurm                 # 8 pretrainings + 8 finetunings, for SLURM
  python -m clipjax.sweep --sweep=configs/scaling/data_scaling.py --workdir=runs/scaling   # on this CPU
  python -m clipjax.sweep fit --workdir=runs/scaling

scale=paper: ViT-B/16 (configs/pretrain/vit_b16_datacomp*.py), 20k steps at global batch 65,536 (1.31B samples
seen) on each subset of DataComp's pairs with their web captions (captions=real) or DataCompDR's synthetic ones
(synthetic, or both: real + synthetic summed), then each task of `tasks` from the pretraining's workdir. The
data paths are arguments: datacomp, datacompdr (the synthetic shards joined by uid), imagenet (TFDS), ade20k,
nyu, coco; cluster picks the pretraining's mesh (configs/pretrain/vit_b16_datacompdr.py).

scale=demo: the demo's smoke-sized CLIP (configs/demo.py:smoke) on subsets of the built-in scenes, `steps`
steps each (default 250 at batch 128: 32,000 samples seen), then the demo probes; about 15 minutes on a 2-core
CPU with seeds=2 (36 runs). On the built-in scenes the seed also draws the scenes, so each seed's subsets are
nested within that seed's scenes; on shards the subsets are the same for every seed (data.subset_seed).
scale=smoke: the same runs shrunk to seconds each (batch 32, 4 steps, one-block towers, small evaluations), to test the
machinery; its numbers mean nothing.

Arguments (lists join items with "+"): captions=real+synthetic; sizes (pairs, k / M / B allowed); tasks, from
zeroshot (the pretraining's own zero-shot top-1: no further run), probe_cls, probe_seg, probe_depth (frozen
linear probes), finetune_cls, finetune_seg, finetune_depth, finetune_det; seeds=N (seeds 0..N-1, each its own
pretraining and tasks); steps (pretraining steps; 0: the scale's default).
"""

from clipjax.config import ConfigError, choice, parse_arg
from clipjax.sweep.spec import Fit, Run, Sweep, count, items

# task -> (demo config, paper config, the paper's data-path argument, the metric fitted)
TASKS = {
    "probe_cls": (
        "configs/probe/demo.py:task=classify",
        "configs/probe/paper.py:task=classify",
        "imagenet",
        "eval/top1",
    ),
    "probe_seg": ("configs/probe/demo.py:task=segment", "configs/probe/paper.py:task=segment", "ade20k", "eval/miou"),
    "probe_depth": ("configs/probe/demo.py:task=depth", "configs/probe/paper.py:task=depth", "nyu", "eval/rmse"),
    "finetune_cls": ("configs/finetune/demo.py", "configs/finetune/imagenet_vit_b16.py", "imagenet", "eval/top1"),
    "finetune_seg": ("configs/segment/demo.py", "configs/segment/ade20k_vit_b16.py", "ade20k", "eval/miou"),
    "finetune_depth": ("configs/depth/demo.py", "configs/depth/nyu_vit_b16.py", "nyu", "eval/rmse"),
    "finetune_det": ("configs/detect/demo.py", "configs/detect/coco_vit_b16_mask_rcnn.py", "coco", "eval/box_ap"),
}
ZEROSHOT = "zeroshot"
SCALES = {  # default sizes, tasks and pretraining steps
    "paper": ("1.28M+12.8M+128M+1.28B", "finetune_det", 20_000),
    "demo": ("250+2000+16000", "zeroshot+probe_seg+probe_depth", 250),
    "smoke": ("64+256", "zeroshot", 4),
}
# scale=smoke: the demo's runs shrunk to seconds each (for tests): smaller batches and evaluations.
SMOKE_PRETRAINING = {
    "batch_size": 32, "eval.zeroshot.num_examples": 96, "eval.zeroshot.batch_size": 96, "checkpoint_every": 1000,
    "model.image.depth": 1, "model.text.depth": 1,  # one block each: the compile is most of a run's cost
}  # fmt: skip
SMOKE_TASK = {"data.synthetic.num_examples": 192, "finetune.eval_examples": 96, "probe.steps": 50}
CAPTIONS = ("real", "synthetic", "mixed", "both")


def get_sweep(arg: str | None = None) -> Sweep:
    arg = parse_arg(
        arg, scale="demo", captions="real+synthetic", sizes="", tasks="", seeds=1, steps=0, cluster="any",
        datacomp="/data/datacomp/{00000000..00139999}.tar", datacompdr="/data/datacompdr/{00000000..00139999}.tar",
        imagenet="/data/tensorflow_datasets", ade20k="/data/ade", nyu="/data/nyu_depth_v2", coco="/data/coco",
    )  # fmt: skip
    choice("argument scale", arg.scale, SCALES)
    default_sizes, default_tasks, default_steps = SCALES[arg.scale]
    policies = items(arg.captions, "captions")
    for policy in policies:
        choice("argument captions", policy, CAPTIONS)
    sizes = [count(size, "sizes") for size in items(arg.sizes or default_sizes, "sizes")]
    tasks = items(arg.tasks or default_tasks, "tasks")
    for task in tasks:
        choice("argument tasks", task, (ZEROSHOT, *TASKS))
    if arg.seeds < 1:
        raise ConfigError(f"argument seeds={arg.seeds} must be at least 1")
    steps = arg.steps or default_steps
    runs = []
    for policy in policies:
        for size in sizes:
            for seed in range(arg.seeds):
                axes = {"captions": policy, "pairs": size, "seed": seed}
                pretraining = f"clip_{policy}_{size}_s{seed}"
                config, overrides = _pretraining(arg, policy, steps)
                overrides.update({"data.subset_size": size, "seed": seed})
                zeroshot = ZEROSHOT in tasks
                runs.append(Run(pretraining, config, overrides, axes={**axes, "task": ZEROSHOT} if zeroshot else axes,
                                metric="eval/zeroshot_top1" if zeroshot else None))  # fmt: skip
                for task in (t for t in tasks if t != ZEROSHOT):
                    demo, paper, data, metric = TASKS[task]
                    overrides = {"seed": seed} if arg.scale != "paper" else {"seed": seed, "data.path": arg[data]}
                    if arg.scale == "smoke":
                        overrides.update(SMOKE_TASK if task.startswith("probe") else {"total_steps": 4})
                    config = paper if arg.scale == "paper" else demo
                    runs.append(Run(f"{task}_{policy}_{size}_s{seed}", config, overrides, init_from=pretraining,
                                    axes={**axes, "task": task}, metric=metric))  # fmt: skip
    # D_real(E*) / D_synthetic(E*): how many more web-caption pairs match the synthetic captions' error.
    efficiency = ("real", "synthetic") if {"real", "synthetic"} <= set(policies) else None
    return Sweep(tuple(runs), Fit(size="pairs", curve="captions", panels=("task",), efficiency=efficiency))


def _pretraining(arg, policy: str, steps: int) -> tuple[str, dict]:
    """The pretraining's config file and overrides for caption `policy`."""
    if arg.scale != "paper":
        # The smoke tower and a log / checkpoint rhythm for short runs; zero-shot is evaluated at the end only.
        overrides = {
            "data.captions": policy, "total_steps": steps, "log_every": max(1, min(50, steps // 5)),
            "checkpoint_every": max(1, steps // 2),
        }  # fmt: skip
        return "configs/demo.py:smoke", {**overrides, **(SMOKE_PRETRAINING if arg.scale == "smoke" else {})}
    if policy == "real":
        return f"configs/pretrain/vit_b16_datacomp.py:steps={steps},cluster={arg.cluster}", {
            "data.path": arg.datacomp, "eval.zeroshot.path": arg.imagenet,
        }  # fmt: skip
    return f"configs/pretrain/vit_b16_datacompdr.py:steps={steps},captions={policy},cluster={arg.cluster}", {
        "data.path": arg.datacomp, "data.synthetic_path": arg.datacompdr, "eval.zeroshot.path": arg.imagenet,
    }  # fmt: skip
