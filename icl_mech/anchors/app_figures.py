"""Figures of the anchor applications (Wang et al. 2023, Tables 1-3 and Figure 6); each function
takes a result and returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icl_mech.anchors.compression_experiment import METRICS
from icl_mech.anchors.reweighting_experiment import ALL_TASKS, CONDITIONS, NUMBERS
from icl_mech.errors import IclMechError
from icl_mech.plotting import grouped_bars, interval_note

# Wang et al.'s Table 3 (GPT2-XL), under the names of the bundled tasks
PAPER_SPEEDUP = {"sentiment": 1.1, "question_type": 1.5, "topic": 2.5, "emotion": 1.4}


def _bars_with_whiskers(table: pd.DataFrame, numbers: dict[str, str]) -> tuple:
    """(values, (low, high)) frames: one column per ``numbers`` key, from its numeric columns."""
    frames = [
        pd.DataFrame({label: table[f"{column}{end}"] for label, column in numbers.items()})
        for end in ("", "_low", "_high")
    ]
    return frames[0], (frames[1], frames[2])


def reweighting_figure(table) -> Figure:
    """Table 1 as bars: accuracy per task (and over all tasks) of the three conditions, with
    95% bootstrap intervals over the test queries."""
    frame = table.table()
    values, errors = _bars_with_whiskers(frame, {c: NUMBERS[c] for c in CONDITIONS})
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    ax = figure.subplots()
    grouped_bars(ax, values, "accuracy (%)", fmt="%.0f", errors=errors)
    ax.set_ylim(0, 110)
    tasks = frame.drop(index=ALL_TASKS, errors="ignore")
    note = interval_note("queries", tasks["n"] if len(tasks) else frame["n"], per="task")
    if ALL_TASKS in frame.index and len(tasks):
        note += f" ({int(frame.loc[ALL_TASKS, 'n'])} over all tasks)"
    ax.set_title(f"Anchor re-weighting (Table 1)\n{note}", fontsize=10)
    return figure


def compression_figure(table) -> Figure:
    """Table 2 as bars: label loyalty, word loyalty and accuracy of each method, with 95%
    bootstrap intervals over the test queries."""
    frame = table.table()
    values, errors = _bars_with_whiskers(frame, {m.replace("_", " "): m for m in METRICS})
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    ax = figure.subplots()
    grouped_bars(ax, values, "%", fmt="%.0f", errors=errors, rotation=25)
    ax.set_ylim(0, 115)
    note = interval_note("queries", frame["n"])
    ax.set_title(f"Context compression: loyalty to the full prompt (Table 2)\n{note}")
    return figure


def speedup_figure(table3: pd.DataFrame) -> Figure:
    """Table 3: Hidden_anchor speed-up per task (logits at q; logits at every token, when
    measured) beside the paper's (GPT2-XL)."""
    if "speedup" not in table3.columns:
        raise IclMechError(f"speed-up table lacks a 'speedup' column: {list(table3.columns)}")
    frame = pd.DataFrame({"this model, logits at q": table3["speedup"]})
    if "speedup_every_position" in table3.columns:
        frame["this model, logits at every token"] = table3["speedup_every_position"]
    frame["paper (GPT2-XL)"] = [PAPER_SPEEDUP.get(t, np.nan) for t in table3.index]
    figure = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = figure.subplots()
    grouped_bars(ax, frame, "speed-up (full / Hidden_anchor)", fmt="%.2f")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_title("Inference time per query (Table 3)")
    return figure


def diagnosis_figure(diagnoses: Sequence) -> Figure:
    """Per task: predicted and actual confusion side by side (smaller / 0.5 = confused), and the
    correlation each single layer would give when it was scanned."""
    if not diagnoses:
        raise IclMechError("diagnosis_figure: no diagnosis given")
    scanned = any(d.per_layer and len(d.per_layer) > 1 for d in diagnoses)
    columns = 3 if scanned else 2
    figure = Figure(figsize=(4.2 * columns, 3.8 * len(diagnoses)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(diagnoses), columns))
    for row, diagnosis in zip(axes, diagnoses):
        layers = ",".join(map(str, diagnosis.layers))
        titles = (
            f"{diagnosis.task}: predicted (layer {layers})",
            f"actual AUC-ROC (r = {diagnosis.correlation:.2f})",
        )
        for ax, matrix, title in zip(row, (diagnosis.predicted, diagnosis.actual), titles):
            _heatmap(ax, matrix.numpy(), diagnosis.classes, title)
        if scanned:
            layer_ids = sorted(diagnosis.per_layer)
            row[2].plot(layer_ids, [diagnosis.per_layer[i] for i in layer_ids], marker="o")
            row[2].axhline(0, color="grey", linewidth=0.8)
            row[2].set_xlabel("layer")
            row[2].set_ylabel("Pearson r, predicted vs actual")
            row[2].set_title("keys of one layer")
    return figure


def _heatmap(ax, matrix: np.ndarray, classes: Sequence[str], title: str) -> None:
    image = ax.imshow(matrix, cmap="YlGnBu", vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, [c[:6] for c in classes], rotation=45, fontsize=8)
    ax.set_yticks(ticks, [c[:6] for c in classes], fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
