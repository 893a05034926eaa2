"""Where interventions act, read from the registry: every hook function of the items is wrapped
so that it records which (row, position) entries it changed, comparing its output with its
input, and the items run through ``attach`` as usual.

- ``record_sites(model, batch, *items)``: one forward of a ``PromptBatch``;
- ``record_generation_sites(model, prompts, *items)``: ``icl_mech.icv.generate`` (key/value
  cache on), positions of the prompt and of the generated tokens.

A site is (item, hook point, row, position); the position is the query position at attention
scores and patterns, the token position elsewhere. Under the cache each step sees one token: a
one-token forward after earlier ones continues the positions the hook point has seen, any other
forward starts at 0 (the rule ``ICVSteering`` counts by). Padding, and generated tokens after a
stop, are recorded but never drawn. No gradients are computed (backward hooks never run).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from textwrap import shorten

import pandas as pd
import torch
from jaxtyping import Bool
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch as LegendPatch
from torch import Tensor

from icl_mech import validate
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.hooks import Hooked, HookSpec, run
from icl_mech.icl_prompt import ROLES
from icl_mech.icv.generation import generate
from icl_mech.prompt_batch import PromptBatch
from icl_mech.show.recorder import Recorder
from icl_mech.show.tokens import (
    ROLE_COLOURS,
    TARGET_EDGE,
    check_row,
    layer_groups,
    layers_text,
    legend_html,
    token_axis,
    token_line,
    token_span,
)

ITEM_COLOURS = ("#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363")
CHANGED_BACKGROUND, NEW = "#9ecae1", "#31a354"
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def layer_of(point: str) -> int | None:
    found = _LAYER.match(point)
    return int(found.group(1)) if found else None


@dataclass
class Sites:
    """Which entries each (item, hook point) changed: ``changed[(i, point)][b, t]`` for item
    ``items[i]``, row b and position t; every point that ran is a key, changed or not."""

    changed: dict[tuple[int, str], Bool[Tensor, "batch seq"]]
    items: list[str]
    pieces: list[list[str]]  # per row and position: the token's text
    roles: list[list[str]]  # per row and position; "prompt" / "new" under generation
    drawn: Bool[Tensor, "batch seq"]  # no padding, no generated token after a stop
    n_layers: int
    prompt_length: int | None = None  # under generation: the first generated position
    completions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        """The number of (item, point, row, position) sites."""
        return sum(int(mask.sum()) for mask in self.changed.values())

    def to_frame(self) -> pd.DataFrame:
        """One line per site: item, hook point, layer (<NA> outside the blocks), row, position,
        token, role and whether the picture draws it."""
        rows = []
        for (index, point), mask in self.changed.items():
            for b, t in torch.nonzero(mask).tolist():
                token = (self.pieces[b][t], self.roles[b][t], bool(self.drawn[b, t]))
                rows.append((self.items[index], index, point, layer_of(point), b, t, *token))
        columns = "item item_index point layer row position token role drawn".split()
        frame = pd.DataFrame(rows, columns=columns)
        frame["layer"] = frame["layer"].astype("Int64")
        return frame

    def layers(self, layers: Sequence[int] | None = None) -> list[int]:
        """``layers`` checked against the model's (default: every layer)."""
        chosen = list(range(self.n_layers)) if layers is None else list(layers)
        bad = [x for x in chosen if not (validate.is_integer(x) and 0 <= x < self.n_layers)]
        if bad or not chosen:
            last = self.n_layers - 1
            raise IclMechError(f"layers {bad or chosen} asked; the model has layers 0..{last}")
        return [int(x) for x in chosen]

    def positions(self, row: int, layer: int) -> list[int]:
        """Positions of the row changed at any hook point of the layer (padding included)."""
        row = check_row(row, len(self.drawn))
        (layer,) = self.layers([layer])
        masks = [m[row] for (_, p), m in self.changed.items() if layer_of(p) == layer]
        return torch.stack(masks).any(0).nonzero().flatten().tolist() if masks else []

    def tokens(self, row: int) -> list[tuple[int, str, str]]:
        """(position, text, role) of the row's drawn tokens."""
        row = check_row(row, len(self.drawn))
        drawn = torch.nonzero(self.drawn[row]).flatten().tolist()
        return [(t, self.pieces[row][t], self.roles[row][t]) for t in drawn]

    def grid(self, row: int, layers: Sequence[int] | None = None):
        """``(line labels, tokens, values[line, column])``: lines are the layers (default: all)
        and any point outside the blocks that ran, columns the drawn tokens; a value is
        1 + the index of the last item that changed the entry, 0 where none did."""
        tokens = self.tokens(row)
        chosen = self.layers(layers)
        columns = [t for t, _, _ in tokens]
        outside = sorted({p for _, p in self.changed if layer_of(p) is None})
        embed = [p for p in outside if "embed" in p]  # before the blocks, the rest after
        labels = [*embed, *chosen, *[p for p in outside if p not in embed]]
        values = torch.zeros(len(labels), len(columns), dtype=torch.long)
        for (index, point), mask in self.changed.items():
            label = layer_of(point) if layer_of(point) is not None else point
            if label in labels:
                line = values[labels.index(label)]
                line[mask[row, columns]] = index + 1
        return labels, tokens, values

    def figure(self, row: int = 0, layers: Sequence[int] | None = None) -> Figure:
        """The layer x position grid of one row, filled where an item changed the entry."""
        labels, tokens, values = self.grid(row, layers)
        figure = Figure(
            figsize=(max(6.0, 0.14 * len(tokens) + 2), 0.16 * len(labels) + 1.8),
            layout="constrained",
        )
        ax = figure.subplots()
        colours = ["white", *(ITEM_COLOURS[i % len(ITEM_COLOURS)] for i in range(len(self.items)))]
        ax.imshow(values.numpy(), cmap=ListedColormap(colours), vmin=0, vmax=len(self.items),
                  aspect="auto", interpolation="nearest")  # fmt: skip
        ax.set_yticks(range(len(labels)), [str(label) for label in labels], fontsize=6)
        ax.set_ylabel("layer")
        new = [t for t, _, role in tokens if role == "new"]
        token_axis(ax, tokens, {t: NEW for t in new})
        if new:
            ax.axvline(len(tokens) - len(new) - 0.5, color=NEW, ls="--", lw=1)
        handles = [
            LegendPatch(color=c, label=shorten(item, 90, placeholder=" …"))
            for c, item in zip(colours[1:], self.items)
        ]
        figure.legend(handles=handles, loc="outside upper center", fontsize=7, frameon=False)
        drawn = sum(int(m[row][self.drawn[row]].sum()) for m in self.changed.values())
        where = "prompt | generated (green)" if new else "tokens (padding not drawn)"
        ax.set_title(f"row {row}: {drawn} sites changed; layer x {where}", fontsize=8)
        return figure

    def html(self, row: int = 0) -> str:
        """The row's tokens, then one line per group of layers that changed the same tokens,
        those shaded (self-contained HTML)."""
        labels, tokens, values = self.grid(row)
        by_line = {i: values[i] > 0 for i in range(len(labels)) if bool((values[i] > 0).any())}
        generated, last = self.prompt_length, len(self.roles[row]) - 1

        def spans(touched: Tensor | None = None) -> list[str]:
            """Role colours (``touched=None``), else changed tokens shaded."""
            out = []
            for column, (t, text, role) in enumerate(tokens):
                if touched is None:
                    background, tip = ROLE_COLOURS.get(role, "transparent"), ""
                    if generated is None and t == last:  # left padding: q is the last position
                        background += f";outline:2px solid {TARGET_EDGE}"
                else:
                    changed = bool(touched[column])
                    background = CHANGED_BACKGROUND if changed else "transparent"
                    tip = ", changed" if changed else ", unchanged"
                style = f"background:{background};white-space:pre"
                style += f";border-bottom:2px dashed {NEW}" * (role == "new")
                out.append(token_span(text, style, f"position {t}: {role}{tip}"))
            return out

        lines = [token_line(f"row {row}", spans())]
        for group, touched in layer_groups(by_line):
            names = [labels[i] for i in group]
            numeric = [n for n in names if isinstance(n, int)]
            title = ", ".join(map(str, names))
            if len(numeric) == len(names):
                title = f"layer{'s' * (len(names) > 1)} {layers_text(numeric)}"
            lines.append(token_line(title, spans(touched)))
        if not by_line:
            lines.append(token_line("no site changed", []))
        extra = {"changed": f"background:{CHANGED_BACKGROUND}"}
        if generated is not None:
            extra["generated"] = f"border-bottom:2px dashed {NEW}"
        legend = legend_html(extra, roles=generated is None)
        return f"<div>{legend}{''.join(lines)}</div>"

    def _repr_html_(self) -> str:
        return self.html(0)


