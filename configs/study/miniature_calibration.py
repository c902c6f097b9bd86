"""Calibrating the paper in miniature (issue 32): does a short pretraining of any kind beat random
initialisation on the dense probes of the perspective scenes, and by more than the seeds' spread?

  python -m clipjax.sweep --sweep=configs/study/miniature_calibration.py --workdir=runs/calibration
  python -m clipjax.sweep --sweep=configs/study/miniature_calibration.py:size=64,seeds=1 --workdir=runs/calib64

Arms: CLIP on the quality captions (caption_detail="full"), CLIP on the noisy captions, MAE at the same samples
seen (the demo's smoke-sized tower for all three: 64 wide, 2 blocks, 8 px patches), and the same tower at random
initialisation; each probed for segmentation and depth on the scenes with perspective=True (the depth the
image shows). report.md says, per claim, whether the arms separate. The log of what was measured, and what it
implies for the miniature's design, is docs/MINIATURE.md.

Arguments: steps=400 (pretraining steps of 128), seeds=2, size=32 (image side in pixels; the grid is size / 8),
arms=clip_quality+clip_noisy+mae (the pretrained arms; random always runs).
"""

from clipjax.config import parse_arg
from clipjax.sweep.spec import Claim, Report, Run, Sweep, items

SCENES = {"data.synthetic.perspective": True}
SMOKE_TOWER = {"model.image.width": 64, "model.image.depth": 2, "model.image.mlp_dim": 256}  # configs/demo.py:smoke's
PROBES = {"segment": "eval/miou", "depth": "eval/rmse"}
ARMS = ("clip_quality", "clip_noisy", "mae", "random")


def pretraining(arm: str, common: dict) -> tuple[str, dict]:
    """The pretraining run of a pretrained arm: its config file and overrides."""
    cluttered = {**common, "data.synthetic.max_objects": 4}
    if arm == "clip_quality":
        return "configs/demo.py:smoke", {**cluttered, "data.captions": "synthetic",
                                         "data.synthetic.caption_detail": "full"}  # fmt: skip
    if arm == "clip_noisy":
        return "configs/demo.py:smoke", {**cluttered, "data.captions": "real"}
    return "configs/mae/demo.py:smoke", {**cluttered, "eval_every": 0}


def get_sweep(arg: str | None = None) -> Sweep:
    arg = parse_arg(arg, steps=400, seeds=2, size=32, arms="clip_quality+clip_noisy+mae")
    pretrained = items(arg.arms, "arms")
    runs = []
    for seed in range(arg.seeds):
        common = {"seed": seed, "total_steps": arg.steps, "log_every": 50, "checkpoint_every": arg.steps,
                  "model.image_size": arg.size, **SCENES}  # fmt: skip
        for arm in pretrained:
            runs.append(Run(f"{arm}_s{seed}", *pretraining(arm, common)))
        for arm in (*pretrained, "random"):
            for task, metric in PROBES.items():
                overrides = {"seed": seed, "model.image_size": arg.size, **SCENES}
                if arm == "random":  # the pretrained arms' tower, untrained (with an init it comes from the weights)
                    overrides.update(SMOKE_TOWER)
                runs.append(Run(f"probe_{task}_{arm}_s{seed}", f"configs/probe/demo.py:task={task}", overrides,
                                init_from=None if arm == "random" else f"{arm}_s{seed}",
                                axes={"arm": arm, "task": task, "seed": seed}, metric=metric))  # fmt: skip
    claims = tuple(Claim(f"{arm} beats random", arm, "random") for arm in pretrained) + (
        Claim("quality captions beat noisy ones", "clip_quality", "clip_noisy"),
        Claim("CLIP on quality captions beats MAE", "clip_quality", "mae"),
    )
    return Sweep(tuple(runs), report=Report("Calibrating the miniature", arms=ARMS, claims=claims))
