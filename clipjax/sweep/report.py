"""A study's report (`<workdir>/report.md`): per task a table of every arm's final metric (mean ± std over
seeds), read back from the runs' own metrics.jsonl; the scaling picture and data-efficiency ratios of the
study's fit; its attention-distance picture; and one line per claim saying whether the study agrees, with the
numbers. A claim that does not hold is written as not holding: nothing here is tuned to a claim.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections import defaultdict
from typing import Any

import numpy as np

from clipjax.sweep.runs import run_directory
from clipjax.sweep.spec import Claim, Report, Run
from clipjax.tasks import get_task
from clipjax.tasks.analyze import PICTURE_FILE as ATTENTION_PICTURE_FILE
from clipjax.train.metrics import METRICS_FILE

REPORT_FILE = "report.md"


def final_value(workdir: str, name: str, metric: str) -> float | None:
    """The last value of `metric` in run `name`'s metrics.jsonl (None if the run logged none)."""
    path = os.path.join(run_directory(workdir, name), METRICS_FILE)
    if not os.path.isfile(path):
        return None
    value = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a crash
                continue
            if metric in row:
                value = float(row[metric])
    return value


def run_task(workdir: str, name: str) -> str | None:
    """The clipjax task a run ran (its config.json's), which says whether its metric is better smaller."""
    path = os.path.join(run_directory(workdir, name), "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("task")


def collect_results(runs: tuple[Run, ...], report: Report, workdir: str) -> dict[str, dict[str, Any]]:
    """{task axis value: {"metric", "smaller_is_better", "arms": {arm: [(seed, value, run name), ...]}}} for
    every run with a metric, an arm and a task axis (runs of the scaling arm included when they carry an arm)."""
    results: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run.metric is None or report.arm not in run.axes or report.task not in run.axes:
            continue
        value = final_value(workdir, run.name, run.metric)
        if value is None:
            continue
        task = str(run.axes[report.task])
        entry = results.setdefault(task, {"metric": run.metric, "smaller_is_better": None, "arms": defaultdict(list)})
        clipjax_task = run_task(workdir, run.name)
        if clipjax_task is not None:
            entry["smaller_is_better"] = get_task(clipjax_task).smaller_is_better(run.metric)
        entry["arms"][str(run.axes[report.arm])].append((run.axes.get(report.seed), value, run.name))
    return results


def summary_of(values: list[tuple[Any, float, str]]) -> tuple[float, float, int]:
    """(mean, standard deviation over seeds (0 for one), count)."""
    array = np.array([value for _, value, _ in values], np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0, len(array)


def _number(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.2g}"


def task_table(task: str, entry: dict[str, Any], order: tuple[str, ...]) -> list[str]:
    """A markdown table: one row per arm (in `order`, then any other), its metric's mean ± std and seeds."""
    direction = " (lower is better)" if entry["smaller_is_better"] else ""
    lines = [
        f"### {task}: {entry['metric']}{direction}",
        "",
        "| arm | mean ± std | seeds | values |",
        "|---|---|---|---|",
    ]
    arms = [arm for arm in order if arm in entry["arms"]] + sorted(set(entry["arms"]) - set(order))
    for arm in arms:
        mean, std, count = summary_of(entry["arms"][arm])
        values = ", ".join(f"{value:.4g}" for _, value, _ in sorted(entry["arms"][arm], key=lambda v: str(v[0])))
        lines.append(f"| {arm} | {_number(mean, std)} | {count} | {values} |")
    return lines + [""]


def judge(claim: Claim, results: dict[str, dict[str, Any]]) -> list[str]:
    """The claim's lines: per task whether `claim.better` beats `claim.worse` (or ties, with at_least), with
    both arms' mean ± std; "clearly" where the gap exceeds the two spreads together (with two or more seeds
    each; with one, the line says the gap cannot be judged)."""
    tasks = claim.tasks or tuple(t for t, e in results.items() if {claim.better, claim.worse} <= set(e["arms"]))
    verdicts, lines = [], []
    for task in tasks:
        entry = results.get(task)
        if entry is None or not {claim.better, claim.worse} <= set(entry["arms"]):
            lines.append(f"  - {task}: not measured")
            continue
        (mean_a, std_a, n_a), (mean_b, std_b, n_b) = (
            summary_of(entry["arms"][arm]) for arm in (claim.better, claim.worse)
        )
        gap = (mean_b - mean_a) if entry["smaller_is_better"] else (mean_a - mean_b)
        holds = gap >= 0 if claim.at_least else gap > 0
        if min(n_a, n_b) < 2:  # one seed has no spread: how clear the gap is cannot be told
            qualifier = ", one seed: no spread to judge the gap by"
        else:
            qualifier = " clearly" if abs(gap) > std_a + std_b else ", within the seeds' spread"
        verdict = ("holds" if holds else "does not hold") + qualifier
        verdicts.append(holds)
        lines.append(
            f"  - {task} ({entry['metric']}): {verdict}: {claim.better} {_number(mean_a, std_a)} (n={n_a}) against "
            f"{claim.worse} {_number(mean_b, std_b)} (n={n_b})"
        )
    overall = "not measured" if not verdicts else "holds" if all(verdicts) else (
        "does not hold" if not any(verdicts) else f"holds on {sum(verdicts)} of {len(verdicts)} tasks"
    )  # fmt: skip
    return [f"- **{claim.text}**: {overall}", *lines]


def efficiency_lines(text: str, fits_results: list[dict[str, Any]]) -> list[str]:
    """The data-efficiency claim: per fit panel, the power-law fits' D_a(E*) / D_b(E*) at the errors curve b
    measured; it holds in a panel where every finite ratio exceeds 1."""
    lines, verdicts = [], []
    for panel in fits_results:
        ratios = [row["fit_power"] for row in panel["efficiency"] if row["fit_power"] is not None]
        ratios = [r for r in ratios if math.isfinite(r)]
        name = ", ".join(f"{k}={v}" for k, v in panel["panel"].items()) or panel["metric"]
        if not ratios:
            lines.append(f"  - {name}: not measured (no efficiency ratio from the fits)")
            continue
        holds = all(r > 1 for r in ratios)
        verdicts.append(holds)
        pair = panel["efficiency"][0]
        shown = ", ".join(f"{r:.3g}x" for r in ratios)
        lines.append(
            f"  - {name}: {'holds' if holds else 'does not hold'}: D_{pair['a']} / D_{pair['b']} = {shown} "
            "(power-law fits, at each error the second curve measured)"
        )
    overall = "not measured" if not verdicts else "holds" if all(verdicts) else (
        "does not hold" if not any(verdicts) else f"holds in {sum(verdicts)} of {len(verdicts)} panels"
    )  # fmt: skip
    return [f"- **{text}**: {overall}", *lines]


def write_report(
    spec: str, runs: tuple[Run, ...], report: Report, workdir: str, fits_results: list[dict[str, Any]] | None
) -> str:
    """Writes `<workdir>/report.md` (atomically) and returns its text."""
    results = collect_results(runs, report, workdir)
    done = sum(1 for run in runs if os.path.isfile(os.path.join(run_directory(workdir, run.name), "summary.json")))
    machine = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.system()})"
    lines = [
        f"# {report.title}",
        "",
        f"Written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {machine} from the {done} finished runs "
        f"of {len(runs)} in the sweep `{spec}`. Every number is read from the runs' own `metrics.jsonl`.",
        "",
        "## Results",
        "",
    ]
    for task, entry in results.items():
        lines += task_table(task, entry, report.arms)
    if fits_results is not None:
        lines += [
            "## Data scaling",
            "",
            "![scaling](scaling.png)",
            "",
            "(fits in `fits.json`, points in `points.csv`)",
            "",
        ]
    picture = report.attention and os.path.join(report.attention, ATTENTION_PICTURE_FILE)
    if picture and os.path.isfile(os.path.join(workdir, picture)):
        lines += ["## Attention distance", "", f"![attention distance]({picture})", ""]
    lines += ["## The paper's claims", ""]
    for claim in report.claims:
        lines += judge(claim, results)
    if report.efficiency_claim and fits_results is not None:
        lines += efficiency_lines(report.efficiency_claim, fits_results)
    text = "\n".join(lines) + "\n"
    path = os.path.join(workdir, REPORT_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return text
