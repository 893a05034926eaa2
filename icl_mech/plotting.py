"""One figure style: every figure is a ``matplotlib.figure.Figure`` (no pyplot state, so
nothing leaks between notebook cells), drawn with the helpers here and saved by ``save_figure``.

Each method's paper figures live next to the method (``icl_mech.anchors.figures``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icl_mech.errors import IclMechError

DPI = 120


def figure(width: float, height: float, rows: int = 1, columns: int = 1, **subplots):
    """A constrained-layout Figure and its axes (a single axis for 1 x 1)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, columns, **subplots)


def save_figure(fig: Figure, out: str | Path, name: str) -> Path:
    """``<out>/<name>.png``."""
    path = Path(out) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def figure_title(fig: Figure) -> str:
    """A figure's title, first line: its suptitle, else its first titled axis ("" if none)."""
    titles = [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes if ax.get_visible()]
    return next((t.strip().splitlines()[0] for t in titles if t.strip()), "")


def interval_note(
    unit: str,
    n,
    per: str | None = None,
    mark: str | None = "whiskers",
    confidence: float = 0.95,
) -> str:
    """The one wording of a figure's intervals, e.g. ``whiskers: 95% bootstrap interval over
    queries, n = 26–32 per task``. ``unit``: what was resampled (queries, sentences, prompts);
    ``n``: one count or several (shown as their range); ``per``: what one count is of;
    ``mark``: how the figure draws the intervals (whiskers, bands), or None."""
    counts = sorted({int(v) for v in np.atleast_1d(np.asarray(n, dtype=float)) if v == v})
    if not counts:
        raise IclMechError(f"interval_note: no count of {unit} given")
    shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    text = f"{confidence:.0%} bootstrap interval over {unit}, n = {shown}"
    return (f"{mark}: " if mark else "") + text + (f" per {per}" if per else "")


def show_zero_bars(ax, bars, fmt: str = "%.2f", labelled: bool = False) -> None:
    """Bars of height 0 drawn visibly: outlined in their own colour and, unless ``labelled``
    (the chart writes every value already), with the value written on them."""
    for bar in bars:
        if bar.get_height() != 0:
            continue
        bar.set_edgecolor(bar.get_facecolor()[:3])
        bar.set_linewidth(1.2)
        if not labelled:
            at = (bar.get_x() + bar.get_width() / 2, 0)
            narrow = bar.get_width() < 0.12  # many bars per group: "0.00" would run together
            ax.annotate("0" if narrow else fmt % 0, at, xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6 if narrow else 7)  # fmt: skip


def grouped_bars(
    ax,
    frame: pd.DataFrame,
    ylabel: str,
    fmt: str = "%.2f",
    chance: dict[str, float] | None = None,
    rotation: int = 0,
    errors: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> None:
    """One group per row of ``frame``, one bar per column, value labels on the bars;
    ``chance``: a dotted tick per group; ``errors``: (low, high) frames shaped like ``frame``
    (interval bounds, not distances), drawn as whiskers."""
    width = 0.8 / len(frame.columns)
    x = np.arange(len(frame.index))
    for i, column in enumerate(frame.columns):
        offset = (i - (len(frame.columns) - 1) / 2) * width
        yerr = None
        if errors is not None:
            low, high = (np.asarray(e[column], dtype=float) for e in errors)
            value = np.asarray(frame[column], dtype=float)
            yerr = np.clip(np.stack([value - low, high - value]), 0, None)
        bars = ax.bar(x + offset, frame[column], width, label=str(column), yerr=yerr,
                      error_kw=dict(elinewidth=0.8, capsize=2, ecolor="0.25"))  # fmt: skip
        ax.bar_label(bars, fmt=fmt, fontsize=7)
        show_zero_bars(ax, bars, fmt, labelled=True)
    for i, group in enumerate(frame.index):
        if chance and group in chance:
            ax.hlines(chance[group], i - 0.45, i + 0.45, colors="grey", linestyles=":")
    ax.set_xticks(x, [str(i) for i in frame.index], rotation=rotation,
                  ha="right" if rotation else "center", fontsize=8)  # fmt: skip
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def accuracy_frame(results: Sequence) -> pd.DataFrame:
    """One row per ``AccuracyResult``: task, setting, accuracy with its 95% bootstrap interval
    over the queries (``accuracy_low``/``_high``, and as text in ``accuracy_ci``) and n."""
    rows = []
    for r in results:
        estimate = r.estimate()
        setting = {"task": r.task, "setting": f"{r.n_demonstrations}-shot", "seed": r.seed}
        rows.append(setting | estimate.as_dict("accuracy") | {"accuracy_ci": str(estimate)})
    return pd.DataFrame(rows)


def accuracy_figure(results: Sequence, model_name: str) -> Figure:
    """Zero-shot vs few-shot accuracy per task (dotted: chance; whiskers: 95% bootstrap
    interval over the queries)."""
    long = accuracy_frame(results)

    def table(column):
        return long.pivot_table(column, "task", "setting", sort=False)

    frame = table("accuracy")
    chance = {r.task: 1 / r.n_classes for r in results if r.n_classes}
    fig, ax = figure(1.6 + 1.4 * len(frame), 3.6)
    errors = (table("accuracy_low"), table("accuracy_high"))
    grouped_bars(ax, frame, "accuracy", chance=chance, errors=errors)
    ax.set_ylim(0, 1.05)
    note = interval_note("queries", long["n"], per="task")
    ax.set_title(f"In-context learning accuracy, {model_name}\n{note}", fontsize=10)
    return fig


def condition_bars(frame: pd.DataFrame, labels: Mapping[str, str], title: str) -> Figure:
    """First-token accuracy (test) per task, one bar for every condition the frame has.

    ``frame`` is long: task, condition, accuracy, accuracy_low, accuracy_high (tasks and
    conditions drawn in the frame's order; the mean over tasks is a task named ``"mean"``).
    Whiskers: the 95% interval as it is, from its low to its high bound, also where the point
    lies outside it; the title says so, with n (the frame's ``n`` column)."""
    tasks = list(dict.fromkeys(frame["task"]))
    conditions = list(dict.fromkeys(frame["condition"]))
    x = np.arange(len(tasks))
    width = 0.84 / len(conditions)
    fig, ax = figure(max(8, 0.9 * len(tasks) + 2), 4.2)
    for i, condition in enumerate(conditions):
        part = frame[frame["condition"] == condition].set_index("task").reindex(tasks)
        at = x + (i - (len(conditions) - 1) / 2) * width
        bars = ax.bar(at, part["accuracy"], width, label=labels.get(condition, condition))
        show_zero_bars(ax, bars)
        low, high = part["accuracy_low"].to_numpy(float), part["accuracy_high"].to_numpy(float)
        ax.vlines(at, low, high, colors="black", linewidth=0.7)
        cap = 0.15 * width
        ax.hlines(np.concatenate([low, high]), np.tile(at - cap, 2), np.tile(at + cap, 2),
                  colors="black", linewidth=0.7)  # fmt: skip
    ax.set_xticks(x, tasks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("first-token accuracy (test)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    if "n" in frame:
        counts = frame.loc[frame["task"] != "mean", "n"]
        note = interval_note("queries", counts if len(counts) else frame["n"], per="task")
        if "mean" in tasks and len(counts):
            note += f" ({int(frame.loc[frame['task'] == 'mean', 'n'].max())} in the mean)"
        title = f"{title}\n{note}"
    ax.set_title(title, pad=18 + 6 * math.ceil(len(conditions) / 4))  # above the legend's rows
    return fig