def record_sites(model, batch: PromptBatch, *items: Hooked | HookSpec, **forward_kwargs) -> Sites:
    """Run the batch once with the items attached (no gradients); where did they act?"""
    validate.batch(model, batch)
    recorder = Recorder()
    specs = recorder.wrap_items(model, items, batch)
    with torch.no_grad():
        run(model, batch, *specs, **forward_kwargs)
    pieces = batch.pieces or [_decode(model, row) for row in batch.tokens.tolist()]
    roles = [[ROLES[int(r)] for r in row] for row in batch.roles]
    return Sites(recorder.changed(len(batch), batch.seq_len), [repr(i) for i in items], pieces,
                 roles, batch.attention_mask.bool(), model.cfg.n_layers)  # fmt: skip


def record_generation_sites(
    model, prompts: str | Sequence[str], *items: Hooked | HookSpec, max_new_tokens: int = 8,
    **generate_kwargs,
) -> Sites:  # fmt: skip
    """Generate from the prompts (one batch, key/value cache on unless ``use_cache=False``)
    with the items attached; which prompt and generated positions did they change?"""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if "batch_size" in generate_kwargs:
        raise IclMechError("record_generation_sites runs the prompts as one batch: no batch_size")
    if not prompts:
        raise IclMechError("record_generation_sites: no prompts given")
    ((_, batch),) = batched(model, prompts, len(prompts))  # the batch generate makes
    recorder = Recorder()
    specs = recorder.wrap_items(model, items, None)
    out = generate(model, prompts, *specs, max_new_tokens=max_new_tokens,
                   batch_size=len(prompts), **generate_kwargs)  # fmt: skip
    length = batch.tokens.shape[1]
    kept = torch.tensor([[k < len(new) for k in range(max_new_tokens)] for new in out.new_tokens])
    pieces = [
        _decode(model, row) + _decode(model, new) + [""] * (max_new_tokens - len(new))
        for row, new in zip(batch.tokens.tolist(), out.new_tokens)
    ]
    real = batch.attention_mask.bool()
    roles = [
        ["prompt" if r else "pad" for r in row] + ["new"] * max_new_tokens for row in real.tolist()
    ]
    return Sites(recorder.changed(len(batch), length + max_new_tokens), [repr(i) for i in items],
                 pieces, roles, torch.cat([real, kept], dim=1), model.cfg.n_layers, length,
                 out.completions)  # fmt: skip


def _decode(model, ids: list[int]) -> list[str]:
    return [model.tokenizer.decode([i]) for i in ids]


__all__ = ["Sites", "layer_of", "record_generation_sites", "record_sites"]
