"""The report card of ``icl-mech check`` as one self-contained HTML page: the verdicts with
their evidence, then the pictures behind them (figures inlined as PNG, token pictures as HTML);
and the notebook card of a reproduction's ``Report``.
"""

from __future__ import annotations

import pandas as pd

from icl_mech import display
from icl_mech.report import ABOUT, Report, cell, flatten
from icl_mech.show.cards import card, escape, figure, interval, note, page, table

ANSWER_COLOURS = {
    "yes": "#1a7f37",
    "weak": "#9a6700",
    "no": "#cf222e",
    "not enough evidence": "#57606a",
}
_CELL = "padding:4px 10px;border-bottom:1px solid #eaeef2;vertical-align:top"


def verdict_table(verdicts) -> str:
    rows = []
    for v in verdicts:
        colour = ANSWER_COLOURS[v.answer]
        rows.append(
            f'<tr><td style="{_CELL};white-space:nowrap">{escape(v.method)}</td>'
            f'<td style="{_CELL}">{escape(v.question)}</td>'
            f'<td style="{_CELL};font-weight:bold;color:{colour}">{escape(v.answer.upper())}</td>'
            f'<td style="{_CELL}">{escape(v.evidence)}</td></tr>'
        )
    head = "".join(
        f'<th style="{_CELL};text-align:left">{name}</th>'
        for name in ("method", "question", "verdict", "evidence")
    )
    return f'<table style="border-collapse:collapse"><tr>{head}</tr>{"".join(rows)}</table>'


def report_html(report_card) -> str:
    """The whole page. Figures are drawn without closing them: the card keeps its figures."""
    rc = report_card
    summary = card(
        f"icl_mech report card: {rc.model}",
        verdict_table(rc.verdicts),
        note(
            "Verdicts read 95% intervals, never points. yes: the interval lies in the region "
            "where the method works; weak: the effect is shown, but not at the size that "
            "counts; no: the interval excludes the yes region and reaches the no region; not "
            "enough evidence: it spans both (a small sample). Regions per verdict: "
            "icl_mech.verdicts. Intervals: bootstrap over queries (stratified by task where "
            "tasks are pooled)."
        ),
        items={"checked in": f"{rc.seconds:.0f} s", "settings": _settings_line(rc.settings)},
    )
    pictures = [
        card(title, picture if isinstance(picture, str) else figure(picture, title, close=False))
        for title, picture in rc.figures.items()
    ]
    return page(summary + "".join(pictures), f"icl_mech report card: {rc.model}")


def _settings_line(settings) -> str:
    cls = type(settings)
    if settings == cls.quick(threads=settings.threads):
        return "quick"
    if settings == cls(threads=settings.threads):
        return "default"
    return "custom"


@display.renders(Report)
def report_card(report: Report) -> str:
    """The headline numbers (``x`` with its ``x_ci`` as ``0.60 [0.52, 0.68]``), the
    tables' names and sizes, and every figure inline (the report keeps its figures)."""
    values, rows = flatten(report.headline), []
    for key, value in values.items():
        if key.endswith("_ci") and key.removesuffix("_ci") in values:
            continue  # shown beside its value
        bounds = values.get(f"{key}_ci")
        if isinstance(value, (int, float)) and isinstance(bounds, list) and len(bounds) == 2:
            value = interval(value, *bounds)
        rows.append((key, cell(value) if isinstance(value, (list, tuple)) else value))
    paper = ABOUT[report.name].paper if report.name in ABOUT else ""
    sizes = {f"table {n}": f"{len(t)} × {t.shape[1]}" for n, t in report.tables.items()}
    return card(
        report.summary().splitlines()[0],
        note(paper) if paper else "",
        table(pd.DataFrame(rows, columns=["headline", "value"]), max_rows=None),
        *(
            figure(picture, name, close=False, caption=name)
            for name, picture in report.figures.items()
        ),
        items=sizes,
    )
