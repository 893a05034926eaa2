"""Figures of the vector atlas: accuracy of every vector with intervals, the cosine of every
pair of vectors at every layer, what each costs, and I2CL's calibration loss."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icl_mech.plotting import condition_bars, figure
from icl_mech.vector_atlas.results import AtlasResults

LABELS = {
    "zero_shot": "zero-shot", "icl": "ICL", "icl_i2cl_demos": "ICL, I2CL's demos",
    "task_vector": "task vector", "mean_difference": "mean difference",
    "function_vector": "function vector", "state_inner": "state (inner)",
    "state_momentum": "state (momentum)", "icv": "ICV", "i2cl": "I2CL",
}  # fmt: skip


def accuracy_bars(results: AtlasResults) -> Figure:
    """Test accuracy per task and condition, then the mean of each task kind (stratified
    interval); whiskers: 95% bootstrap intervals."""
    frame = results.accuracy_frame()
    frame = frame[~frame["condition"].str.endswith(":labels")]
    summary = results.summary_frame()
    summary = summary[~summary["condition"].str.endswith(":labels")]
    means = summary.assign(task=lambda f: "mean " + f["kind"])
    columns = ["task", "condition", "accuracy", "accuracy_low", "accuracy_high", "n"]
    long = pd.concat([frame[columns], means[columns]], ignore_index=True)
    return condition_bars(long, LABELS, "Every way to put a task into a vector")


def cosine_maps(results: AtlasResults) -> Figure:
    """Per task kind: the cosine of every pair of vectors (rows) at every layer (columns),
    averaged over the kind's tasks."""
    mean = results.mean_cosines()
    kinds = list(dict.fromkeys(mean["kind"]))
    pairs = list(dict.fromkeys(zip(mean["a"], mean["b"])))
    fig, axes = figure(7.5, 0.28 * len(pairs) * len(kinds) + 1.4, len(kinds), 1, squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds):
        part = mean[mean["kind"] == kind]
        grid = part.pivot_table("cosine", ["a", "b"], "layer", sort=False).reindex(pairs)
        image = ax.imshow(grid.to_numpy(float), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        names = [f"{LABELS.get(a, a)} · {LABELS.get(b, b)}" for a, b in pairs]
        ax.set_yticks(np.arange(len(pairs)), names, fontsize=6)
        ax.set_xlabel("layer")
        ax.set_title(f"{kind} tasks: cosine between vectors, mean over tasks", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.025)
    return fig


def cost_bars(results: AtlasResults) -> Figure:
    """Mean over tasks: tokens through the model per test query, and extraction seconds."""
    costs = results.costs_frame()
    mean = costs.groupby("method", sort=False).mean(numeric_only=True)
    fig, axes = figure(9.0, 3.4, 1, 2, squeeze=False)
    for ax, column, label in zip(axes[0], ("tokens_per_query", "extraction_seconds"),
                                 ("tokens per test query", "extraction seconds")):  # fmt: skip
        values = mean[column].dropna()
        bars = ax.bar([LABELS.get(m, m) for m in values.index], values.to_numpy(float))
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        for tick in ax.get_xticklabels():  # each label ends under its own bar
            tick.set(ha="right", rotation_mode="anchor")
    axes[0, 1].set_title("I2CL's includes its calibration", fontsize=8)
    fig.suptitle("What each way costs (mean over tasks)")
    return fig


def calibration_curves(results: AtlasResults) -> Figure:
    """I2CL's calibration loss per epoch, one line per task."""
    frame = results.calibration_frame()
    fig, ax = figure(6.2, 3.2)
    for task, part in frame.groupby("task", sort=False):
        ax.plot(part["epoch"], part["loss"], label=task, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss on the demonstrations")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("I2CL calibration: only the coefficients learn", fontsize=9)
    return fig
