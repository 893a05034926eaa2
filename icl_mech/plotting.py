"""Shared figure style, and the ICL accuracy figure of the demo.

Each method's paper figures live next to the method (``icl_mech.anchors.figures``, ...);
every figure function returns a matplotlib ``Figure`` and never calls ``show``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def save(figure, out_dir: Path, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path


def grouped_bars(
    frame: pd.DataFrame,
    group: str,
    series: str,
    value: str,
    title: str,
    ylabel: str,
    chance: dict[str, float] | None = None,
):
    """Bars of ``value`` per ``group``, one bar per ``series``; optional chance-level ticks."""
    groups = list(dict.fromkeys(frame[group]))
    names = list(dict.fromkeys(frame[series]))
    width = 0.8 / len(names)
    figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(groups), 3.6))
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        rows = frame[frame[series] == name].set_index(group).reindex(groups)
        bars = axis.bar(x + (i - (len(names) - 1) / 2) * width, rows[value], width, label=name)
        axis.bar_label(bars, fmt="%.2f", fontsize=7)
    if chance:
        for i, g in enumerate(groups):
            if g in chance:
                axis.hlines(chance[g], i - 0.45, i + 0.45, colors="grey", linestyles=":")
    axis.set_xticks(x, groups)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 1.05)
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return figure


def accuracy_figure(results: Sequence, model_name: str):
    """Zero-shot vs few-shot accuracy per task (dotted: chance)."""
    frame = pd.DataFrame(
        [
            {"task": r.task, "setting": f"{r.shots}-shot per class", "accuracy": r.accuracy}
            for r in results
        ]
    )
    chance = {r.task: 1 / r.n_classes for r in results if r.n_classes}
    return grouped_bars(
        frame,
        "task",
        "setting",
        "accuracy",
        f"In-context learning accuracy, {model_name}",
        "accuracy",
        chance,
    )
