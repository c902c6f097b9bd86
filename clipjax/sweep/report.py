"""A study's report (`<workdir>/report.md`): per task a table of every arm's final metric (mean ± std over
seeds), read back from the runs' own metrics.jsonl, and one table of every task; the scaling picture and
data-efficiency ratios of the study's fit; its attention-distance picture and per-block table; and one line per
claim saying whether the study agrees, with the numbers. A claim that does not hold is written as not
holding: nothing here is tuned to a claim.
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
from clipjax.tasks.analyze import RESULTS_FILE as ATTENTION_RESULTS_FILE
from clipjax.train.metrics import METRICS_FILE

REPORT_FILE = "report.md"
ATTENTION_TASK = "attention"  # the task name of the attention claim: the last block's mean distance, in pixels


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


def summary_table(results: dict[str, dict[str, Any]], order: tuple[str, ...]) -> list[str]:
    """One markdown table of every task: a row per arm, a column per task (its metric, with "↓" where smaller
    is better), each cell the mean ± std over seeds ("-" where the arm was not measured)."""
    tasks = list(results)
    arms = list(dict.fromkeys(arm for entry in results.values() for arm in entry["arms"]))
    arms = [arm for arm in order if arm in arms] + sorted(set(arms) - set(order))
    header = [f"{t} ({results[t]['metric']}{' ↓' if results[t]['smaller_is_better'] else ''})" for t in tasks]
    lines = ["| arm | " + " | ".join(header) + " |", "|---|" + "---|" * len(tasks)]
    for arm in arms:
        cells = [_number(*summary_of(results[task]["arms"][arm])[:2]) if arm in results[task]["arms"] else "-"
                 for task in tasks]  # fmt: skip
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines + [""]


def judge(claim: Claim, results: dict[str, dict[str, Any]]) -> list[str]:
    """The claim's lines: per task whether `claim.better` beats `claim.worse` (or ties, with at_least), with
    both arms' mean ± std; "clearly" where the gap exceeds the two spreads together (with two or more seeds
    each; with one, the line says the gap cannot be judged). The first line sums them up, saying on how many
    tasks the verdict is clear."""
    tasks = claim.tasks or tuple(t for t, e in results.items() if {claim.better, claim.worse} <= set(e["arms"]))
    verdicts, clear, lines = [], [], []
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
        clear.append(qualifier == " clearly")
        lines.append(
            f"  - {task} ({entry['metric']}): {verdict}: {claim.better} {_number(mean_a, std_a)} (n={n_a}) against "
            f"{claim.worse} {_number(mean_b, std_b)} (n={n_b})"
        )
    overall = "not measured" if not verdicts else "holds" if all(verdicts) else (
        "does not hold" if not any(verdicts) else f"holds on {sum(verdicts)} of {len(verdicts)} tasks"
    )  # fmt: skip
    if verdicts:  # how many of those verdicts are beyond the seeds' spread
        spread = "every task" if all(clear) else f"{sum(clear)} of {len(clear)}"
        overall += f" (the gap beyond the seeds' spread on {spread})"
    return [f"- **{claim.text}**: {overall}", *lines]


def collect_attention(runs: tuple[Run, ...], report: Report, workdir: str) -> dict[str, list[tuple[Any, list]]]:
    """{arm: [(seed, per-block [mean distance, across-head std] (renormalised, pixels)), ...]} from the
    attention run's attention_distance.json, each checkpoint's arm and seed from the axes of the run whose
    workdir it is ({} before that run is done)."""
    path = os.path.join(run_directory(workdir, report.attention or ""), ATTENTION_RESULTS_FILE)
    if not report.attention or not os.path.isfile(path):
        return {}
    by_directory = {run_directory(workdir, run.name): run for run in runs}
    with open(path, encoding="utf-8") as f:
        checkpoints = json.load(f)["checkpoints"]
    towers: dict[str, list[tuple[Any, list]]] = defaultdict(list)
    for checkpoint in checkpoints:
        run = by_directory.get(os.path.abspath(checkpoint["init"]))
        arm = str(run.axes.get(report.arm, run.name)) if run else os.path.basename(checkpoint["init"])
        means = np.array(checkpoint["renormalised"]["mean"], np.float64)  # [blocks, heads]
        spreads = checkpoint["renormalised"]["across_head_std"]  # [blocks]
        blocks = [[float(row.mean()), float(std)] for row, std in zip(means, spreads)]
        towers[arm].append((run.axes.get(report.seed) if run else None, blocks))
    return towers


def attention_lines(towers: dict[str, list[tuple[Any, list]]], order: tuple[str, ...]) -> list[str]:
    """A markdown table: per arm, each block's mean attention distance over its heads (mean ± std over seeds)
    and the last block's spread across heads (the diversity of its heads)."""
    blocks = len(next(iter(towers.values()))[0][1])
    lines = [
        "| arm | " + " | ".join(f"block {b + 1} (px)" for b in range(blocks)) + " | last block, across heads | seeds |",
        "|---|" + "---|" * (blocks + 2),
    ]
    for arm in [a for a in order if a in towers] + sorted(set(towers) - set(order)):
        values = np.array([per_block for _, per_block in towers[arm]], np.float64)  # [seeds, blocks, 2]
        spread = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])
        cells = [_number(m, s) for m, s in zip(values[:, :, 0].mean(0), spread[:, 0])]
        last_heads = _number(values[:, -1, 1].mean(), spread[-1, 1])
        lines.append(f"| {arm} | {' | '.join(cells)} | {last_heads} | {len(values)} |")
    return lines + [""]


