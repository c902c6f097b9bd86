"""The paper in miniature (configs/study/paper_miniature.py): the study's runs, and its smoke variant killed,
resumed and finished end to end, writing a report whose every number is read back from the runs' own
metrics.jsonl here."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest

from clipjax.config import ConfigError, load_config
from clipjax.sweep.runs import clipjax_arguments
from clipjax.sweep.spec import load_sweep
from tests.conftest import REPO_ROOT
from tests.xla_flags import cpu_xla_flags

STUDY = "configs/study/paper_miniature.py"
SMOKE = f"{STUDY}:scale=smoke"


def test_the_full_study_runs_every_arm_task_and_seed_and_analyses_every_tower():
    sweep = load_sweep(STUDY)
    runs = sweep.by_name()
    towers = [f"{arm}_s{seed}" for seed in range(3) for arm in ("clip_quality", "clip_noisy", "mae")]
    assert runs["attention"].run_dirs["analyze.inits"] == tuple(towers)
    assert set(runs["attention"].dependencies) == set(towers)
    inits = "--config.analyze.inits=" + repr(tuple(f"/sweep/{name}" for name in towers))
    assert inits in clipjax_arguments(runs["attention"], "/sweep")
    for seed in range(3):
        for arm in ("clip_quality", "clip_noisy", "mae", "random"):
            for task in ("classify", "segment", "depth"):
                name = f"{task}_{arm}_s{seed}"
                assert runs[name].init_from == (None if arm == "random" else f"{arm}_s{seed}")
                assert runs[name].axes == {"arm": arm, "seed": seed, "task": task} | (
                    {"captions": arm[5:], "pairs": 51_200} if arm.startswith("clip") and task != "classify" else {}
                )  # fmt: skip
    detections = [name for name in runs if name.startswith("detect_")]
    assert sorted(detections) == sorted(f"detect_{arm}_s0" for arm in ("clip_quality", "clip_noisy", "mae", "random"))
    # Matched samples seen: every pretraining 400 steps of 128; the main arms on a subset of 51,200 scenes (each
    # seen once), the scaling arm on nested smaller ones, for both caption kinds, seed 0.
    for name in towers:
        assert runs[name].overrides["total_steps"] == 400 and runs[name].overrides["data.subset_size"] == 51_200
    for captions in ("quality", "noisy"):
        for size in (1600, 6400):
            run = runs[f"clip_{captions}_{size}_s0"]
            assert run.overrides["data.subset_size"] == size and run.overrides["total_steps"] == 400
            assert runs[f"segment_clip_{captions}_{size}_s0"].axes["pairs"] == size
    assert all(run.overrides["data.synthetic.perspective"] for run in runs.values())
    assert runs["clip_quality_s0"].overrides["data.synthetic.caption_detail"] == "full"
    assert runs["clip_noisy_s0"].overrides["data.captions"] == "real"
    assert sweep.fit.efficiency == ("noisy", "quality")
    assert load_sweep(f"{STUDY}:arms=mae").fit is None  # no caption curves: nothing to fit
    with pytest.raises(ConfigError, match="below the main arms' 25600 pairs"):
        load_sweep(f"{STUDY}:steps=200,sizes=25600")


@pytest.mark.parametrize("scale", ["full", "quick", "smoke", "paper"])
def test_every_run_of_every_scale_is_a_valid_clipjax_command(scale):
    """Each run's exact command line (config, overrides, init) builds a config: no misspelt key, no bad value."""
    runs = load_sweep(f"{STUDY}:scale={scale}").runs
    for run in runs:
        config, _, *flags = clipjax_arguments(run, "/sweep")
        pairs = [flag.removeprefix("--config.").split("=", 1) for flag in flags]
        loaded = load_config(config.removeprefix("--config="), pairs)
        assert loaded.seed == run.overrides["seed"], run.name
    if scale == "paper":  # ViT-B/16 on DataComp / DataCompDR, MAE at the same 1.31B samples, the paper's data
        by_name = {run.name: run for run in runs}
        assert "vit_b16_datacompdr.py:steps=20000,captions=synthetic" in by_name["clip_quality_s0"].config
        assert "samples_seen=1310720000" in by_name["mae_s0"].config
        assert by_name["clip_noisy_12800000_s0"].overrides["data.subset_size"] == 12_800_000
        assert "data.subset_size" not in by_name["clip_noisy_s0"].overrides  # the main arms: every shard
        assert by_name["detect_random_s0"].config == "configs/detect/coco_vit_b16_mask_rcnn.py"


def _final(workdir, name, metric):
    """The last value of `metric` in run `name`'s metrics.jsonl, read independently of clipjax."""
    rows = [json.loads(line) for line in (workdir / name / "metrics.jsonl").read_text().splitlines()]
    return [row[metric] for row in rows if metric in row][-1]


