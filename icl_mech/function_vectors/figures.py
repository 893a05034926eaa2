"""Figures: the layer × head map of indirect effects, the side-by-side accuracy bars, and each
vector's dev accuracy per layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.function_vectors.results import VECTORS, FunctionVectorResults
from icl_mech.plotting import condition_bars, figure

LABELS = {
    "baseline": "baseline (zero-shot)",
    "icl": "ICL",
    "icl_shuffled": "ICL, shuffled labels",
    "tv_replace": "task vector, replace",
    "tv_add": "mean difference, add",
    "fv_add": "function vector, add",
    "fv_shuffled": "shuffled labels + function vector",
}


def indirect_effect_map(
    effects: IndirectEffect | Sequence[IndirectEffect],
    k: int = 10,
    mean: bool = True,
    columns: int = 4,
) -> Figure:
    """Indirect effect of every head (rows: layers, columns: heads), one panel per task and
    (``mean``, with several tasks) one for the average over tasks, ``columns`` panels a row;
    circles mark the top ``k`` heads of each panel, drawn at (head, layer) on their cells."""
    effects = [effects] if isinstance(effects, IndirectEffect) else list(effects)
    panels = [(e.task, e.mean.numpy(), e.layers) for e in effects]
    if mean and len(effects) > 1:
        average = np.mean([e.mean.numpy() for e in effects], axis=0)
        panels.append(("mean over tasks", average, effects[0].layers))
    limit = max(float(np.abs(values).max()) for _, values, _ in panels) or 1.0
    n_heads, n_layers = panels[0][1].shape[1], len(panels[0][2])
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    width = min(2.6, 0.5 + 0.22 * n_heads)
    fig, axes = figure(width * columns + 1.0, rows * (0.9 + 0.12 * n_layers), rows, columns,
                       squeeze=False, sharey=True)  # fmt: skip
    image = None
    for ax, (title, values, layers) in zip(axes.flat, panels):
        image = ax.pcolormesh(np.arange(n_heads + 1) - 0.5, _edges(layers), values,
                              cmap="RdBu_r", vmin=-limit, vmax=limit)  # fmt: skip
        heads, marked = top_cells(values, layers, k)
        ax.scatter(heads, marked, s=22, facecolors="none", edgecolors="black", linewidths=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(n_heads))
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("head")
    for ax in axes[:, 0]:
        ax.set_ylabel("layer")
    shown = list(axes.flat[: len(panels)])
    fig.colorbar(image, ax=shown, label="indirect effect (Δ P(answer))", shrink=0.6)
    fig.suptitle(f"Indirect effect per head (circles: top {k})")
    return fig


def top_cells(values: np.ndarray, layers: Sequence[int], k: int) -> tuple[list, list]:
    """(heads, layers) of the ``k`` largest cells of ``values`` [layer, head], largest first
    (ties: lower layer, then lower head, as ``IndirectEffect.top``)."""
    flat = np.argsort(-np.asarray(values).flatten(), kind="stable")[:k]
    n_heads = values.shape[1]
    return [int(i % n_heads) for i in flat], [int(layers[i // n_heads]) for i in flat]


def _edges(layers: Sequence[int]) -> np.ndarray:
    """Cell edges around each layer: halfway to its neighbours (layers need not be adjacent)."""
    centres = np.asarray(layers, dtype=float)
    if len(centres) == 1:
        return centres[0] + np.array([-0.5, 0.5])
    middles = (centres[1:] + centres[:-1]) / 2
    first, last = centres[0] - (middles[0] - centres[0]), centres[-1] + (centres[-1] - middles[-1])
    return np.concatenate([[first], middles, [last]])


def accuracy_bars(results: FunctionVectorResults) -> Figure:
    """Every condition per task (test) and the mean over tasks; whiskers: 95% bootstrap
    intervals over test queries (the mean: stratified, queries resampled within tasks)."""
    title = "Baseline, ICL, task vector, mean difference, function vector"
    return condition_bars(results.estimates_frame(), LABELS, title)


def layer_curves(results: FunctionVectorResults) -> Figure:
    """Dev first-token accuracy per patched layer for each vector: one thin line per task, the
    mean over tasks in bold; dashed: mean ICL (test), dotted: mean baseline (test)."""
    curves = results.curves_frame()
    table = results.to_frame()
    fig, axes = figure(3.2 * len(VECTORS) + 1, 3.6, 1, len(VECTORS), sharey=True)
    for ax, condition in zip(axes, VECTORS):
        part = curves[curves["mode"] == condition]
        few = part["task"].nunique() <= 6
        for task, one in part.groupby("task", sort=False):
            ax.plot(one["layer"], one["accuracy"], lw=0.9, alpha=0.6 if few else 0.35,
                    label=task if few else None)  # fmt: skip
        mean = part.groupby("layer")["accuracy"].mean()
        ax.plot(mean.index, mean.values, color="black", lw=2.0, label="mean over tasks")
        reference = "icl_shuffled" if condition == "fv_shuffled" else "icl"
        ax.axhline(table[reference].mean(), color="tab:green", ls="--", label=f"mean {reference}")
        ax.axhline(table["baseline"].mean(), color="tab:gray", ls=":", label="mean baseline")
        ax.set_title(LABELS[condition], fontsize=9)
        ax.set_xlabel("layer (vector after it)")
    axes[0].set_ylabel("first-token accuracy (dev)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=6, loc="upper right")
    fig.suptitle("Accuracy per layer")
    return fig
