"""Cards: the rich notebook display (``_repr_html_``) of results, vectors and reports.

A card is one self-contained piece of HTML: a titled box with a line of facts, small tables
and figures inlined as PNG ``data:`` URIs. Inline styles only: no scripts, no style sheets,
nothing fetched from anywhere; every text is escaped. A number with a 95% interval reads
``0.60 [0.52, 0.68]`` (``stats.Estimate``); other floats show 4 significant digits.
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icl_mech.plotting import figure as new_figure
from icl_mech.stats import Estimate

FIGURE_DPI = 96  # small enough for notebooks committed with their outputs
MAX_ROWS = 12
_BOX = (
    "display:inline-block;max-width:980px;border:1px solid #d0d7de;border-radius:6px;"
    "padding:8px 12px;margin:4px 0;font:13px sans-serif;color:#1f2328;background:#ffffff"
)
_CELL = "padding:2px 10px 2px 0;border-bottom:1px solid #eaeef2;white-space:nowrap"
_NOTE = "color:#57606a;font-size:12px;margin:2px 0"


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def interval(value: float, low: float | None, high: float | None) -> str:
    """``0.60 [0.52, 0.68]``; the value alone when the interval is undefined (NaN, None)."""
    if any(x is None or _is_nan(x) for x in (low, high)):
        return shown(value)
    return Estimate(float(value), float(low), float(high), 0).format(2)


def shown(value) -> str:
    """A value as a card shows it: an ``Estimate`` with its interval, floats to 4 significant
    digits, everything else as ``str``."""
    if isinstance(value, Estimate):
        return interval(value.value, value.low, value.high)
    if isinstance(value, (bool, np.bool_, Integral)):
        return str(value)
    if isinstance(value, Real):
        return "nan" if _is_nan(value) else f"{float(value):.4g}"
    return str(value)


def _is_nan(value) -> bool:
    return isinstance(value, Real) and math.isnan(float(value))


def layer_span(layers: Sequence[int]) -> str:
    """``0..29`` for consecutive layers, else the list (``0, 5, 10``)."""
    layers = [int(layer) for layer in layers]
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ", ".join(map(str, layers))


def fold_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column ``x`` that comes with ``x_low`` and ``x_high`` becomes one text column
    ``"0.60 [0.52, 0.68]"`` (the bound columns are dropped)."""
    out = frame.copy()
    for column in frame.columns:
        low, high = f"{column}_low", f"{column}_high"
        if low in frame.columns and high in frame.columns:
            values = zip(frame[column], frame[low], frame[high])
            out[column] = pd.Series([interval(*v) for v in values], index=frame.index, dtype=object)
            out = out.drop(columns=[low, high])
    return out


def table(frame: pd.DataFrame, max_rows: int | None = MAX_ROWS) -> str:
    """A small HTML table of the columns of ``frame`` (not its index; intervals folded, see
    ``fold_intervals``); beyond ``max_rows`` rows, evenly spaced rows (first and last kept)
    with a note."""
    shown_frame, thinned = fold_intervals(frame), ""
    if max_rows is not None and len(shown_frame) > max_rows:
        keep = np.unique(np.linspace(0, len(shown_frame) - 1, max_rows).round().astype(int))
        thinned = f"{len(keep)} of {len(shown_frame)} rows shown (evenly spaced)"
        shown_frame = shown_frame.iloc[keep]
    numbers = [  # right-aligned: numeric columns and folded intervals
        pd.api.types.is_numeric_dtype(frame[c]) or f"{c}_low" in frame.columns
        for c in shown_frame.columns
    ]
    head = "".join(
        f'<th style="{_CELL};text-align:left;border-bottom-color:#d0d7de">{escape(c)}</th>'
        for c in shown_frame.columns
    )
    rows = []
    for values in shown_frame.itertuples(index=False):
        cells = "".join(
            f'<td style="{_CELL};text-align:{"right" if right else "left"}">{escape(shown(v))}</td>'
            for v, right in zip(values, numbers)
        )
        rows.append(f"<tr>{cells}</tr>")
    body = f'<table style="border-collapse:collapse;margin:4px 0"><tr>{head}</tr>{"".join(rows)}'
    return body + "</table>" + (note(thinned) if thinned else "")


def facts(items: Mapping[str, object]) -> str:
    """One line of ``name value`` pairs."""
    pairs = "".join(
        f'<span style="margin-right:16px"><span style="color:#57606a">{escape(name)}</span> '
        f"{escape(shown(value))}</span>"
        for name, value in items.items()
    )
    return f'<div style="margin:2px 0 6px">{pairs}</div>'


def note(text: str) -> str:
    return f'<div style="{_NOTE}">{escape(text)}</div>'


def figure(
    fig: Figure, alt: str, close: bool = True, caption: str = "", dpi: int = FIGURE_DPI
) -> str:
    """The figure as an ``<img>`` with a base64 PNG ``data:`` URI (under an optional caption);
    ``close``: release the figure afterwards (False for a figure someone else keeps, such as
    a Report's)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        close_figure(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    picture = (
        f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" '
        'style="display:block;max-width:100%;height:auto">'
    )
    box = "display:inline-block;vertical-align:top;max-width:100%;margin:6px 12px 0 0"
    return f'<div style="{box}">{note(caption) if caption else ""}{picture}</div>'


def close_figure(fig: Figure) -> None:
    """Forget the figure in pyplot if pyplot holds it, and drop its artists."""
    pyplot = sys.modules.get("matplotlib.pyplot")  # a figure pyplot holds: pyplot is loaded
    if pyplot is not None and getattr(fig.canvas, "manager", None) is not None:
        pyplot.close(fig)
    fig.clear()


def layer_figure(frame: pd.DataFrame, panels: Sequence[Sequence[str]], title: str) -> Figure:
    """One panel per group of ``frame`` columns, each drawn as a line over ``frame["layer"]``."""
    fig, axes = new_figure(4 * len(panels), 2.6, 1, len(panels), squeeze=False)
    for ax, columns in zip(axes[0], panels):
        for column in columns:
            ax.plot(frame["layer"], frame[column], marker=".", label=column)
        ax.set_xlabel("layer")
        ax.set_ylabel(columns[0] if len(columns) == 1 else "")
        if len(columns) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def card(title: str, *parts: str, items: Mapping[str, object] | None = None) -> str:
    """A bordered box: the title, a line of ``items`` (see ``facts``), then the parts (HTML
    made by the functions here) in order."""
    head = f'<div style="font-weight:bold;font-size:14px;margin-bottom:4px">{escape(title)}</div>'
    return f'<div style="{_BOX}">{head}{facts(items) if items else ""}{"".join(parts)}</div>'


def page(body: str, title: str) -> str:
    """A whole HTML document around cards (for writing a file)."""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f'</title></head><body style="margin:16px;background:#ffffff">{body}</body></html>'
    )


__all__ = [
    "card",
    "close_figure",
    "escape",
    "facts",
    "figure",
    "fold_intervals",
    "interval",
    "layer_figure",
    "layer_span",
    "note",
    "page",
    "shown",
    "table",
]
