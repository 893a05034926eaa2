"""Figures of the head-roles reproduction: exact against attribution per head, the ablation
curves over k, and the residual attribution map over a prompt's tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.head_roles.ablation_experiment import CONDITIONS, LABELS
from icl_mech.head_roles.comparison import agreement
from icl_mech.head_roles.residual_map import ResidualMap
from icl_mech.plotting import figure

COLOURS = {"none": "black", "induction": "tab:blue", "fv": "tab:red",
           "random_induction": "tab:cyan", "random_fv": "tab:orange"}  # fmt: skip


def exact_vs_attribution(
    pairs: Sequence[tuple[IndirectEffect, IndirectEffect]], k: int = 10
) -> Figure:
    """Per task (an (exact, attribution) pair of effects), every head's exact indirect effect
    (x) against its attribution estimate (y); the diagonal is agreement, red: the exact top
    ``k``."""
    fig, axes = figure(3.0 * len(pairs) + 0.6, 3.4, 1, len(pairs), squeeze=False)
    for ax, (exact_effect, estimate_effect) in zip(axes[0], pairs):
        exact, estimate = exact_effect.mean.numpy(), estimate_effect.mean.numpy()
        ax.scatter(exact.flatten(), estimate.flatten(), s=6, color="tab:gray", alpha=0.6)
        top = exact_effect.top(k)
        layers = exact_effect.layers
        xs = [exact[layers.index(layer), head] for layer, head in top]
        ys = [estimate[layers.index(layer), head] for layer, head in top]
        ax.scatter(xs, ys, s=14, color="tab:red", label=f"exact top {k}")
        low = min(exact.min(), estimate.min())
        high = max(exact.max(), estimate.max())
        ax.plot([low, high], [low, high], color="black", lw=0.7, ls="--")
        shown = agreement(exact_effect, estimate_effect, k)
        ax.set_title(f"{exact_effect.task}: ρ={shown['spearman']:.2f}, top-{k} shared "
                     f"{shown[f'top{k}_overlap']}", fontsize=9)  # fmt: skip
        ax.set_xlabel("exact indirect effect (Δ P)")
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("attribution estimate (Δ P)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Attribution patching against exact patching, every head")
    return fig


def ablation_curves(accuracy: pd.DataFrame, token_loss: pd.DataFrame) -> Figure:
    """Few-shot accuracy against k for each ablation (one panel per task kind) and the
    token-loss difference against k; bands: 95% intervals."""
    kinds = list(dict.fromkeys(accuracy["kind"]))
    fig, axes = figure(3.4 * (len(kinds) + 1) + 0.4, 3.6, 1, len(kinds) + 1, squeeze=False)
    panels = [(kind, accuracy[accuracy["kind"] == kind], "accuracy") for kind in kinds]
    panels.append(("token-loss difference", token_loss, "difference"))
    for ax, (title, part, value) in zip(axes[0], panels):
        for condition in CONDITIONS:
            rows = part[part["condition"] == condition].sort_values("k")
            if rows.empty:
                continue
            ax.plot(rows["k"], rows[value], marker="o", ms=3, color=COLOURS[condition],
                    label=LABELS[condition])  # fmt: skip
            ax.fill_between(rows["k"], rows[f"{value}_low"], rows[f"{value}_high"],
                            color=COLOURS[condition], alpha=0.12)  # fmt: skip
        ax.set_xscale("log")
        ks = sorted(part["k"].unique())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("k (heads ablated per set)")
        ax.set_title(title if value == "difference" else f"few-shot ICL, {title} tasks", fontsize=9)
        ax.set_ylabel("loss late − loss early (nats)" if value == "difference" else "accuracy")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("Mean ablation with exclusion: induction heads vs function-vector heads")
    return fig


def residual_map_figure(result: ResidualMap) -> Figure:
    """The attribution of every (layer, position) over the prompt's tokens; with the exact map,
    the two side by side on one colour scale."""
    maps = [("attribution (first order)", result.attribution.numpy())]
    if result.exact is not None:
        maps.append(("exact activation patching", result.exact.numpy()))
    limit = max(float(np.abs(values).max()) for _, values in maps) or 1.0
    n_positions = len(result.tokens)
    fig, axes = figure(0.16 * n_positions + 2.0, (1.2 + 0.13 * len(result.layers)) * len(maps),
                       len(maps), 1, squeeze=False, sharex=True)  # fmt: skip
    image = None
    for ax, (title, values) in zip(axes[:, 0], maps):
        image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                          interpolation="nearest")  # fmt: skip
        ax.set_yticks(range(len(result.layers))[::2], [str(layer) for layer in result.layers][::2],
                      fontsize=6)  # fmt: skip
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
    labels = [text.replace("\n", "⏎") or "∅" for _, text, _ in result.tokens]
    last = axes[-1, 0]
    last.set_xticks(range(n_positions), labels, rotation=90, fontsize=6, family="monospace")
    for tick, (_, _, role) in zip(last.get_xticklabels(), result.tokens):
        if role == "label":
            tick.set_backgroundcolor("#ffcf70")
    fig.colorbar(image, ax=list(axes[:, 0]), label="Δ P(correct answer)", shrink=0.7)
    fig.suptitle(f"{result.task}: patching the stream towards the clean prompt "
                 f"(P = {result.probability:.2f} shuffled)", fontsize=10)  # fmt: skip
    return fig
