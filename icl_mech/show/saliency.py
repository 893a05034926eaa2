"""Saliency over the tokens (the label-words paper's Figure 1, generated): for a layer range,
the strongest edges from the text into the label words and from the label words into the
target q, drawn as arcs over the token sequence; label words highlighted.

An edge (i ← j) is ``I_l(i, j)`` summed over the chosen layers: query position i reads key j.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Arc

from icl_mech.errors import IclMechError
from icl_mech.show.tokens import (
    ROLE_COLOURS,
    TARGET_EDGE,
    _row_tokens,
    _visible,
    legend_html,
    token_line,
    token_span,
)

INTO_LABELS, INTO_TARGET = "#2c7fb8", "#d95f0e"


def edges(result, batch, row: int = 0, layers: Sequence[int] | None = None, top: int = 10):
    """``(into_labels, into_target)``: lists of (query position, key position, weight), the
    ``top`` strongest of each kind, weights summed over ``layers`` (default: all of the
    result's) and scaled so the strongest edge of the row is 1."""
    chosen = list(result.layers) if layers is None else list(layers)
    missing = sorted(set(chosen) - set(result.layers))
    if missing or not chosen:
        raise IclMechError(
            f"layers {missing or chosen} are not in the saliency result (layers {result.layers})"
        )
    index = [result.layers.index(layer) for layer in chosen]
    scores = result.scores[row, index].sum(0).float()  # [query, key]
    labels = [p for tokens in batch.rows[row].labels for p in tokens]
    target = batch.rows[row].target
    real = batch.attention_mask[row].bool()
    into_labels = [
        (p, j, float(scores[p, j])) for p in labels for j in range(p) if real[j] and j not in labels
    ]
    into_target = [(target, p, float(scores[target, p])) for p in labels]
    strongest = max((w for *_, w in into_labels + into_target), default=0.0) or 1.0

    def best(found):
        found = sorted(found, key=lambda e: -e[2])[:top]
        return [(i, j, w / strongest) for i, j, w in found]

    return best(into_labels), best(into_target)


def saliency_figure(
    result, batch, row: int = 0, layers: Sequence[int] | None = None, top: int = 10
) -> Figure:
    """Tokens along the x axis (padding left out), arcs above them for the strongest edges."""
    into_labels, into_target = edges(result, batch, row, layers, top)
    tokens = _row_tokens(batch, row)
    x_of = {position: x for x, (position, _, _) in enumerate(tokens)}
    figure = Figure(figsize=(max(6.0, 0.16 * len(tokens)), 3.6), layout="constrained")
    ax = figure.subplots()
    for (i, j, weight), colour in [(e, INTO_LABELS) for e in into_labels] + [
        (e, INTO_TARGET) for e in into_target
    ]:
        left, right = sorted((x_of[i], x_of[j]))
        ax.add_patch(
            Arc(((left + right) / 2, 0), right - left, right - left, theta1=0, theta2=180,
                color=colour, linewidth=0.5 + 3 * weight, alpha=0.25 + 0.75 * weight)
        )  # fmt: skip
    for x, (position, text, role) in enumerate(tokens):
        colour = ROLE_COLOURS.get(role, "white") if role == "label" else "black"
        ax.text(x, -0.3, _visible(text), rotation=90, ha="center", va="top", fontsize=6,
                family="monospace", color="black",
                backgroundcolor=colour if role == "label" else "none")  # fmt: skip
        if position == batch.rows[row].target:
            ax.plot([x], [-0.15], marker="^", color=TARGET_EDGE)
    span = max((abs(x_of[i] - x_of[j]) for i, j, _ in into_labels + into_target), default=1)
    ax.set_xlim(-1, len(tokens))
    ax.set_ylim(-0.3 * span, span / 2 + 1)
    ax.axis("off")
    shown = list(result.layers) if layers is None else list(layers)
    ax.set_title(
        f"saliency, layers {shown[0]}-{shown[-1]}: text → label words (blue), "
        f"label words → q (orange), strongest {top} of each",
        fontsize=8,
    )
    return figure


def saliency_html(
    result, batch, row: int = 0, layers: Sequence[int] | None = None, top: int = 10
) -> str:
    """Two lines of tokens: shaded by how strongly each feeds the label words, and each label
    word by how strongly it feeds q (self-contained HTML)."""
    into_labels, into_target = edges(result, batch, row, layers, top=10**9)
    feeds = np.zeros(batch.seq_len)
    for _, j, weight in into_labels:
        feeds[j] += weight
    read = np.zeros(batch.seq_len)
    for _, p, weight in into_target:
        read[p] = weight
    lines = []
    for title, amount, colour in (
        ("text → label words", feeds, INTO_LABELS),
        ("label words → q", read, INTO_TARGET),
    ):
        scale = amount.max() or 1.0
        spans = []
        for position, text, role in _row_tokens(batch, row):
            alpha = amount[position] / scale
            rgb = tuple(int(colour[k : k + 2], 16) for k in (1, 3, 5))
            style = f"background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f});white-space:pre"
            if role == "label":
                style += f";border-bottom:3px solid {ROLE_COLOURS['label']}"
            spans.append(
                token_span(text, style, f"position {position}: {role}, {amount[position]:.3f}")
            )
        lines.append(token_line(title, spans))
    return f"<div>{legend_html()}{''.join(lines)}</div>"


def layer_range(result, part: str) -> list[int]:
    """The first (``"shallow"``) or last (``"deep"``) third of the result's layers."""
    layers = sorted(result.layers)
    third = max(1, len(layers) // 3)
    if part not in ("shallow", "deep"):
        raise IclMechError(f"part must be 'shallow' or 'deep', got {part!r}")
    return layers[:third] if part == "shallow" else layers[-third:]


__all__ = ["edges", "layer_range", "saliency_figure", "saliency_html"]
