"""Figures: accuracy per layer (per task and mean, and per task as a heatmap), the
baseline/ICL/TV bars, conflicts, the logit lens of θ."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from icl_mech.plotting import figure
from icl_mech.show.logit_lens import LogitLens, logit_lens_figure
from icl_mech.show.task_vectors import accuracy_heatmap
from icl_mech.task_vectors.conflict import ConflictResult
from icl_mech.task_vectors.lens import shown
from icl_mech.task_vectors.results import CONDITIONS, TaskVectorResults

LABELS = {
    "baseline": "baseline (zero-shot)",
    "icl": "ICL (5 demonstrations)",
    "tv_replace": "task vector, replace",
    "tv_add": "task vector, add (mean difference)",
}
MODES = {"replace": "replace θ at layer L", "add": "add mean ICL − zero-shot at layer L"}


def layer_curves(results: TaskVectorResults, split: str = "dev") -> Figure:
    """First-token accuracy per patched layer: one thin line per task, the mean in bold."""
    curves = results.curves_frame()
    curves = curves[curves["split"] == split]
    table = results.to_frame()
    fig, axes = figure(11, 4, 1, 2, sharey=True)
    for ax, (mode, title) in zip(axes, MODES.items()):
        part = curves[curves["mode"] == mode]
        few = part["task"].nunique() <= 6
        for task, one in part.groupby("task", sort=False):
            label = task if few else None
            ax.plot(one["depth"], one["accuracy"], lw=0.9, alpha=0.6 if few else 0.35, label=label)
        mean = part.groupby("depth")["accuracy"].mean()
        ax.plot(mean.index, mean.values, color="black", lw=2.2, label="mean over tasks")
        ax.axhline(table["icl"].mean(), color="tab:green", ls="--", label="mean ICL (test)")
        ax.axhline(table["baseline"].mean(), color="tab:gray", ls=":", label="mean baseline")
        ax.set_title(title)
        ax.set_xlabel("patched layer (fraction of depth)")
        ax.set_xlim(0, 1)
    axes[0].set_ylabel(f"first-token accuracy ({split})")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].legend(loc="upper right", fontsize=7)
    fig.suptitle("Task vectors: accuracy per layer")
    return fig


def layer_heatmap(results: TaskVectorResults, split: str = "dev") -> Figure:
    """Accuracy per task and patched layer, one panel per mode: ``accuracy_heatmap`` of the
    curves frame (the reproduction's ``curves`` table)."""
    return accuracy_heatmap(results.curves_frame(), split)


def lens_figure(lenses: Sequence[LogitLens]) -> Figure:
    """The logit lens of θ per layer for the tasks of ``lens.SHOWN`` that were run."""
    return logit_lens_figure(shown(lenses))


def accuracy_bars(results: TaskVectorResults) -> Figure:
    """Baseline, ICL and the two task-vector variants per task (test), with the mean over
    tasks. Whiskers: 95% bootstrap intervals over test queries (the mean: stratified, queries
    resampled within tasks)."""
    means = results.intervals()
    names = [t.task for t in results.tasks] + ["mean"]
    x = np.arange(len(names))
    width = 0.8 / len(CONDITIONS)
    fig, ax = figure(max(7, 0.55 * len(names) + 2), 4)
    for i, condition in enumerate(CONDITIONS):
        estimates = [t.estimate(condition) for t in results.tasks] + [means[condition]]
        values = np.array([e.value for e in estimates])
        errors = np.array([[e.value - e.low, e.high - e.value] for e in estimates]).T
        ax.bar(x + (i - 1.5) * width, values, width, yerr=errors, capsize=1.5,
               error_kw={"elinewidth": 0.8}, label=LABELS[condition])  # fmt: skip
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("first-token accuracy (test)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_title("Baseline vs ICL vs task vector", pad=24)
    return fig


def conflict_bars(conflicts: Sequence[ConflictResult]) -> Figure:
    """Per task pair and condition: the share of answers following A (demos) or B (vector)."""
    fig, axes = figure(4 * len(conflicts), 3.6, 1, len(conflicts), squeeze=False)
    for ax, result in zip(axes[0], conflicts):
        frame = result.to_frame()
        x = np.arange(len(frame))
        for shift, column, label in (
            (-0.2, "follows_demonstrations", f"A: {result.task_a}"),
            (0.2, "follows_vector", f"B: {result.task_b}"),
        ):
            errors = None
            if f"{column}_low" in frame:  # whiskers: 95% bootstrap interval over queries
                low, high = frame[f"{column}_low"], frame[f"{column}_high"]
                errors = np.stack([frame[column] - low, high - frame[column]])
            ax.bar(x + shift, frame[column], 0.4, yerr=errors, capsize=2, label=label)
        ax.set_xticks(x, frame["condition"], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"demos of A, vector of B (n={result.n_queries})", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("share of first tokens")
    return fig
