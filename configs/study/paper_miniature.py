"""The paper in miniature (issue 32): its claims checked on the built-in scenes, in one command.

  python -m clipjax.sweep --sweep=configs/study/paper_miniature.py --workdir=runs/paper   # ~30 min on 2 CPUs
  python -m clipjax.sweep --sweep=configs/study/paper_miniature.py:scale=quick --workdir=runs/paper_quick
  python -m clipjax.sweep --sweep=configs/study/paper_miniature.py:scale=smoke --workdir=runs/paper_smoke
  # the same study at the paper's scale, as SLURM job arrays (or --emit=tpu)
  python -m clipjax.sweep --sweep='configs/study/paper_miniature.py:scale=paper,cluster=h100x16,datacomp=...,\
      datacompdr=...,imagenet=...,ade20k=...,nyu=...,coco=...' --workdir=/shared/runs/paper --emit=slurm

scale=full: 3 seeds, 400 pretraining steps of 128, detection for seed 0 (62 runs). scale=quick: 1 seed, 200
steps, no detection (22 runs, ~5 min). scale=smoke: 1 seed, 4 steps of 32, one-block towers, small
evaluations, segmentation and detection only (the latter for clip_quality and mae): seconds a run, for the
tests; its numbers mean nothing. scale=paper: ViT-B/16 CLIP on DataCompDR's synthetic captions (quality) and
DataComp's web captions (noisy), MAE on DataComp's images at the same 1.31B samples seen (20k steps at
65,536), random init; the paper-scale probes (configs/probe/paper.py: ImageNet, ADE20K, NYUv2) and COCO Mask
R-CNN; the scaling arm on 12.8M and 128M-pair subsets; Fig. 3 on ImageNet val. None of it is run here.

On the perspective scenes (`data.synthetic.perspective`: depth shows as apparent size and height on a ground
plane), the same tower (configs/demo.py:smoke's: 64 wide, 2 blocks, 8 px patches at 32 px) is pretrained as
- clip_quality: CLIP on the quality captions (every object's size, colour, shape and place, their relations
  and occlusions, and the counts: the DataCompDR analogue),
- clip_noisy: CLIP on the noisy, alt-text-like captions (the DataComp analogue),
- mae: MAE at the same samples seen (configs/mae/demo.py:smoke's recipe),
- (clip_bag, with arms=...: CLIP on bag-of-words captions, the right objects without their layout),
and kept at random initialisation (random). Each is then evaluated on classification, segmentation and depth
by frozen linear probes (configs/probe/demo.py) and on detection by full finetuning (configs/detect/demo.py,
Mask R-CNN, for the first `detect_seeds` seeds: it costs most); the CLIP arms also by their own zero-shot
top-1. The pretrainings read a fixed subset of `steps x 128` scenes, each seen once; the data-scaling arm
pretrains both caption kinds on nested smaller subsets (`sizes`) at the same samples seen, and probes them
for segmentation and depth: the fits of error against distinct pairs give the data-efficiency ratio (Fig. 2).
One analysis run measures the mean attention distance of every pretrained tower (Fig. 3).

report.md holds a table per task (mean ± std over seeds, read from the runs' metrics.jsonl), the scaling
picture with its fits, the attention-distance picture, and a line per claim of the paper saying whether the
miniature agrees, with the numbers; the first claims are the precondition (every pretraining beats random on
every dense task). The calibration behind these choices is docs/MINIATURE.md.

Arguments: scale=full|quick|smoke|paper (the defaults in SCALES); seeds, steps, sizes ("+"-joined pair counts, k / M / B
allowed; 0: none), scaling_seeds (the scaling arm's smaller subsets for the first N seeds), detect_seeds,
detect_arms ("all", or "+"-joined arms, random included), arms (pretrained arms, "+"-joined), tasks (of
classify, segment, depth, detect); scale=paper also pairs (the main arms' DataComp pairs, default 1.28B),
cluster (the pretrainings' mesh) and the data paths datacomp, datacompdr, imagenet, ade20k, nyu, coco.
"""

from clipjax.config import ConfigError, choice, parse_arg
from clipjax.sweep.spec import Claim, Fit, Report, Run, Sweep, count, items

