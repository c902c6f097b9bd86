"""report.md: tables read back from the runs' metrics.jsonl, claims judged by each task's metric direction."""

import json

import numpy as np

from clipjax.sweep.report import write_report
from clipjax.sweep.spec import Claim, Report, Run

# arm -> task -> values over seeds 0..2 (segmentation mIoU: larger is better; depth rmse: smaller is better)
VALUES = {
    "quality": {"seg": [0.42, 0.44, 0.43], "depth": [0.61, 0.60, 0.65], "det": [0.50, 0.52, 0.51]},
    "noisy": {"seg": [0.38, 0.40, 0.39], "depth": [0.70, 0.69, 0.72], "det": [0.50, 0.53, 0.52]},
    "mae": {"seg": [0.35, 0.36, 0.30], "depth": [0.66, 0.64, 0.70], "det": [0.47, 0.48, 0.50]},
}
METRICS = {"seg": ("probe", "eval/miou"), "depth": ("probe", "eval/rmse"), "det": ("detect", "eval/box_ap")}


def write_runs(workdir):
    runs = []
    for arm, tasks in VALUES.items():
        for task, values in tasks.items():
            clipjax_task, metric = METRICS[task]
            for seed, value in enumerate(values):
                name = f"{task}_{arm}_s{seed}"
                directory = workdir / name
                directory.mkdir(parents=True)
                (directory / "config.json").write_text(json.dumps({"task": clipjax_task}))
                # an earlier evaluation, then the final one: the report takes the last value
                rows = [{"step": 10, metric: value - 0.1}, {"step": 20, metric: value}]
                (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
                (directory / "summary.json").write_text("{}")
                runs.append(Run(name, "x.py", axes={"arm": arm, "task": task, "seed": seed}, metric=metric))
    return tuple(runs)


def test_the_report_reads_the_runs_metrics_and_judges_each_claim(tmp_path):
    runs = write_runs(tmp_path)
    report = Report(
        "Miniature",
        arms=("quality", "noisy", "mae"),
        claims=(
            Claim("quality > noisy", "quality", "noisy"),
            Claim("MAE >= CLIP on detection", "mae", "quality", tasks=("det",), at_least=True),
        ),
        efficiency_claim="quality captions are more data-efficient",
    )
    fits = [{"panel": {"task": "seg"}, "metric": "eval/miou",
             "efficiency": [{"a": "noisy", "b": "quality", "fit_power": 3.2}, {"a": "noisy", "b": "quality",
                                                                               "fit_power": 2.5}]}]  # fmt: skip
    text = write_report("study.py", runs, report, str(tmp_path), fits)
    assert (tmp_path / "report.md").read_text() == text
    for arm, tasks in VALUES.items():  # every table row: numpy's mean and sample std of the final values
        for values in tasks.values():
            row = f"| {arm} | {np.mean(values):.4g} ± {np.std(values, ddof=1):.2g} | 3 |"
            assert row in text, row
    assert "### depth: eval/rmse (lower is better)" in text
    # The summary table: a column per task, the same numbers.
    assert "| arm | seg (eval/miou) | depth (eval/rmse ↓) | det (eval/box_ap) |" in text
    cells = [f"{np.mean(v):.4g} ± {np.std(v, ddof=1):.2g}" for v in VALUES["mae"].values()]
    assert f"| mae | {' | '.join(cells)} |" in text
    lines = text.splitlines()
    # seg and depth hold, clearly; det is within noise
    assert "- **quality > noisy**: holds on 2 of 3 tasks (the gap beyond the seeds' spread on 2 of 3)" in lines
    seg = next(line for line in lines if line.startswith("  - seg (eval/miou)"))
    assert "holds clearly" in seg
    depth = next(line for line in lines if line.startswith("  - depth (eval/rmse)"))
    assert "holds clearly" in depth  # a smaller rmse is the better one
    det = next(line for line in lines if line.startswith("  - det (eval/box_ap)") and "against noisy" in line)
    assert "does not hold, within the seeds' spread" in det
    assert "- **MAE >= CLIP on detection**: does not hold (the gap beyond the seeds' spread on every task)" in lines
    assert "- **quality captions are more data-efficient**: holds" in lines
    assert "D_noisy / D_quality = 3.2x, 2.5x" in text
    # With one seed per arm there is no spread: the gap is not called clear.
    single = tuple(run for run in runs if run.axes["seed"] == 0)
    text = write_report("study.py", single, report, str(tmp_path), None)
    seg = next(line for line in text.splitlines() if line.startswith("  - seg (eval/miou)"))
    assert seg.startswith("  - seg (eval/miou): holds, one seed: no spread to judge the gap by: quality 0.42")


def test_the_attention_section_averages_each_arms_towers_and_judges_locality(tmp_path):
    """attention_distance.json written by hand ([blocks, heads] means per tower): the table's cells are numpy's
    means over heads then seeds, and the locality claim reads the last block's."""
    rng = np.random.default_rng(0)
    runs, checkpoints, last_block = [], [], {}
    for arm, centre in (("quality", 9.0), ("noisy", 12.0)):
        for seed in range(2):
            means = centre + rng.normal(0, 0.3, (2, 4))  # 2 blocks x 4 heads
            runs.append(Run(f"{arm}_s{seed}", "x.py", axes={"arm": arm, "seed": seed}))
            checkpoints.append({"init": str(tmp_path / f"{arm}_s{seed}"), "renormalised": {
                "mean": means.tolist(), "across_head_std": means.std(axis=1).tolist()}})  # fmt: skip
            last_block.setdefault(arm, []).append(means[-1].mean())
    (tmp_path / "attention").mkdir()
    (tmp_path / "attention" / "attention_distance.json").write_text(json.dumps({"checkpoints": checkpoints}))
    runs.append(Run("attention", "x.py"))
    claim = Claim("quality is more local", "quality", "noisy", ("attention",))
    report = Report("Attention", arms=("quality", "noisy"), claims=(claim,), attention="attention")
    text = write_report("study.py", tuple(runs), report, str(tmp_path), None)
    quality = [float(np.mean(m)) for m in last_block["quality"]]
    row = next(line for line in text.splitlines() if line.startswith("| quality |"))
    assert f"| {np.mean(quality):.4g} ± {np.std(quality, ddof=1):.2g} |" in row
    assert "- **quality is more local**: holds (the gap beyond the seeds' spread on every task)" in text.splitlines()
    assert "attention (last block's mean attention distance, px): holds clearly" in text
