"""Isolation, drawn: which attention edges an isolation intervention cuts, layer by layer.

The edges are read from the intervention itself: each of its hook functions on
``blocks.{l}.attn.hook_attn_scores`` is applied to all-zero scores of the batch's shape, and an
edge (query i ← key j) counts as cut where the function changes the score (isolation sets it
to -inf). No forward pass runs. Padding is never drawn (the model masks it anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

from icl_mech import validate
from icl_mech.backends import hook_points
from icl_mech.errors import IclMechError
from icl_mech.hooks import Hooked, collect_specs
from icl_mech.prompt_batch import PromptBatch
from icl_mech.show.tokens import (
    ROLE_COLOURS,
    _row_tokens,
    _visible,
    check_row,
    layer_groups,
    layers_text,
    legend_html,
    token_axis,
    token_line,
    token_span,
)

SCORES = "attn.hook_attn_scores"
ISOLATED, ISOLATED_BACKGROUND = "#7b3294", "#e7d4e8"
CUT, CUT_BACKGROUND = "#e34a33", "#fcae91"


@dataclass
class CutEdges:
    """Edges (query ← key) whose attention score the intervention changes, per hooked layer;
    ``cut[i, b, q, k]`` is row b's edge q ← k at ``layers[i]`` (padding keys included)."""

    batch: PromptBatch
    item: str
    layers: list[int]
    cut: Bool[Tensor, "layer batch query key"]

    @property
    def isolated(self) -> Bool[Tensor, "batch seq"]:
        """Positions that lose at least one edge in some layer."""
        return self.cut.any(dim=3).any(dim=0)

    def to_frame(self) -> pd.DataFrame:
        """One line per cut edge: layer, row, query and key positions and tokens, and whether
        the key is padding."""
        pieces, real = self.batch.pieces, self.batch.attention_mask.bool()
        rows = []
        for i, b, q, k in torch.nonzero(self.cut).tolist():
            tokens = (pieces[b][q], pieces[b][k]) if pieces else ("", "")
            rows.append((self.layers[i], b, q, k, *tokens, not bool(real[b, k])))
        columns = ["layer", "row", "query", "key", "query_token", "key_token", "key_is_padding"]
        return pd.DataFrame(rows, columns=columns)

    def chosen(self, layers: Sequence[int] | None) -> list[int]:
        """``layers`` (default: every hooked layer), each one the intervention hooks."""
        if layers is None:
            return list(self.layers)
        chosen = list(layers)
        unknown = [x for x in chosen if not (validate.is_integer(x) and x in self.layers)]
        if unknown or not chosen:
            raise IclMechError(
                f"layers {unknown or chosen} asked, but {self.item} acts on the attention "
                f"scores of layers {self.layers} only"
            )
        return chosen

    def groups(self, row: int, layers: Sequence[int] | None = None):
        """``(isolated positions, [(layers, cut[query, key] over the real tokens)])`` of one row,
        layers with the same cut edges grouped."""
        row = check_row(row, len(self.batch))
        chosen = self.chosen(layers)
        real = torch.nonzero(self.batch.attention_mask[row]).flatten()
        cut = {layer: self.cut[self.layers.index(layer), row][real][:, real] for layer in chosen}
        queries = real[torch.stack(list(cut.values())).any(dim=(0, 2))].tolist()
        if not queries:
            return [], []
        keep = [real.tolist().index(q) for q in queries]
        return queries, layer_groups({layer: m[keep] for layer, m in cut.items()})

    def figure(self, row: int = 0, layers: Sequence[int] | None = None) -> Figure:
        """Per group of layers, a grid: one line per isolated position, one column per real
        token, filled where the edge (line ← column) is cut."""
        queries, groups = self.groups(row, layers)
        tokens = _row_tokens(self.batch, row)
        heights = [max(len(queries), 1) * 0.22 + 0.5 for _ in groups] or [0.6]
        figure = Figure(
            figsize=(max(6.0, 0.14 * len(tokens) + 1.5), sum(heights) + 1.4), layout="constrained"
        )
        axes = figure.subplots(len(heights), 1, squeeze=False, sharex=True,
                               height_ratios=heights)[:, 0]  # fmt: skip
        pieces = {position: text for position, text, _ in tokens}
        for ax, (group, cut) in zip(axes, groups):
            ax.imshow(cut.float().numpy(), cmap=ListedColormap(["white", CUT]), vmin=0, vmax=1,
                      aspect="auto", interpolation="nearest")  # fmt: skip
            ax.set_yticks(range(len(queries)), [f"{q} {_visible(pieces[q])}" for q in queries],
                          fontsize=6, family="monospace")  # fmt: skip
            ax.set_title(
                f"layer{'s' * (len(group) > 1)} {layers_text(group)}: {int(cut.sum())} edges "
                "cut (line ← column)",
                fontsize=8,
            )
        if not queries:
            axes[0].text(0.5, 0.5, f"no edge cut in row {row}", ha="center", va="center",
                         transform=axes[0].transAxes)  # fmt: skip
            axes[0].set_xlim(-0.5, len(tokens) - 0.5)
            axes[0].set_yticks([])
        token_axis(axes[-1], tokens, {q: ISOLATED for q in queries})
        figure.suptitle(f"{self.item}: isolated positions and their cut edges, row {row}",
                        fontsize=9)  # fmt: skip
        return figure

    def html(self, row: int = 0, layers: Sequence[int] | None = None) -> str:
        """The row's tokens with the isolated positions highlighted, then per group of layers
        one line per isolated position, its cut keys shaded (self-contained HTML)."""
        queries, groups = self.groups(row, layers)
        tokens = _row_tokens(self.batch, row)

        def style(role: str, background: str = "transparent") -> str:
            underline = f";border-bottom:3px solid {ROLE_COLOURS['label']}" * (role == "label")
            return f"background:{background};white-space:pre{underline}"

        head = [
            token_span(text, style(role, ISOLATED_BACKGROUND if p in queries else "transparent"),
                       f"position {p}: {role}{', isolated' * (p in queries)}")
            for p, text, role in tokens
        ]  # fmt: skip
        lines = [token_line(f"row {row}", head)]
        real = [p for p, _, _ in tokens]
        for group, cut in groups:
            for line, q in enumerate(queries):
                spans = []
                for column, (p, text, role) in enumerate(tokens):
                    shown = style(role, CUT_BACKGROUND if cut[line, column] else "transparent")
                    shown += f";outline:2px solid {ISOLATED}" * (p == q)
                    tip = (
                        f"position {p}: {role}, {q} ← {p} {'cut' if cut[line, column] else 'kept'}"
                    )
                    spans.append(token_span(text, shown, tip))
                which = f"layer{'s' * (len(group) > 1)} {layers_text(group)}"
                lines.append(token_line(f"{which}: {q} ←", spans))
        if not queries:
            lines.append(token_line(f"no edge cut among positions {real[0]}..{real[-1]}", []))
        legend = legend_html(
            {
                "isolated": f"background:{ISOLATED_BACKGROUND}",
                "cut edge": f"background:{CUT_BACKGROUND}",
            },
            roles=False,
        )
        return f"<div>{legend}{''.join(lines)}</div>"


