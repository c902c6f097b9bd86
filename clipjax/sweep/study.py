"""`python -m clipjax.sweep fit`: a finished (or partly finished) sweep's points, their scaling-law fits, the
data-efficiency ratios between curves, written as points.csv, fits.json and scaling.png, and a printed table.

Every done run with a `metric` is a point: its axes (the study's coordinates), its metric's final value (from the
run's summary.json) and the error fitted (1 - metric, or the metric; `Fit.error`). Points are grouped by panel
(the `Fit.panels` axes and the metric) and, within a panel, by curve (`Fit.curve`); each curve with points at two
or more sizes gets a power law, with three or more a saturating law too (clipjax/sweep/fits.py), each with
standard errors and bootstrap intervals over its seeds.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from clipjax.errors import ConfigError
from clipjax.sweep import fits
from clipjax.sweep.runs import read_summary
from clipjax.sweep.spec import Fit, Run
from clipjax.tasks import get_task

POINTS_FILE, FITS_FILE, PLOT_FILE = "points.csv", "fits.json", "scaling.png"


def error_form(fit: Fit, task: str, metric: str) -> str:
    """ "1-metric" or "metric": what is fitted for `metric` of a `task` run, as `fit.error` says.

    Raises:
      ConfigError: error="auto" and the task does not declare the metric.
    """
    if fit.error != "auto":
        return fit.error
    spec = get_task(task)
    if metric.rsplit("/", 1)[-1] not in spec.metrics:
        raise ConfigError(
            f"sweep fit: task {task!r} does not declare {metric!r}, so whether larger is better is unknown; set "
            "Fit(error='1-metric') or Fit(error='metric') in the sweep file"
        )
    return "metric" if spec.smaller_is_better(metric) else "1-metric"


def collect_points(runs: tuple[Run, ...], fit: Fit, workdir: str) -> list[dict[str, Any]]:
    """One row per done run with a metric and the fit's size axis: {"run", its axes..., "metric", "value",
    "fitted", "error"} (a run without the size axis, e.g. a study's arm outside its scaling curves, is no point).

    Raises:
      ConfigError: no run has the size axis, a done run's summary lacks its metric, or a point's axes lack the
        fit's curve or panel axes.
    """
    if not any(fit.size in run.axes for run in runs if run.metric is not None):
        raise ConfigError(f"sweep fit: no run with a metric has the fit's size axis {fit.size!r}")
    points = []
    for run in runs:
        if run.metric is None or fit.size not in run.axes:
            continue
        summary = read_summary(workdir, run.name)
        if summary is None:
            continue
        if run.metric not in summary["summary"]:
            known = ", ".join(sorted(k for k in summary["summary"] if "/" in k))
            raise ConfigError(f"sweep run {run.name!r}: its summary has no {run.metric!r}; it has {known}")
        for axis in (fit.size, fit.curve, *fit.panels):
            if axis not in run.axes:
                raise ConfigError(f"sweep run {run.name!r} has no axis {axis!r}, which the sweep's fit reads")
        form = error_form(fit, summary["task"], run.metric)
        value = float(summary["summary"][run.metric])
        fitted = float(fits.as_error(value, larger_is_better=form == "1-metric"))
        points.append({"run": run.name, **run.axes, "metric": run.metric, "value": value, "fitted": fitted,
                       "error": "1 - metric" if form == "1-metric" else "metric"})  # fmt: skip
    return points


def write_points(points: list[dict[str, Any]], path: str) -> None:
    """points.csv: the run, every axis any point has (in the order first seen), metric, value, fitted, error."""
    columns = list(dict.fromkeys(key for point in points for key in point))
    tail = ["metric", "value", "fitted", "error"]
    columns = [c for c in columns if c not in tail] + tail
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(points)
    os.replace(path + ".tmp", path)


def fit_points(points: list[dict[str, Any]], fit: Fit, bootstrap: int = 1000) -> list[dict[str, Any]]:
    """The fits of every panel: [{"panel": {axis: value}, "metric", "error", "curves": {curve: {...}},
    "efficiency": [...]}], each curve with its points (size, seed, fitted error), "power" and "saturating"
    laws (parameters, standard errors, bootstrap intervals; or {"skipped": why}).

    Efficiency (with `fit.efficiency` = (a, b) and both curves in the panel): at the mean error E* curve b
    measured at each of its sizes, D_a(E*) / D_b(E*) from each law's inverted fits, and fit-free by
    interpolation in log-log (None outside curve a's measured range).
    """
    panels: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for point in points:
        panels[(*(point[axis] for axis in fit.panels), point["metric"])].append(point)
    results = []
    for key, members in panels.items():
        curves: dict[str, dict[str, Any]] = {}
        for curve in dict.fromkeys(str(point[fit.curve]) for point in members):
            chosen = [point for point in members if str(point[fit.curve]) == curve]
            curves[curve] = _fit_curve(chosen, fit, bootstrap)
        results.append({
            "panel": dict(zip(fit.panels, key[:-1])),
            "metric": key[-1],
            "error": members[0]["error"],
            "curves": curves,
            "efficiency": _efficiency(curves, fit.efficiency),
        })  # fmt: skip
    return results


def _fit_curve(points: list[dict[str, Any]], fit: Fit, bootstrap: int) -> dict[str, Any]:
    # A log-log fit needs positive finite errors: a diverged run (NaN) or a perfect score (error 0) is left out
    # of the fits, and named.
    usable = [p for p in points if math.isfinite(p["fitted"]) and p["fitted"] > 0 and float(p[fit.size]) > 0]
    sizes = np.array([float(point[fit.size]) for point in usable])
    errors = np.array([point["fitted"] for point in usable])
    result: dict[str, Any] = {
        "points": [{"size": s, "seed": p.get(fit.seed), "fitted": e} for s, e, p in zip(sizes, errors, usable)],
        "left_out": [{"run": p["run"], "fitted": p["fitted"]} for p in points if p not in usable],
    }
    for name, law_fit in (("power", fits.fit_power_law), ("saturating", fits.fit_saturating)):
        try:
            law = law_fit(sizes, errors)
        except ValueError as error:
            result[name] = {"skipped": str(error)}
            continue
        intervals = fits.bootstrap_intervals(sizes, errors, law_fit, samples=bootstrap) if bootstrap else {}
        result[name] = {
            "a": law.a, "alpha": law.alpha, "e_inf": law.e_inf,
            "stderr": {"a": law.a_stderr, "alpha": law.alpha_stderr, "e_inf": law.e_inf_stderr},
            "bootstrap": {name: list(interval) for name, interval in intervals.items()},
        }  # fmt: skip
    return result


def law_of(result: dict[str, Any], kind: str) -> fits.ScalingLaw | None:
    """The fitted law of kind "power" / "saturating" in a curve's result, None where it was skipped."""
    law = result.get(kind, {})
    if "a" not in law:
        return None
    return fits.ScalingLaw(kind, law["a"], law["alpha"], law["e_inf"])


def _efficiency(curves: dict[str, dict[str, Any]], pair: tuple[str, str] | None) -> list[dict[str, Any]]:
    if pair is None or not set(pair) <= set(curves):
        return []
    a, b = (curves[name] for name in pair)
    size_a = np.array([p["size"] for p in a["points"]])
    error_a = np.array([p["fitted"] for p in a["points"]])
    size_b = np.array([p["size"] for p in b["points"]])
    error_b = np.array([p["fitted"] for p in b["points"]])
    rows: list[dict[str, Any]] = []
    for size in np.unique(size_b):
        target = float(error_b[size_b == size].mean())
        row: dict[str, Any] = {"a": pair[0], "b": pair[1], "size_b": float(size), "error": target}
        for kind in ("power", "saturating"):
            law_a, law_b = law_of(a, kind), law_of(b, kind)
            row[f"fit_{kind}"] = fits.efficiency_ratio(law_a, law_b, target) if law_a and law_b else None
        try:
            row["interpolated"] = fits.interpolated_data_for_error(size_a, error_a, target) / float(size)
        except ValueError:  # fewer than two sizes on curve a
            row["interpolated"] = None
        rows.append(row)
    return rows


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write_fits(results: list[dict[str, Any]], fit: Fit, path: str) -> None:
    """fits.json: the fit settings and every panel's `fit_points` result (NaN and infinity as null)."""
    document = {
        "size": fit.size,
        "curve": fit.curve,
        "panels_by": list(fit.panels),
        "laws": {"power": "E = a * D^-alpha", "saturating": "E = e_inf + a * D^-alpha"},
        "efficiency": "D_a(E*) / D_b(E*) at the errors E* curve b measured",
        "panels": results,
    }
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(_finite(document), f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def format_table(results: list[dict[str, Any]], fit: Fit) -> str:
    """The fits as text: per panel, each curve's laws, then the efficiency ratios."""

    def number(value: Any, digits: int = 3) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"

    lines = []
    for result in results:
        panel = ", ".join(f"{axis}={value}" for axis, value in result["panel"].items())
        fitted = f"1 - {result['metric']}" if result["error"] == "1 - metric" else result["metric"]
        lines.append(f"{panel + ': ' if panel else ''}{result['metric']} (fitted: E = {fitted}, D = {fit.size})")
        lines.append(
            f"  {fit.curve:<12} {'points':>6}  {'power: A':>10} {'alpha':>14}  {'saturating: E_inf':>17} {'alpha':>14}"
        )
        for curve, data in result["curves"].items():
            power, saturating = data["power"], data["saturating"]
            power_text = (
                f"{number(power['a']):>10} {number(power['alpha']):>7} ± {number(power['stderr']['alpha'], 2):<4}"
                if "a" in power
                else f"{'(' + power['skipped'][:24] + ')':>25}"
            )
            saturating_text = (
                f"{number(saturating['e_inf']):>17} {number(saturating['alpha']):>7} ± "
                f"{number(saturating['stderr']['alpha'], 2):<4}"
                if "a" in saturating
                else f"  ({saturating['skipped'][:40]})"
            )
            lines.append(f"  {curve:<12} {len(data['points']):>6}  {power_text}  {saturating_text}")
            for dropped in data["left_out"]:
                lines.append(
                    f"    left out of the fits: {dropped['run']} (error {dropped['fitted']}: not positive and finite)"
                )
        for row in result["efficiency"]:
            at = f"E*={row['error']:.4g} ({row['b']} at {row['size_b']:,.0f})"
            lines.append(
                f"  efficiency D_{row['a']} / D_{row['b']} at {at}: "
                f"power fit {number(row['fit_power'])}x, saturating fit {number(row['fit_saturating'])}x, "
                f"interpolated {number(row['interpolated'])}x"
            )
    return "\n".join(lines)
