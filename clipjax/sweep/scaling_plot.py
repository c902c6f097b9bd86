"""The scaling picture (the paper's Fig. 2): one panel per fit panel, log-log axes, each curve's points (mean
over seeds, the seeds' range as an error bar, every seed as a faint dot), its power law (solid) and saturating
law (dashed), one colour per curve."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend needed

from clipjax.sweep.study import law_of


def plot_scaling(results: list[dict[str, Any]], size_axis: str, path: str) -> None:
    """Writes the picture of `clipjax.sweep.study.fit_points` results to `path` (PNG); `size_axis` labels x."""
    figure = Figure(figsize=(4.2 * len(results) + 0.6, 3.8), layout="constrained")
    axes = figure.subplots(1, len(results), squeeze=False)[0]
    colours = [f"C{i}" for i in range(10)]
    for axis, result in zip(axes, results):
        for number, (curve, data) in enumerate(result["curves"].items()):
            colour = colours[number % len(colours)]
            if not data["points"]:  # every point left out of the fits (fits.json names them)
                continue
            sizes = np.array([p["size"] for p in data["points"]])
            errors = np.array([p["fitted"] for p in data["points"]])
            unique = np.unique(sizes)
            means = np.array([errors[sizes == s].mean() for s in unique])
            spread = np.array([[means[i] - errors[sizes == s].min(), errors[sizes == s].max() - means[i]]
                               for i, s in enumerate(unique)]).T  # fmt: skip
            axis.scatter(sizes, errors, s=8, color=colour, alpha=0.35)
            axis.errorbar(unique, means, yerr=spread, fmt="o", color=colour, capsize=3, label=curve)
            grid = np.geomspace(unique.min() / 1.5, unique.max() * 1.5, 100)
            for kind, style in (("power", "-"), ("saturating", "--")):
                law = law_of(data, kind)
                if law is not None:
                    axis.plot(grid, law(grid), style, color=colour, linewidth=1.2,
                              label=f"{curve}: {kind}, alpha {law.alpha:.2f}")  # fmt: skip
        axis.set_xscale("log")
        axis.set_yscale("log")
        fitted = f"1 - {result['metric']}" if result["error"] == "1 - metric" else result["metric"]
        panel = ", ".join(f"{k}={v}" for k, v in result["panel"].items())
        axis.set_title(f"{panel}\n{fitted}" if panel else fitted, fontsize=9)
        axis.set_xlabel(size_axis)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    axes[0].set_ylabel("error (fitted)")
    figure.savefig(path, dpi=120)