def cut_edges(model, batch: PromptBatch, intervention: Hooked) -> CutEdges:
    """The attention edges ``intervention`` (e.g. ``IsolateLabelWords``) cuts in the batch."""
    validate.batch(model, batch)
    shape = (len(batch), model.cfg.n_heads, batch.seq_len, batch.seq_len)
    by_layer: dict[int, Tensor] = {}
    for spec in collect_specs(model, [intervention], batch):
        names = (
            [spec.point]
            if isinstance(spec.point, str)
            else list(filter(spec.point, hook_points(model)))
        )
        for name in names:
            if spec.direction != "fwd" or not name.endswith(SCORES):
                continue
            scores = torch.zeros(shape, dtype=model.cfg.dtype, device=model.cfg.device)
            out = spec.fn(scores, hook_points(model)[name])
            changed = ((scores if out is None else out) != 0).any(dim=1).cpu()
            layer = int(name.split(".")[1])
            by_layer[layer] = by_layer.get(layer, torch.zeros_like(changed)) | changed
    if not by_layer:
        raise IclMechError(
            f"{intervention!r} has no hook on blocks.{{l}}.{SCORES}: it cuts no attention edge"
        )
    layers = sorted(by_layer)
    cut = torch.stack([by_layer[layer] for layer in layers])
    if not bool(cut.any()):
        raise IclMechError(f"{intervention!r} cuts no attention edge in this batch")
    return CutEdges(batch, repr(intervention), layers, cut)


def isolation_figure(
    model,
    batch: PromptBatch,
    intervention: Hooked,
    row: int = 0,
    layers: Sequence[int] | None = None,
) -> Figure:
    """The isolated positions of one row and the edges cut in ``layers`` (default: all)."""
    check_row(row, len(batch))
    return cut_edges(model, batch, intervention).figure(row, layers)


def isolation_html(
    model,
    batch: PromptBatch,
    intervention: Hooked,
    row: int = 0,
    layers: Sequence[int] | None = None,
) -> str:
    """Self-contained HTML of :func:`isolation_figure`."""
    check_row(row, len(batch))
    return cut_edges(model, batch, intervention).html(row, layers)


__all__ = ["CutEdges", "cut_edges", "isolation_figure", "isolation_html"]
