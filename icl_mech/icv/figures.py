"""Figures of the ICV evaluation: the λ sweep against the baselines, before/after texts and
the per-layer shape of an ICV. Each function returns a matplotlib Figure."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from icl_mech import display
from icl_mech.icv.results import StyleEvaluation
from icl_mech.icv.vector import ICV
from icl_mech.plotting import interval_note
from icl_mech.show import cards

PANELS = (
    ("style", "style score (↑ target style)"),
    ("bleu_source", "BLEU vs source (content)"),
    ("perplexity", "perplexity (fluency, ↓)"),
)
BASELINES = {"none": ("no steering", "tab:gray", ":"), "icl": ("ICL prompt", "tab:orange", "--")}


def sweep_figure(evaluations: Mapping[str, StyleEvaluation]) -> Figure:
    """One row per pair set: style, content and fluency against λ; baselines as lines.
    Whiskers (ICV) and bands (baselines): 95% bootstrap intervals over the test sentences
    (style and BLEU; perplexity has none)."""
    fig = Figure(figsize=(4.2 * len(PANELS), 3.2 * len(evaluations)))
    axes = fig.subplots(len(evaluations), len(PANELS), squeeze=False)
    counts = []
    for row, (name, evaluation) in enumerate(evaluations.items()):
        summary = evaluation.to_frame()
        counts += summary["n"].dropna().tolist() if "n" in summary else []
        steered = summary[summary.condition.isin(["none", "icv"])].sort_values("strength")
        for col, (metric, label) in enumerate(PANELS):
            ax = axes[row, col]
            ax.plot(steered["strength"], steered[metric], "o-", color="tab:blue", label="ICV")
            if f"{metric}_low" in steered:
                errors = [
                    steered[metric] - steered[f"{metric}_low"],
                    steered[f"{metric}_high"] - steered[metric],
                ]
                ax.errorbar(steered["strength"], steered[metric], yerr=errors, fmt="none",
                            ecolor="tab:blue", elinewidth=0.8, capsize=2)  # fmt: skip
            for condition, (text, color, style) in BASELINES.items():
                base = summary[summary.condition == condition]
                if len(base):
                    ax.axhline(float(base[metric].iloc[0]), color=color, ls=style, label=text)
                    if f"{metric}_low" in base:
                        low, high = base[f"{metric}_low"].iloc[0], base[f"{metric}_high"].iloc[0]
                        ax.axhspan(low, high, color=color, alpha=0.12, linewidth=0)
            ax.set_xlabel("λ")
            ax.set_title(f"{name}: {label}" if col == 0 else label, fontsize=10)
            if metric == "style":
                ax.set_ylabel(evaluation.style_metric)
            if metric == "perplexity":
                ax.set_yscale("log")
        axes[row, 0].legend(fontsize=8)
    if counts:
        mark = "whiskers (ICV) and bands (baselines)"
        note = interval_note("sentences", counts, per="pair set", mark=mark)
        fig.suptitle(f"{note}; style and BLEU (perplexity has none)", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    else:
        fig.tight_layout()
    return fig


def examples_figure(tables: Mapping[str, Sequence[tuple[str, str]]], width: int = 70) -> Figure:
    """Before/after texts as a figure: ``{title: [(label, text), ...]}``."""
    lines: list[tuple[str, str]] = []
    for title, rows in tables.items():
        lines.append((title, "title"))
        for label, text in rows:
            wrapped = textwrap.wrap(text or "(empty)", width) or [""]
            lines.append((f"{label}: {wrapped[0]}", "text"))
            lines += [(" " * (len(label) + 2) + more, "text") for more in wrapped[1:]]
        lines.append(("", "text"))
    fig = Figure(figsize=(9, 0.24 * len(lines) + 0.4))
    for i, (text, kind) in enumerate(lines):
        y = 1 - (i + 0.8) / len(lines)
        weight = "bold" if kind == "title" else "normal"
        fig.text(0.02, y, text, family="monospace", fontsize=8.5, weight=weight, va="center")
    return fig


def layers_figure(icv: ICV) -> Figure:
    """Per-layer norm of the ICV and of the mean difference, and their cosine."""
    frame = icv.to_frame()
    fig = Figure(figsize=(9, 3))
    left, right = fig.subplots(1, 2)
    left.plot(frame["layer"], frame["vector_norm"], "o-", label="ICV (component + mean)")
    left.plot(frame["layer"], frame["mean_norm"], "--", label="mean difference")
    left.set_xlabel("layer")
    left.set_ylabel("norm")
    left.legend(fontsize=8)
    right.plot(frame["layer"], frame["cos_vector_mean"], "o-")
    right.set_xlabel("layer")
    right.set_ylabel("cos(ICV, mean difference)")
    fig.suptitle(f"{icv!r}", fontsize=8)
    fig.tight_layout()
    return fig


# --- notebook cards ---------------------------------------------------------------------


@display.renders(ICV)
def icv_card(icv: ICV) -> str:
    """Per layer the norms of the ICV and of the mean difference and their cosine, as a
    table and a figure."""
    items = {"model": icv.model_name, "layers": cards.layer_span(icv.layers)}
    return cards.card(
        f"ICV from {icv.n_pairs} demonstration pairs",
        cards.table(icv.to_frame()),
        cards.figure(layers_figure(icv), "ICV and mean difference per layer"),
        items=items | {"d_model": icv.d_model, "explained variance": icv.explained_variance},
    )