SCALES = {  # seeds, pretraining steps, tasks, the scaling arm's smaller subsets and its seeds, detection's seeds / arms
    "full": {"seeds": 3, "steps": 400, "tasks": "classify+segment+depth+detect", "sizes": "1600+6400",
             "scaling_seeds": 1, "detect_seeds": 1, "detect_arms": "all"},
    "quick": {"seeds": 1, "steps": 200, "tasks": "classify+segment+depth", "sizes": "1600", "scaling_seeds": 1,
              "detect_seeds": 1, "detect_arms": "all"},
    # The detection claim's two arms only: detection is the costliest run even at 2 steps.
    "smoke": {"seeds": 1, "steps": 4, "tasks": "segment+detect", "sizes": "32", "scaling_seeds": 1,
              "detect_seeds": 1, "detect_arms": "clip_quality+mae"},
    # The same study at the paper's scale (ViT-B/16, 20k steps at 65,536; for a cluster: --emit=slurm|tpu).
    "paper": {"seeds": 1, "steps": 20_000, "tasks": "classify+segment+depth+detect", "sizes": "12.8M+128M",
              "scaling_seeds": 1, "detect_seeds": 1, "detect_arms": "all"},
}  # fmt: skip
BATCH = {"full": 128, "quick": 128, "smoke": 32, "paper": 65_536}
PRETRAINED = ("clip_quality", "clip_noisy", "mae", "clip_bag")
CAPTIONS = {"clip_quality": "quality", "clip_noisy": "noisy", "clip_bag": "bag"}  # the CLIP arms' caption kinds
SCALED = ("clip_quality", "clip_noisy")  # the data-scaling arm's curves
TASKS = {  # task -> (config, metric)
    "classify": ("configs/probe/demo.py:task=classify", "eval/top1"),
    "segment": ("configs/probe/demo.py:task=segment", "eval/miou"),
    "depth": ("configs/probe/demo.py:task=depth", "eval/rmse"),
    "detect": ("configs/detect/demo.py", "eval/box_ap"),
}
# scale=paper: each task's config on the paper's data, and which data-path argument it reads.
PAPER_TASKS = {
    "classify": ("configs/probe/paper.py:task=classify", "imagenet"),
    "segment": ("configs/probe/paper.py:task=segment", "ade20k"),
    "depth": ("configs/probe/paper.py:task=depth", "nyu"),
    "detect": ("configs/detect/coco_vit_b16_mask_rcnn.py", "coco"),
}
SCALING_TASKS = ("segment", "depth")
DENSE = ("segment", "depth", "detect")
SCENES = {"data.synthetic.perspective": True}
# configs/demo.py:smoke's image tower: the random arm's (a pretrained arm's comes from its weights).
TOWER = {"model.image.width": 64, "model.image.depth": 2, "model.image.mlp_dim": 256}
# Detection on this tower: window attention except in its last block (configs/detect/demo.py's tower has 4).
# 100 steps of 8 (~90 s a run on 2 cores; the demo's batch 16 for 150 steps took 5 minutes: docs/MINIATURE.md).
DETECTION = {
    "detection.global_blocks": (1,), "total_steps": 100, "batch_size": 8, "eval_every": 100, "checkpoint_every": 100,
}  # fmt: skip
# scale=smoke: seconds per run.
SMOKE_TOWER = {"model.image.depth": 1}
SMOKE_PRETRAINING = {"model.text.depth": 1, "eval.zeroshot.num_examples": 64, "eval.zeroshot.batch_size": 64}
SMOKE_PROBE = {"data.synthetic.num_examples": 96, "finetune.eval_examples": 32, "probe.steps": 20}
SMOKE_DETECTION = {
    "detection.global_blocks": (0,), "total_steps": 2, "eval_every": 2, "checkpoint_every": 2, "batch_size": 4,
    "data.synthetic.num_examples": 16, "finetune.eval_examples": 8, "finetune.eval_batch_size": 8,
}  # fmt: skip


