"""The attention-distance picture (the paper's Fig. 3): one panel per checkpoint on a shared y axis, the block
on x, one dot per head, and the distance uniform attention would give as a dashed reference line."""

from __future__ import annotations

from typing import Any

import numpy as np


def plot_attention_distances(panels: list[dict[str, Any]], path: str, variant: str = "renormalised") -> None:
    """Writes the picture to `path` (PNG).

    Args:
      panels: per checkpoint {"label": str, variant: float [layers, heads] mean distances in pixels,
        "uniform": float, the uniform-attention distance}.
      variant: which distances to draw ("renormalised" or "unrenormalised").
    """
    # The object API: no pyplot state, no display backend needed. Imported here: matplotlib takes 0.3 s to
    # import, and every clipjax command imports the tasks (this module among them) but few draw.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * len(panels) + 0.8, 3.6), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for axis, panel in zip(axes, panels):
        distances = np.asarray(panel[variant])
        layers, heads = distances.shape
        x = np.repeat(np.arange(1, layers + 1), heads)
        # A little horizontal jitter, fixed, so that heads with equal distances stay visible.
        jitter = np.tile(np.linspace(-0.15, 0.15, heads), layers) if heads > 1 else 0.0
        axis.scatter(x + jitter, distances.reshape(-1), s=10, alpha=0.75)
        axis.axhline(panel["uniform"], color="grey", linestyle="--", linewidth=1, label="uniform attention")
        axis.set_title(panel["label"], fontsize=9)
        axis.set_xlabel("block")
        axis.set_xticks(np.arange(1, layers + 1, max(1, layers // 6)))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"mean attention distance (px, {variant})")
    top = max(max(np.max(panel[variant]), panel["uniform"]) for panel in panels)
    axes[0].set_ylim(0, 1.08 * top)
    axes[0].legend(loc="lower right", fontsize=8)
    figure.savefig(path, dpi=120)
