"""What a linear probe costs beside full finetuning, and how much each varies between seeds: the segmentation
probe (`configs/probe/demo.py:task=segment`) against segmentation finetuning (`configs/segment/demo.py`) of the
same pretrained tower on the same synthetic scenes, scored on the same 200 held-out scenes.

  python -m clipjax.main --config=configs/demo.py --workdir=runs/demo       # the pretrained tower, if needed
  python benchmarks/probe_vs_finetune.py --init runs/demo --json probe_vs_finetune.json

Runs each command as a user would (`python -m clipjax.main`, a fresh process and a fresh workdir per run,
nothing cached between runs) once per --seeds, and writes every run's wall time (the whole command: start-up,
loading, features or training, evaluation) and final eval/miou, their means and between-seed standard
deviations, and the ratio of the mean wall times, with the date and the machine. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from report import emit, environment

RUNS = {
    # The finetuning demo's evaluation scenes (200), so that both are scored on the same images.
    "probe": ["--config=configs/probe/demo.py:task=segment", "--config.finetune.eval_examples=200"],
    "finetune": ["--config=configs/segment/demo.py"],
}


def run(kind: str, init: str, seed: int, workdir: str, extra: list[str]) -> dict[str, float]:
    """One command's wall time and its last eval/miou (and the probe's features / head split of its time)."""
    flags = [*RUNS[kind], f"--config.init={init}", f"--workdir={workdir}", f"--config.seed={seed}", *extra]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "clipjax.main", *flags, "--config.progress_bar=False"], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{kind} seed {seed} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    result = {"seed": seed, "wall_s": wall, "miou": [r for r in rows if "eval/miou" in r][-1]["eval/miou"]}
    for line in done.stdout.splitlines():  # the probe's summary: "  time/features_s   3.5883"
        name, *value = line.split()
        if name.startswith("time/") and len(value) == 1:
            result[name.removeprefix("time/")] = float(value[0].replace(",", ""))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="the pretrained weights (a workdir or converted weights)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="extra --config.KEY=VALUE for both runs")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in RUNS:
            results[kind] = [
                run(kind, args.init, seed, os.path.join(tmp, f"{kind}_{seed}"), [f"--config.{s}" for s in args.set])
                for seed in args.seeds
            ]
    summary = {
        kind: {
            "wall_s_mean": statistics.mean(r["wall_s"] for r in runs),
            "miou_mean": statistics.mean(r["miou"] for r in runs),
            "miou_std": statistics.stdev(r["miou"] for r in runs) if len(runs) > 1 else 0.0,
        }
        for kind, runs in results.items()
    }
    summary["finetune_over_probe_wall_time"] = summary["finetune"]["wall_s_mean"] / summary["probe"]["wall_s_mean"]
    emit({"init": args.init, "runs": results, **summary, **environment()}, args.json)


if __name__ == "__main__":
    main()
