"""The paper's figures: flows per layer (Fig. 3), loyalty under isolation (Fig. 4), AUC-ROC_l
and R_l (Fig. 5). Each function takes results and returns a matplotlib Figure; the results'
notebook cards (:mod:`icl_mech.display`) are registered here."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from icl_mech import display, stats
from icl_mech.errors import IclMechError
from icl_mech.plotting import interval_note, show_zero_bars
from icl_mech.show import cards

from .aucroc import AnchorAuc
from .flows import FLOWS, Flows
from .loyalty import CONDITIONS, Loyalty

FLOW_LABELS = {
    "S_wp": "$S_{wp}$ (text → label)",
    "S_pq": "$S_{pq}$ (label → q)",
    "S_ww": "$S_{ww}$",
}


def _panels(n: int, width: float = 4.0, height: float = 3.0):
    if n == 0:
        raise IclMechError("a figure needs at least one result")
    columns = min(n, 2)
    rows = math.ceil(n / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).flatten())
    for ax in axes[n:]:
        ax.set_visible(False)
    return figure, axes


def flows_figure(results: Sequence[Flows], normalised: bool = True) -> Figure:
    """Fig. 3: S_wp, S_pq, S_ww per layer, one panel per task; band = 95% bootstrap interval
    of the mean over queries."""
    figure, axes = _panels(len(results))
    counts = []
    for ax, result in zip(axes, results):
        mean, low, high, n = result.intervals(normalised)
        counts.append(n)
        for i, name in enumerate(FLOWS):
            ax.plot(result.layers, mean[:, i], label=FLOW_LABELS[name], color=f"C{i}")
            ax.fill_between(
                result.layers, low[:, i], high[:, i], color=f"C{i}", alpha=0.2, linewidth=0
            )
        ax.set_title(f"{result.task} (n={len(result.values)}, {n} queries)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_ylabel("share of saliency" if normalised else "mean saliency")
    axes[0].legend(fontsize="small")
    title = "Information flow per layer" + (" (renormalised)" if normalised else "")
    figure.suptitle(f"{title}\n{interval_note('queries', counts, per='task', mark='bands')}")
    return figure


def loyalty_figure(results: Sequence[Loyalty]) -> Figure:
    """Fig. 4: label and word loyalty, label words vs random words, first vs last k layers.
    Whiskers: 95% bootstrap intervals over queries (a query seen under several seeds is one
    unit); "mean": the mean over tasks, queries resampled within each task (stratified)."""
    if not results:
        raise IclMechError("loyalty_figure needs at least one result")
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    names = [r.task for r in results] + ["mean"]
    width = 0.8 / len(CONDITIONS)
    counts = {}
    for ax, metric in zip(axes, ("label", "word")):
        for c, (depth, words) in enumerate(CONDITIONS):
            estimates, values, strata = [], [], []
            for t, result in enumerate(results):
                estimates.append(result.estimate(depth, words, metric))
                column = getattr(result, metric)[:, result.conditions.index((depth, words))]
                values += column.tolist()
                strata += [t] * len(column)
            estimates.append(stats.stratified(values, strata))
            counts.update({name: e.n for name, e in zip(names, estimates)})
            means = np.array([e.value for e in estimates])
            errors = np.array([[e.value - e.low, e.high - e.value] for e in estimates]).T
            x = np.arange(len(names)) + (c - (len(CONDITIONS) - 1) / 2) * width
            hatch = None if words == "label" else "//"
            color = "C0" if depth == "shallow" else "C3"
            label = f"{words} words, {depth} (k={results[0].k})"
            bars = ax.bar(x, means, width, yerr=errors, capsize=2, color=color, hatch=hatch,
                          label=label)  # fmt: skip
            show_zero_bars(ax, bars)
        ax.set_xticks(np.arange(len(names)), names, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric} loyalty")
    axes[0].set_ylabel("loyalty to the unmodified run")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="small")
    note = interval_note("queries", [counts[r.task] for r in results], per="task")
    note += f" ({counts['mean']} in the mean, resampled within tasks)"
    figure.suptitle(f"Isolating label words vs random words in shallow or deep layers\n{note}")
    return figure


def auc_figure(results: Sequence[AnchorAuc]) -> Figure:
    """Fig. 5: AUC-ROC_l of A_l(q, p_i) for the model's prediction (left axis; band: 95%
    bootstrap interval over queries), R_l (right)."""
    figure, axes = _panels(len(results))
    counts = []
    for ax, result in zip(axes, results):
        ax.plot(result.layers, result.auc().numpy(), color="C0", marker=".", label="AUC-ROC$_l$")
        intervals = result.intervals()
        counts += [e.n for e in intervals]
        low, high = [e.low for e in intervals], [e.high for e in intervals]
        ax.fill_between(result.layers, low, high, color="C0", alpha=0.2, linewidth=0)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_ylabel("AUC-ROC$_l$", color="C0")
        twin = ax.twinx()
        twin.plot(result.layers, result.ratio().numpy(), color="C1", label="$R_l$")
        twin.set_ylabel("$R_l$", color="C1")
        if result.ratio().isnan().all():
            twin.set_yticks([])
            twin.text(0.5, 0.9, "R undefined: Σ(AUC − 0.5) ≤ 0", transform=ax.transAxes,
                      ha="center", fontsize="small", color="C1")  # fmt: skip
        ax.set_title(f"{result.task} (n={len(result.predicted)})")
    note = interval_note("queries", counts, per="task", mark="band")
    figure.suptitle(f"Attention of q on the label words predicts the output in deep layers\n{note}")
    return figure


# --- notebook cards ---------------------------------------------------------------------


@display.renders(Flows)
def flows_card(flows: Flows) -> str:
    """Per layer the share of each flow with its 95% interval over queries, and Fig. 3."""
    summary = flows.summary()
    shares = summary.pivot(index="layer", columns="flow", values="share")[list(FLOWS)]
    items = {"task": flows.task, "examples": len(flows.values), "n (queries)": summary["n"][0]}
    return cards.card(
        "Flows: share of saliency per layer [95% interval over queries]",
        cards.table(shares.reset_index()),
        cards.figure(flows_figure([flows]), "S_wp, S_pq and S_ww per layer"),
        items=items | {"layers": cards.layer_span(flows.layers)},
    )


@display.renders(AnchorAuc)
def auc_card(auc: AnchorAuc) -> str:
    """AUC-ROC_l with its 95% interval over queries and R_l per layer, and Fig. 5."""
    frame = auc.to_frame()
    items = {"task": auc.task, "examples": len(auc.scores), "n (queries)": frame["n"][0]}
    return cards.card(
        "AnchorAuc: attention of q on the label words predicts the output "
        "(AUC-ROC_l [95% interval], R_l)",
        cards.table(frame[["layer", "auc", "auc_low", "auc_high", "R"]]),
        cards.figure(auc_figure([auc]), "AUC-ROC and R per layer"),
        items=items | {"classes": auc.scores.shape[-1], "average": auc.average},
    )


@display.renders(Loyalty)
def loyalty_card(loyalty: Loyalty) -> str:
    """Label and word loyalty per condition and the shallow − deep effects, each with its
    95% interval over queries, and Fig. 4."""
    summary = loyalty.summary().rename(columns={"label": "label loyalty", "word": "word loyalty"})
    effects = loyalty.effects().rename(columns={"effect": "shallow − deep"})
    return cards.card(
        f"Loyalty under isolation of the first or last {loyalty.k} layers [95% interval]",
        cards.table(summary[["depth", "isolated", "label loyalty", "word loyalty", "n"]]),
        cards.table(effects[["isolated", "metric", "shallow − deep", "n"]]),
        cards.figure(loyalty_figure([loyalty]), "label and word loyalty per condition"),
        items={"task": loyalty.task, "examples": len(loyalty.label), "k": loyalty.k},
    )