def test_the_smoke_study_is_killed_resumed_and_reports_numbers_read_from_its_runs(tmp_path):
    """One test: its runs are among the suite's costliest, and xdist would repeat a shared fixture per worker."""
    workdir = tmp_path / "paper"
    command = [sys.executable, "-m", "clipjax.sweep", f"--sweep={SMOKE}", f"--workdir={workdir}"]
    # One device: the cheapest on 2 cores; every program cached, however fast it compiled, so that the runs of
    # the same shapes after the first load them.
    env = dict(os.environ, XLA_FLAGS=cpu_xla_flags(1), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    sweep = load_sweep(SMOKE)
    first_run, second_run = (run.name for run in sweep.runs[:2])
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (workdir / second_run / "config.json").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # the second run has begun (the first is done)
    first.send_signal(signal.SIGTERM)
    stopped_output = "".join(first.communicate(timeout=300))
    assert first.returncode == 75, stopped_output
    assert f"stopped: SIGTERM during run {second_run}" in stopped_output
    finished_at = (workdir / first_run / "summary.json").stat().st_mtime_ns
    resumed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    lines = resumed.stdout.splitlines()
    total = len(sweep.runs)
    assert lines[0] == f"[1/{total}] {first_run}: done"  # skipped: not run again
    assert f"[2/{total}] {second_run}: running (resuming)" in lines[1]
    assert (workdir / first_run / "summary.json").stat().st_mtime_ns == finished_at
    assert all((workdir / run.name / "summary.json").is_file() for run in sweep.runs)
    # data/epochs: 4 steps of 32 pairs over the main arms' subset of 128 and the scaling arm's of 32.
    assert _final(workdir, "clip_quality_s0", "data/epochs") == 1.0
    assert _final(workdir, "clip_noisy_32_s0", "data/epochs") == 4.0

    text = (workdir / "report.md").read_text()
    # Every table row: the mean and sample std of the arm's final values, read back from metrics.jsonl.
    by_task = defaultdict(lambda: defaultdict(list))
    for run in sweep.runs:
        if run.metric and "arm" in run.axes:
            by_task[run.axes["task"]][run.axes["arm"]].append(_final(workdir, run.name, run.metric))
    assert set(by_task) == {"zeroshot", "segment", "detect"}
    assert set(by_task["segment"]) == {"clip_quality", "clip_noisy", "mae", "random"}
    assert set(by_task["detect"]) == {"clip_quality", "mae"}  # the detection claim's arms
    for task, arms in by_task.items():
        table = text.split(f"### {task}: ")[1].split("###")[0]
        for arm, values in arms.items():
            assert f"| {arm} | {np.mean(values):.4g} ± 0 | 1 | {values[0]:.4g} |" in table, (task, arm)
    for claim in sweep.report.claims:
        assert f"- **{claim.text}**: " in text
    assert "- **Quality captions are more data-efficient" in text
    # The attention table: every tower's last-block distance, from the analysis run's JSON.
    analysed = json.loads((workdir / "attention" / "attention_distance.json").read_text())["checkpoints"]
    assert [os.path.basename(c["init"]) for c in analysed] == ["clip_quality_s0", "clip_noisy_s0", "mae_s0"]
    mae_last = float(np.mean(analysed[2]["renormalised"]["mean"][-1]))
    attention_table = text.split("## Attention distance")[1].splitlines()
    assert next(line for line in attention_table if line.startswith("| mae |")).startswith(f"| mae | {mae_last:.4g}")
    assert (workdir / "attention" / "attention_distance.png").read_bytes()[:4] == b"\x89PNG"
    # The fit's points: the scaling arm and the main CLIP arms, each value the run's summary.
    with open(workdir / "points.csv", newline="") as f:
        points = list(csv.DictReader(f))
    curves = {(c, s) for c in ("quality", "noisy") for s in ("32", "128")}
    assert {(p["captions"], p["pairs"]) for p in points} == curves
    for point in points:
        summary = json.loads((workdir / point["run"] / "summary.json").read_text())["summary"]
        assert float(point["value"]) == summary[point["metric"]]
    panels = {panel["panel"]["task"]: panel for panel in json.loads((workdir / "fits.json").read_text())["panels"]}
    assert set(panels) == {"zeroshot", "segment"}
    for captions in ("quality", "noisy"):  # two sizes: the power law passes through both (numpy: log-log slope)
        error = {int(p["pairs"]): float(p["fitted"]) for p in points if p["captions"] == captions and
                 p["task"] == "segment"}  # fmt: skip
        alpha = -np.log(error[128] / error[32]) / np.log(4)
        assert panels["segment"]["curves"][captions]["power"]["alpha"] == pytest.approx(alpha, abs=1e-9)
    assert (workdir / "scaling.png").read_bytes()[:4] == b"\x89PNG"
