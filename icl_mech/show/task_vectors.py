"""Task vectors over tasks and layers: first-token accuracy of every task at every patched layer
(the curves frame of ``TaskVectorResults.curves_frame()`` or its CSV), as a heatmap and as an
HTML table. A dot marks each task's earliest best layer (the layer the protocol would choose
on that split), unless every layer ties."""

from __future__ import annotations

import html
import math

import pandas as pd
from matplotlib.figure import Figure

from icl_mech.errors import IclMechError
from icl_mech.plotting import figure as new_figure

COLUMNS = ("task", "mode", "split", "layer", "accuracy")
TITLES = {"replace": "θ replaces the residual at layer L", "add": "mean ICL − zero-shot added"}
_RGB = (49, 130, 189)


def accuracy_matrix(
    curves: pd.DataFrame, mode: str = "replace", split: str = "dev"
) -> pd.DataFrame:
    """Tasks (rows, in the frame's order) x layers (columns): the accuracy of one mode and
    split, exactly the frame's values."""
    missing = [c for c in COLUMNS if c not in curves.columns]
    if missing:
        raise IclMechError(
            f"the curves frame lacks columns {missing}; expected {list(COLUMNS)} "
            f"(TaskVectorResults.curves_frame()), got {list(curves.columns)}"
        )
    part = curves[(curves["mode"] == mode) & (curves["split"] == split)]
    if part.empty:
        present = sorted(set(zip(curves["mode"], curves["split"])))
        raise IclMechError(
            f"no curve with mode={mode!r} and split={split!r}; the frame has (mode, split) "
            f"{present}"
        )
    doubled = part[part.duplicated(["task", "layer"])]
    if len(doubled):
        first = doubled.iloc[0]
        raise IclMechError(
            f"the curves frame has several accuracies for task {first['task']!r} at layer "
            f"{first['layer']} (mode={mode!r}, split={split!r})"
        )
    tasks = list(dict.fromkeys(part["task"]))
    return part.pivot(index="task", columns="layer", values="accuracy").reindex(tasks)


def _modes(curves: pd.DataFrame, split: str, modes) -> list[str]:
    if modes is not None:
        return list(modes)
    found = set()
    if {"mode", "split"} <= set(curves.columns):
        found = set(curves.loc[curves["split"] == split, "mode"])
    ordered = [m for m in TITLES if m in found] + sorted(found - set(TITLES))
    return ordered or ["replace"]  # accuracy_matrix then says what the frame has


def accuracy_heatmap(curves: pd.DataFrame, split: str = "dev", modes=None) -> Figure:
    """One panel per mode (default: every mode of the split): tasks x patched layer, coloured
    by first-token accuracy; a dot at each task's earliest best layer."""
    modes = _modes(curves, split, modes)
    order = list(dict.fromkeys(curves.loc[curves["split"] == split, "task"]))  # shared rows
    matrices = [accuracy_matrix(curves, mode, split).reindex(order) for mode in modes]
    n_tasks, n_layers = len(matrices[0]), len(matrices[0].columns)
    fig, axes = new_figure(1.5 + 0.2 * n_layers * len(modes), 1.2 + 0.24 * n_tasks, 1,
                           len(modes), squeeze=False, sharey=True)  # fmt: skip
    for ax, mode, matrix in zip(axes[0], modes, matrices):
        image = ax.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis",
                          aspect="auto", interpolation="nearest")  # fmt: skip
        values = matrix.to_numpy(dtype=float)
        chosen = values.max(axis=1) > values.min(axis=1)  # no dot where every layer ties
        best = values.argmax(axis=1)  # the earliest of equal maxima
        ax.scatter(best[chosen], chosen.nonzero()[0], s=10, color="white", edgecolor="black",
                   lw=0.5)  # fmt: skip
        step = 1 if len(matrix.columns) <= 32 else 2
        ax.set_xticks(range(0, len(matrix.columns), step), list(matrix.columns)[::step],
                      fontsize=6)  # fmt: skip
        ax.set_yticks(range(len(matrix)), list(matrix.index), fontsize=7)
        ax.set_xlabel("patched layer")
        ax.set_title(TITLES.get(mode, mode), fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label=f"first-token accuracy ({split})")
    fig.suptitle(f"Task vectors: accuracy per task and layer ({split}; dot: the best layer)")
    return fig


def accuracy_heatmap_html(curves: pd.DataFrame, split: str = "dev", modes=None) -> str:
    """The heatmap as self-contained HTML tables (one per mode), each cell its value."""
    tables = []
    for mode in _modes(curves, split, modes):
        matrix = accuracy_matrix(curves, mode, split)
        head = "".join(f'<th style="padding:0 3px">{layer}</th>' for layer in matrix.columns)
        rows = []
        for task, values in matrix.iterrows():
            cells = "".join(
                f'<td style="background:rgba({_RGB[0]},{_RGB[1]},{_RGB[2]},{_alpha(value)});'
                f'padding:0 3px;text-align:right">{value:.2f}</td>'
                for value in values.to_numpy(dtype=float)
            )
            rows.append(
                f'<tr><th style="text-align:left">{html.escape(str(task))}</th>{cells}</tr>'
            )
        tables.append(
            f'<div style="font:bold 13px sans-serif;margin:6px 0">'
            f"{html.escape(TITLES.get(mode, mode))} ({html.escape(split)})</div>"
            f'<table style="border-collapse:collapse;font:11px monospace">'
            f"<tr><th>task \\ layer</th>{head}</tr>{''.join(rows)}</table>"
        )
    return f"<div>{''.join(tables)}</div>"


def _alpha(value: float) -> str:
    return "0" if math.isnan(value) else f"{min(max(value, 0.0), 1.0):.2f}"


__all__ = ["accuracy_heatmap", "accuracy_heatmap_html", "accuracy_matrix"]