def get_sweep(arg: str | None = None) -> Sweep:
    arg = parse_arg(
        arg, scale="full", seeds=0, steps=0, tasks="", sizes="", scaling_seeds=-1, detect_seeds=-1, detect_arms="",
        arms="clip_quality+clip_noisy+mae", pairs="1.28B", cluster="any",
        datacomp="/data/datacomp/{00000000..00139999}.tar", datacompdr="/data/datacompdr/{00000000..00139999}.tar",
        imagenet="/data/tensorflow_datasets", ade20k="/data/ade", nyu="/data/nyu_depth_v2", coco="/data/coco",
    )  # fmt: skip
    choice("argument scale", arg.scale, SCALES)
    defaults = SCALES[arg.scale]
    seeds, steps = arg.seeds or defaults["seeds"], arg.steps or defaults["steps"]
    detect_seeds = defaults["detect_seeds"] if arg.detect_seeds < 0 else arg.detect_seeds
    scaling_seeds = defaults["scaling_seeds"] if arg.scaling_seeds < 0 else arg.scaling_seeds
    arms = items(arg.arms, "arms")
    for arm in arms:
        choice("argument arms", arm, PRETRAINED)
    detect_arms = items(arg.detect_arms or defaults["detect_arms"], "detect_arms")
    if detect_arms == ["all"]:
        detect_arms = [*arms, "random"]
    for arm in detect_arms:
        choice("argument detect_arms", arm, (*PRETRAINED, "random"))
    tasks = items(arg.tasks or defaults["tasks"], "tasks")
    for task in tasks:
        choice("argument tasks", task, TASKS)
    # The main arms' pairs: a subset of the scenes, each seen once; at the paper's scale all of DataComp's.
    pairs = count(str(arg.pairs), "pairs") if arg.scale == "paper" else steps * BATCH[arg.scale]
    sizes_text = str(arg.sizes or defaults["sizes"])
    sizes = [] if sizes_text == "0" else [count(size, "sizes") for size in items(sizes_text, "sizes")]
    if seeds < 1 or steps < 1 or any(size >= pairs for size in sizes):
        raise ConfigError(f"arguments seeds={seeds}, steps={steps}, sizes={sizes}: need seeds, steps >= 1 and "
                          f"every size below the main arms' {pairs} pairs")  # fmt: skip

    runs: list[Run] = []
    towers: list[str] = []  # the main arms' pretrained towers, every seed: the attention analysis's
    for seed in range(seeds):
        for arm in arms:
            runs.append(_pretraining(arg, arm, seed, steps, pairs, main=True))
            towers.append(runs[-1].name)
            for size in sizes if arm in SCALED and seed < scaling_seeds else ():
                runs.append(_pretraining(arg, arm, seed, steps, size, main=False))
        for arm in (*arms, "random"):
            for task in tasks:
                if task == "detect" and (seed >= detect_seeds or arm not in detect_arms):
                    continue
                runs.append(_task(arg, task, arm, seed, pairs, main=True))
                for size in sizes if arm in SCALED and task in SCALING_TASKS and seed < scaling_seeds else ():
                    runs.append(_task(arg, task, arm, seed, size, main=False))
    if arg.scale == "paper":  # the paper's Fig. 3: ImageNet-1k val, all 50,000 images
        analysis = ("configs/analyze/attention_distance.py:data=tfds,images=50000", {"data.path": arg.imagenet})
    else:
        analysis = (f"configs/analyze/attention_distance.py:images={32 if arg.scale == 'smoke' else 500}", SCENES)
    runs.append(Run("attention", analysis[0], {"seed": 0, **analysis[1]}, run_dirs={"analyze.inits": tuple(towers)}))

    claims = [Claim(f"{arm} pretraining beats random initialisation on every dense task (the precondition)",
                    arm, "random", DENSE) for arm in arms]  # fmt: skip
    if {"clip_quality", "clip_noisy"} <= set(arms):
        claims.append(Claim("Quality captions beat noisy captions on every task", "clip_quality", "clip_noisy"))
        claims.append(Claim("Quality captions make the deep heads more local (a smaller mean attention distance "
                            "in the last block)", "clip_quality", "clip_noisy", ("attention",)))  # fmt: skip
    if {"clip_quality", "clip_bag"} <= set(arms):
        claims.append(Claim("Captions with the layout beat a bag of the right words", "clip_quality", "clip_bag"))
    if {"clip_quality", "mae"} <= set(arms):
        claims += [
            Claim("CLIP on quality captions beats MAE on segmentation and depth", "clip_quality", "mae",
                  ("segment", "depth")),
            Claim("MAE matches or beats CLIP (quality captions) on detection at matched samples", "mae",
                  "clip_quality", ("detect",), at_least=True),
        ]  # fmt: skip
    scaling = bool(sizes) and {"clip_quality", "clip_noisy"} <= set(arms)
    report = Report(
        "The paper in miniature", arms=(*PRETRAINED, "random"), claims=tuple(claims), attention="attention",
        efficiency_claim="Quality captions are more data-efficient (noisy captions need more pairs for the same "
        "error: D_noisy / D_quality > 1)" if scaling else None,
    )  # fmt: skip
    curves = sizes and set(SCALED) & set(arms)  # without a CLIP arm of SCALED no run is a point of the fit
    fit = Fit(size="pairs", curve="captions", panels=("task",), efficiency=("noisy", "quality")) if curves else None
    return Sweep(tuple(runs), fit=fit, report=report)


