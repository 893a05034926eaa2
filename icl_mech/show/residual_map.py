"""The residual attribution map over a prompt's tokens, as HTML: each token coloured by the
change in P(correct answer) that patching its stream towards the clean prompt makes at the
layer where that change is largest; the tooltip lists the layers with the largest changes
(first order, and exact where computed). The Matplotlib picture is
:func:`icl_mech.head_roles.figures.residual_map_figure`."""

from __future__ import annotations

import html

import torch

from icl_mech import display
from icl_mech.head_roles.residual_map import ResidualMap
from icl_mech.show.tokens import ROLE_COLOURS, legend_html, token_line, token_span

TOP_LAYERS = 3


def _colour(value: float, limit: float) -> str:
    """Red for a gain in P(correct), blue for a loss, white for none."""
    share = min(1.0, abs(value) / limit) if limit > 0 else 0.0
    fade = int(255 * (1 - 0.75 * share))
    return f"rgb(255,{fade},{fade})" if value >= 0 else f"rgb({fade},{fade},255)"


def _strongest(values: torch.Tensor) -> torch.Tensor:
    """Per position, the value of largest magnitude over the layers."""
    index = values.abs().argmax(0)
    return values.gather(0, index[None])[0]


def residual_map_html(result: ResidualMap) -> str:
    """One line of tokens per map (attribution; exact when computed), on one colour scale."""
    maps = [("attribution", result.attribution)]
    if result.exact is not None:
        maps.append(("exact", result.exact))
    limit = max(float(values.abs().max()) for _, values in maps) or 1.0
    lines = []
    for name, values in maps:
        strongest = _strongest(values)
        spans = []
        for position, text, role in result.tokens:
            column = values[:, position]
            order = column.abs().argsort(descending=True)[:TOP_LAYERS].tolist()
            tip = f"position {position}: {role} {text!r}; " + ", ".join(
                f"layer {result.layers[i]}: {float(column[i]):+.4f}" for i in order
            )
            style = f"background:{_colour(float(strongest[position]), limit)};white-space:pre"
            if role == "label":
                style += f";border-bottom:3px solid {ROLE_COLOURS['label']}"
            spans.append(token_span(text, style, tip))
        lines.append(token_line(name, spans))
    legend = legend_html({"raises P(correct)": "background:rgb(255,64,64)",
                          "lowers it": "background:rgb(64,64,255)",
                          "label word": f"border-bottom:3px solid {ROLE_COLOURS['label']}"},
                         roles=False)  # fmt: skip
    title = (
        f"{result.task}: patching the stream towards the clean prompt (P = "
        f"{result.probability:.2f} on the shuffled prompt; colour: the strongest layer)"
    )
    head = f'<div style="font:bold 13px sans-serif">{html.escape(title)}</div>'
    return f"<div>{head}{legend}{''.join(lines)}</div>"


display.renders(ResidualMap)(residual_map_html)
