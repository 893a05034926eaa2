"""Figures: accuracy per layer (per task and mean, and per task as a heatmap), the
baseline/ICL/TV bars, conflicts, the logit lens of θ."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from icl_mech import display
from icl_mech.plotting import condition_bars, figure, interval_note, show_zero_bars
from icl_mech.show import cards
from icl_mech.show.logit_lens import LogitLens, logit_lens_figure
from icl_mech.show.task_vectors import accuracy_heatmap
from icl_mech.task_vectors.conflict import ConflictResult
from icl_mech.task_vectors.lens import shown
from icl_mech.task_vectors.results import TaskVectorResults
from icl_mech.task_vectors.vector import TaskVector

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
    return condition_bars(results.estimates_frame(), LABELS, "Baseline vs ICL vs task vector")


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
            bars = ax.bar(x + shift, frame[column], 0.4, yerr=errors, capsize=2, label=label)
            show_zero_bars(ax, bars)
        ax.set_xticks(x, frame["condition"], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"demos of A, vector of B (n={result.n_queries})", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("share of first tokens")
    if any(r.hits_a for r in conflicts):  # the whiskers' note
        counts = [r.n_queries for r in conflicts]
        fig.suptitle(interval_note("queries", counts, per="task pair"), fontsize=9)
    return fig


# --- notebook cards ---------------------------------------------------------------------


@display.renders(TaskVectorResults)
def results_card(results: TaskVectorResults) -> str:
    """First-token accuracy per task and condition, and the mean over tasks, with 95%
    intervals over test queries; the bars of ``accuracy_bars``."""
    summary = results.summary()
    ratios = {f"{c} / icl": summary[f"{c}_over_icl"] for c in ("tv_replace", "tv_add")}
    return cards.card(
        "Task vectors: first-token accuracy on test [95% interval over queries]",
        cards.table(results.accuracy_frame(), max_rows=None),
        cards.figure(accuracy_bars(results), "baseline, ICL and task-vector accuracy per task"),
        items={"tasks": len(results.tasks), "n_test per task": results.settings.n_test} | ratios,
    )


@display.renders(TaskVector)
def vector_card(vector: TaskVector) -> str:
    """Per layer the mean norm of θ over demonstration sets and, with several sets, their
    mean pairwise cosine (how much the sets agree), as a table and a figure."""
    values = vector.values.detach().float().cpu()
    frame = pd.DataFrame({"layer": vector.layers, "mean norm": values.norm(dim=-1).mean(0).numpy()})
    if len(vector) > 1:
        units = torch.nn.functional.normalize(values, dim=-1)
        cosines = torch.einsum("sld,tld->lst", units, units)
        frame["cosine between sets"] = (
            cosines[:, ~torch.eye(len(vector), dtype=bool)].mean(-1).numpy()
        )
    picture = cards.layer_figure(frame, [[c] for c in frame.columns[1:]], repr(vector))
    items = {
        "sets": len(vector),
        "layers": cards.layer_span(vector.layers),
        "d_model": vector.d_model,
    }
    return cards.card(
        f"TaskVector ({vector.kind}) of {vector.provenance.get('task', '?')}",
        cards.table(frame),
        cards.figure(picture, "task vector norm and agreement between sets per layer"),
        items=items | {k: v for k, v in vector.provenance.items() if k in ("model", "seed")},
    )