def _pretraining(arg, arm: str, seed: int, steps: int, pairs: int, main: bool) -> Run:
    """The pretraining of `arm` on the first `pairs` scenes (a main arm's run, or a scaling arm's smaller
    subset), `steps` steps either way."""
    scale = arg.scale
    name = f"{arm}_s{seed}" if main else f"{arm}_{pairs}_s{seed}"
    main_axes = {"arm": arm} if main else {}
    if scale == "paper":
        return _paper_pretraining(arg, arm, seed, steps, pairs, main, name, main_axes)
    overrides = {
        "seed": seed, "total_steps": steps, "log_every": max(1, min(50, steps // 4)), "checkpoint_every": steps,
        "data.subset_size": pairs, "data.synthetic.max_objects": 4, **SCENES,
    }  # fmt: skip
    if scale == "smoke":
        overrides.update({"batch_size": BATCH[scale], **SMOKE_TOWER})
    if arm == "mae":
        overrides.update({"eval_every": 0})
        return Run(name, "configs/mae/demo.py:smoke", overrides, axes={**main_axes, "seed": seed})  # no metric
    overrides["data.captions"] = {"clip_noisy": "real", "clip_bag": "bag"}.get(arm, "synthetic")
    if arm == "clip_quality":
        overrides["data.synthetic.caption_detail"] = "full"
    if scale == "smoke":
        overrides.update(SMOKE_PRETRAINING)
    scaled = {"captions": CAPTIONS[arm], "pairs": pairs} if arm in SCALED else {}
    axes = {**main_axes, **scaled, "seed": seed, "task": "zeroshot"}
    return Run(name, "configs/demo.py:smoke", overrides, axes=axes, metric="eval/zeroshot_top1")


def _paper_pretraining(arg, arm: str, seed: int, steps: int, pairs: int, main: bool, name: str, main_axes: dict) -> Run:
    """scale=paper: ViT-B/16 CLIP on DataComp (noisy: its web captions) or DataCompDR (quality: its synthetic
    captions; bag has no paper counterpart), or MAE on DataComp's images at the same samples seen; the main arms
    on all the shards, the scaling arm on a subset of `pairs`."""
    overrides = {"seed": seed, "data.path": arg.datacomp, **({} if main else {"data.subset_size": pairs})}
    if arm == "mae":
        samples = steps * BATCH["paper"]
        config = f"configs/pretrain/mae_vit_b16.py:data=webdataset,samples_seen={samples},cluster={arg.cluster}"
        return Run(name, config, overrides, axes={**main_axes, "seed": seed})
    if arm == "clip_bag":
        raise ConfigError("argument arms: clip_bag (bag-of-words captions) exists only on the built-in scenes")
    overrides["eval.zeroshot.path"] = arg.imagenet
    if arm == "clip_noisy":
        config = f"configs/pretrain/vit_b16_datacomp.py:steps={steps},cluster={arg.cluster}"
    else:
        config = f"configs/pretrain/vit_b16_datacompdr.py:steps={steps},captions=synthetic,cluster={arg.cluster}"
        overrides["data.synthetic_path"] = arg.datacompdr
    axes = {**main_axes, "captions": CAPTIONS[arm], "pairs": pairs, "seed": seed, "task": "zeroshot"}
    return Run(name, config, overrides, axes=axes, metric="eval/zeroshot_top1")


def _task(arg, task: str, arm: str, seed: int, pairs: int, main: bool) -> Run:
    """`task` (a probe, or detection's finetuning) of `arm`'s tower of seed `seed` (random: untrained)."""
    scale = arg.scale
    config, metric = TASKS[task]
    overrides = {"seed": seed, **SCENES}
    if scale == "paper":
        config, data = PAPER_TASKS[task]
        overrides = {"seed": seed, "data.path": arg[data]}
    elif arm == "random":
        overrides.update({**TOWER, **(SMOKE_TOWER if scale == "smoke" else {})})
    if task == "detect" and scale != "paper":
        overrides.update(SMOKE_DETECTION if scale == "smoke" else DETECTION)
    elif scale == "smoke":
        overrides.update(SMOKE_PROBE)
    tower = None if arm == "random" else f"{arm}_s{seed}" if main else f"{arm}_{pairs}_s{seed}"
    axes = {"arm": arm} if main else {}
    if arm in SCALED and task in SCALING_TASKS:
        axes.update({"captions": CAPTIONS[arm], "pairs": pairs})
    name = f"{task}_{tower or 'random'}" if arm != "random" else f"{task}_random_s{seed}"
    return Run(name, config, overrides, init_from=tower, axes={**axes, "seed": seed, "task": task}, metric=metric)
