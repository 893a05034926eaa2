"""Figures of the induction scores: the layer x head maps of both scores, and every head's
induction score against its function-vector indirect effect."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icl_mech.errors import IclMechError
from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.head_roles.induction import HeadScores
from icl_mech.plotting import figure

TITLES = {"induction": "induction", "prefix_matching": "prefix matching"}
N_LABELLED = 5  # induction_vs_effect labels the top heads of each kind


def induction_map(scores: HeadScores, k: int = 10) -> Figure:
    """Both scores of every head (rows: layers, columns: heads) on one colour scale, 0 to 1
    (a score is a share of the attention); circles mark each panel's top ``k`` heads."""
    n_layers, n_heads = scores.n_layers, scores.n_heads
    width = min(3.2, 0.6 + 0.25 * n_heads)
    fig, axes = figure(2 * width + 1.0, 1.0 + 0.14 * n_layers, 1, 2, sharey=True)
    image = None
    for ax, score in zip(axes, TITLES):
        values = scores.values(score).mean(0).numpy()
        image = ax.pcolormesh(np.arange(n_heads + 1) - 0.5, np.arange(n_layers + 1) - 0.5,
                              values, cmap="viridis", vmin=0.0, vmax=1.0)  # fmt: skip
        top = scores.top(k, score)
        ax.scatter([h for _, h in top], [layer for layer, _ in top], s=26, facecolors="none",
                   edgecolors="white", linewidths=1.0)  # fmt: skip
        ax.set_title(TITLES[score], fontsize=9)
        ax.set_xlabel("head")
        ax.set_xticks(range(n_heads))
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=list(axes), label="mean attention", shrink=0.7)
    fig.suptitle(
        f"Induction and prefix-matching scores\ncircles: top {k}; {scores.n_sequences} "
        f"sequences of 2 x {scores.n_tokens} random tokens",
        fontsize=10,
    )
    return fig


def induction_vs_effect(
    scores: HeadScores, effect: IndirectEffect | Sequence[IndirectEffect]
) -> Figure:
    """One point per head of ``effect.layers``: its induction score against its indirect effect
    (averaged over the tasks when several are given); colour: layer. The top heads of each
    (``N_LABELLED``) are labelled ``L{l}H{h}``; the title gives Spearman's rank correlation."""
    effects, layers = _effects(scores, effect)
    n_heads = scores.n_heads
    mean_effect = np.mean([e.mean.numpy() for e in effects], axis=0)  # [layer of effect, head]
    induction = scores.mean_induction.numpy()[list(layers)]
    heads = [(layer, h) for layer in layers for h in range(n_heads)]
    x, y = induction.reshape(-1), mean_effect.reshape(-1)
    colours = np.repeat(np.asarray(layers, dtype=float), n_heads)
    fig, ax = figure(6.0, 4.6)
    points = ax.scatter(x, y, c=colours, cmap="viridis", s=18, alpha=0.85,
                        vmin=0, vmax=max(scores.n_layers - 1, 1))  # fmt: skip
    labelled = set(_largest(x, N_LABELLED)) | set(_largest(y, N_LABELLED))
    for i in sorted(labelled):
        layer, h = heads[i]
        ax.annotate(f"L{layer}H{h}", (x[i], y[i]), xytext=(3, 3), textcoords="offset points",
                    fontsize=7)  # fmt: skip
    ax.axhline(0.0, color="tab:gray", lw=0.6, ls=":")
    ax.set_xlabel("induction score (mean attention to the token after the first occurrence)")
    ax.set_ylabel("indirect effect (Δ P(answer))")
    fig.colorbar(points, ax=ax, label="layer")
    rho = spearman(x, y)
    shown = "undefined (a constant axis)" if math.isnan(rho) else f"{rho:.2f}"
    tasks = effects[0].task if len(effects) == 1 else f"mean over {len(effects)} tasks"
    ax.set_title(
        f"Induction score vs function-vector indirect effect ({tasks})\n"
        f"{len(heads)} heads, Spearman ρ = {shown}",
        fontsize=9,
    )
    return fig


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN for a constant input."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(pd.Series(x).rank().corr(pd.Series(y).rank()))


def _largest(values: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest values (ties: the earlier index, i.e. lower layer, head)."""
    return [int(i) for i in np.argsort(-values, kind="stable")[:k]]


def _effects(scores: HeadScores, effect) -> tuple[list[IndirectEffect], tuple[int, ...]]:
    """The indirect effects as a list, checked against each other and the scores' model."""
    effects = [effect] if isinstance(effect, IndirectEffect) else list(effect)
    if not effects or not all(isinstance(e, IndirectEffect) for e in effects):
        raise IclMechError(
            f"induction_vs_effect: effect={effect!r} must be an IndirectEffect or a non-empty "
            "sequence of them (from icl_mech.function_vectors.indirect_effects)"
        )
    layers = effects[0].layers
    if any(e.layers != layers for e in effects):
        found = sorted({e.layers for e in effects})
        raise IclMechError(
            f"induction_vs_effect: the indirect effects cover different layers {found}; give "
            "effects computed over the same layers"
        )
    if effects[0].n_heads != scores.n_heads or max(layers) >= scores.n_layers:
        raise IclMechError(
            f"induction_vs_effect: the indirect effects have {effects[0].n_heads} heads on "
            f"layers {list(layers)}, the scores {scores.n_heads} heads on {scores.n_layers} "
            "layers; give both of the same model"
        )
    return effects, layers
