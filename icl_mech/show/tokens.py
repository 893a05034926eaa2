"""The picture of a ``PromptBatch``: each row's tokens where they sit, coloured by role
(demonstration input, template, label word, separator, query), the target q outlined.
Padding is not drawn; a token's tooltip (HTML) gives its position and role."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping

import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from torch import Tensor

from icl_mech import display, validate
from icl_mech.errors import IclMechError
from icl_mech.icl_prompt import ROLES
from icl_mech.prompt_batch import PromptBatch

ROLE_COLOURS = {
    "bos": "#d9d9d9",
    "input": "#dbe9f6",
    "template": "#eeeeee",
    "label": "#ffcf70",
    "separator": "#f7f7f7",
    "query": "#cdebd3",
}
TARGET_EDGE = "#c0392b"
_CHARS_PER_LINE = 96


def _visible(text: str) -> str:
    text = text.replace("\n", "⏎").replace("\t", "⇥")
    return "".join(c if c.isprintable() else "\ufffd" for c in text) or "∅"


def _row_tokens(batch, row: int) -> list[tuple[int, str, str]]:
    """(position, text, role) of the row's real tokens, padding left out."""
    check_row(row, len(batch))
    pieces = batch.pieces[row] if batch.pieces else [f"[{int(t)}]" for t in batch.tokens[row]]
    out = []
    for position in range(batch.seq_len):
        if int(batch.attention_mask[row, position]) == 0:
            continue
        out.append((position, pieces[position], ROLES[int(batch.roles[row, position])]))
    return out


def check_row(row, n_rows: int) -> int:
    """A row index of a batch of ``n_rows``, or an error naming the valid ones."""
    if not validate.is_integer(row) or not 0 <= int(row) < n_rows:
        raise IclMechError(f"row {row!r} asked, the batch has rows 0..{n_rows - 1}")
    return int(row)


def token_span(text: str, style: str, tip: str) -> str:
    """One token as an HTML span with an inline style and a tooltip."""
    shown = html.escape(_visible(text))
    return f'<span title="{html.escape(tip, quote=True)}" style="{style}">{shown}</span>'


def token_line(title: str, spans: list[str]) -> str:
    """A titled line of token spans."""
    return (
        '<div style="font:13px monospace;line-height:1.9;margin:6px 0">'
        f'<b style="font-family:sans-serif">{html.escape(title)}</b> ' + "".join(spans) + "</div>"
    )


def legend_html(extra: Mapping[str, str] | None = None, roles: bool = True) -> str:
    """The role colours and the target's outline (``roles``), then ``extra``: name -> the
    inline style of its sample."""
    shown = {role: f"background:{colour}" for role, colour in ROLE_COLOURS.items()} if roles else {}
    if roles:
        shown["target q"] = f"outline:2px solid {TARGET_EDGE}"
    shown |= dict(extra or {})
    items = [
        f'<span style="{style};padding:0 4px;margin-right:6px">{html.escape(name)}</span>'
        for name, style in shown.items()
    ]
    return '<div style="font:12px sans-serif;margin:4px 0">' + "".join(items) + "</div>"


def token_axis(
    ax, tokens: list[tuple[int, str, str]], marks: Mapping[int, str] | None = None
) -> None:
    """Tokens ``(position, text, role)`` as the x tick labels of ``ax``, one column each in the
    given order; label words on their role colour, ``marks``: position -> text colour."""
    marks = marks or {}
    ax.set_xticks(range(len(tokens)), [_visible(text) for _, text, _ in tokens], rotation=90,
                  fontsize=6, family="monospace")  # fmt: skip
    for tick, (position, _, role) in zip(ax.get_xticklabels(), tokens):
        if role == "label":
            tick.set_backgroundcolor(ROLE_COLOURS["label"])
        if position in marks:
            tick.set_color(marks[position])
            tick.set_fontweight("bold")


def layers_text(layers: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` as ``"0-2, 5"``."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def layer_groups(by_layer: Mapping[int, Tensor]) -> list[tuple[list[int], Tensor]]:
    """Layers whose tensors are equal, grouped (in order of their first layer)."""
    groups: list[tuple[list[int], Tensor]] = []
    for layer in sorted(by_layer):
        value = by_layer[layer]
        same = next((g for g in groups if torch.equal(g[1], value)), None)
        if same is None:
            groups.append(([layer], value))
        else:
            same[0].append(layer)
    return groups


def prompt_html(batch, rows: Iterable[int] = (0,), title: str | None = None) -> str:
    """Self-contained HTML of some rows of a batch."""
    blocks = []
    for row in rows:
        target = batch.rows[row].target
        spans = []
        for position, text, role in _row_tokens(batch, row):
            style = f"background:{ROLE_COLOURS.get(role, '#ffffff')};white-space:pre"
            if position == target:
                style += f";outline:2px solid {TARGET_EDGE}"
            spans.append(token_span(text, style, f"position {position}: {role} {text!r}"))
        blocks.append(token_line(f"row {row}", spans))
    head = f'<div style="font:bold 13px sans-serif">{html.escape(title)}</div>' if title else ""
    return f"<div>{head}{legend_html()}{''.join(blocks)}</div>"


@display.renders(PromptBatch)
def batch_card(batch: PromptBatch) -> str:
    """The first four rows, every token coloured by its role."""
    return prompt_html(batch, rows=range(min(len(batch), 4)), title=repr(batch))


def prompt_figure(batch, row: int = 0, chars_per_line: int = _CHARS_PER_LINE) -> Figure:
    """The tokens of one row as coloured boxes, wrapped into lines (monospace widths)."""
    tokens = _row_tokens(batch, row)
    target = batch.rows[row].target
    lines, line, used = [], [], 0
    for token in tokens:
        width = len(_visible(token[1])) + 1
        if line and used + width > chars_per_line:
            lines.append(line)
            line, used = [], 0
        line.append(token)
        used += width
        if token[1].endswith("\n"):  # the prompt's own line breaks
            lines.append(line)
            line, used = [], 0
    if line:
        lines.append(line)
    figure = Figure(figsize=(0.085 * chars_per_line + 0.5, 0.32 * len(lines) + 0.8))
    ax = figure.add_axes((0, 0, 1, 0.9))
    ax.set_xlim(0, chars_per_line + 2)
    ax.set_ylim(len(lines) + 0.2, -0.3)
    ax.axis("off")
    for y, tokens_of_line in enumerate(lines):
        x = 0.5
        for position, text, role in tokens_of_line:
            shown = _visible(text)
            edge = TARGET_EDGE if position == target else "none"
            ax.add_patch(
                FancyBboxPatch((x, y + 0.1), len(shown), 0.8, boxstyle="round,pad=0.02",
                               facecolor=ROLE_COLOURS.get(role, "white"), edgecolor=edge,
                               linewidth=1.5)
            )  # fmt: skip
            ax.text(x + len(shown) / 2, y + 0.5, shown, ha="center", va="center",
                    family="monospace", fontsize=7)  # fmt: skip
            x += len(shown) + 1
    handles = [
        FancyBboxPatch((0, 0), 1, 1, facecolor=c, edgecolor="none") for c in ROLE_COLOURS.values()
    ]
    figure.legend(handles, list(ROLE_COLOURS), loc="upper center", ncols=len(ROLE_COLOURS),
                  fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.97))  # fmt: skip
    task = batch.prompts[row].task.name
    figure.suptitle(f"{task}: row {row}, tokens by role (target q outlined)", fontsize=9, y=1.0)
    return figure