def attention_entry(towers: dict[str, list[tuple[Any, list]]]) -> dict[str, Any]:
    """The last block's mean attention distance per arm as a task entry of `collect_results`'s form, so that
    `judge` can say which arm's deep heads are more local (smaller is "better": more local)."""
    arms = {arm: [(seed, blocks[-1][0], arm) for seed, blocks in values] for arm, values in towers.items()}
    return {"metric": "last block's mean attention distance, px", "smaller_is_better": True, "arms": arms}


def efficiency_lines(text: str, fits_results: list[dict[str, Any]]) -> list[str]:
    """The data-efficiency claim: per fit panel, the power-law fits' D_a(E*) / D_b(E*) at the errors curve b
    measured; it holds in a panel where every finite ratio exceeds 1. A panel without a ratio says why where a
    curve's error does not fall with the data (its power law's alpha <= 0)."""
    lines, verdicts, unmeasured = [], [], 0
    for panel in fits_results:
        ratios = [row["fit_power"] for row in panel["efficiency"] if row["fit_power"] is not None]
        ratios = [r for r in ratios if math.isfinite(r)]
        name = ", ".join(f"{k}={v}" for k, v in panel["panel"].items()) or panel["metric"]
        if not ratios:
            rising = [
                f"{curve}'s alpha = {fit['power']['alpha']:.3g}" for curve, fit in panel.get("curves", {}).items()
                if fit.get("power", {}).get("alpha") is not None and fit["power"]["alpha"] <= 0
            ]  # fmt: skip
            why = f"{', '.join(rising)}: its error does not fall with the data" if rising else "no ratio from the fits"
            lines.append(f"  - {name}: not measured ({why})")
            unmeasured += 1
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
    if verdicts and unmeasured:
        overall += f" ({unmeasured} more not measured)"
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
    if results:
        lines += ["Every task, mean ± std over seeds (the tables per task below list each seed's value):", ""]
        lines += summary_table(results, report.arms)
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
    towers = collect_attention(runs, report, workdir)
    if towers:
        picture = os.path.join(report.attention, ATTENTION_PICTURE_FILE)
        lines += ["## Attention distance", "", f"![attention distance]({picture})", ""]
        lines += ["Mean attention distance (renormalised over patch keys), mean ± std over seeds:", ""]
        lines += attention_lines(towers, report.arms)
        results = {**results, ATTENTION_TASK: attention_entry(towers)}
    lines += ["## The paper's claims", ""]
    for claim in report.claims:
        lines += judge(claim, {task: entry for task, entry in results.items() if task != ATTENTION_TASK or
                               ATTENTION_TASK in claim.tasks})  # fmt: skip
    if report.efficiency_claim and fits_results is not None:
        lines += efficiency_lines(report.efficiency_claim, fits_results)
    text = "\n".join(lines) + "\n"
    path = os.path.join(workdir, REPORT_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return text
