"""Reproduce the analysis half of "Label Words are Anchors" (Wang et al., EMNLP 2023).

For each classification task: saliency flows per layer (Fig. 3), label and word loyalty when
label words or random words are isolated in the first or last k layers (Fig. 4), AUC-ROC_l and
R_l of the target's attention on the label words (Fig. 5). Prompts hold one demonstration per
class, as in the paper. Writes ``anchors_*.png`` and ``anchors_*.{csv,md}`` into ``out_dir``.

Full mode: 100 held-out queries per task and three seeds (each seed draws its own split and
demonstrations). Quick mode: two tasks, a few queries, one seed.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence

import pandas as pd

from icl_mech import tasks as bundled

from .experiment import Settings, TaskAnalysis, analyse_task
from .figures import auc_figure, flows_figure, loyalty_figure

PREFIX = "anchors_"
QUICK_TASKS = ("sentiment", "topic")


def run(
    model,
    out_dir: pathlib.Path,
    quick: bool = False,
    seed: int = 0,
    *,
    tasks: Sequence[str] | None = None,
    n: int | None = None,
    n_seeds: int | None = None,
    k: int = 5,
    anchors: str = "all",
    target: str = "gold",
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Compute, write figures and tables, and return the headline numbers per task."""
    start = time.perf_counter()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = list(tasks or (QUICK_TASKS if quick else bundled.names("classification")))
    n = n or (4 if quick else 100)
    seeds = [seed + i for i in range(n_seeds or (1 if quick else 3))]
    settings = Settings(k=k, anchors=anchors, target=target, batch_size=batch_size, seed=seed)
    analyses = [
        analyse_task(model, bundled.load(name), n, seeds, settings, progress=progress)
        for name in tasks
    ]
    paths = write_figures(out_dir, analyses)
    paths += write_tables(out_dir, analyses)
    return {
        "model": model.cfg.model_name,
        "n_per_seed": n,
        "seeds": seeds,
        "k": k,
        "anchors": anchors,
        "seconds": round(time.perf_counter() - start, 1),
        "tasks": {a.task: headline(a) for a in analyses},
        "files": [str(p) for p in paths],
    }


def headline(analysis: TaskAnalysis) -> dict:
    """Where each flow dominates, loyalty per condition, where AUC-ROC_l rises."""
    layers = analysis.flows.layers
    dominant = analysis.flows.dominant()
    auc, ratio = analysis.auc.auc(), analysis.auc.ratio()
    loyalty = analysis.loyalty.summary()
    return {
        "n": len(analysis.correct),
        "accuracy": round(analysis.accuracy, 3),
        "S_wp_dominant_layers": _ranges([ly for ly, d in zip(layers, dominant) if d == "S_wp"]),
        "S_pq_dominant_layers": _ranges([ly for ly, d in zip(layers, dominant) if d == "S_pq"]),
        "S_pq_dominant_from": _dominant_from(layers, dominant),
        "loyalty": {
            f"{r.depth}_{r.isolated}": {
                "label": round(r.label_loyalty_mean, 3),
                "word": round(r.word_loyalty_mean, 3),
            }
            for r in loyalty.itertuples()
        },
        "auc_peak_layer": layers[int(auc.nan_to_num(0).argmax())],
        "auc_peak": round(float(auc.nan_to_num(0).max()), 3),
        "auc_mean_first_half": round(float(auc[: len(layers) // 2].nanmean()), 3),
        "auc_mean_second_half": round(float(auc[len(layers) // 2 :].nanmean()), 3),
        "R_half_layer": next((ly for ly, r in zip(layers, ratio.tolist()) if r >= 0.5), None),
    }


def _dominant_from(layers: list[int], dominant: list[str]) -> int | None:
    """First layer from which S_pq exceeds S_wp in every later layer."""
    start = None
    for layer, which in zip(layers, dominant):
        if which == "S_pq" and start is None:
            start = layer
        elif which == "S_wp":
            start = None
    return start


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts, run_start = [], None
    for i, layer in enumerate(layers):
        if run_start is None:
            run_start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(f"{run_start}" if run_start == layer else f"{run_start}-{layer}")
            run_start = None
    return ", ".join(parts) or "none"


def write_figures(out_dir: pathlib.Path, analyses: list[TaskAnalysis]) -> list[pathlib.Path]:
    figures = {
        "flows": flows_figure([a.flows for a in analyses]),
        "flows_raw": flows_figure([a.flows for a in analyses], normalised=False),
        "loyalty": loyalty_figure([a.loyalty for a in analyses]),
        "auc": auc_figure([a.auc for a in analyses]),
    }
    paths = []
    for name, figure in figures.items():
        paths.append(out_dir / f"{PREFIX}{name}.png")
        figure.savefig(paths[-1], dpi=120)
    return paths


def write_tables(out_dir: pathlib.Path, analyses: list[TaskAnalysis]) -> list[pathlib.Path]:
    tables = {
        "flows": pd.concat([a.flows.summary() for a in analyses]),
        "loyalty": pd.concat([a.loyalty.summary() for a in analyses]),
        "layers": pd.concat([a.to_frame() for a in analyses]),
    }
    paths = []
    for name, table in tables.items():
        paths.append(out_dir / f"{PREFIX}{name}.csv")
        table.to_csv(paths[-1], index=False)
    summary = [{"task": a.task, **_flat(headline(a))} for a in analyses]
    paths.append(out_dir / f"{PREFIX}summary.md")
    paths[-1].write_text(markdown_table(summary))
    return paths


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}_"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def markdown_table(rows: list[dict]) -> str:
    """One column per task (rows of the input), one line per metric."""
    lines = ["| metric | " + " | ".join(str(r["task"]) for r in rows) + " |"]
    lines.append("|---" * (len(rows) + 1) + "|")
    for key in rows[0]:
        if key != "task":
            lines.append(f"| {key} | " + " | ".join(str(r.get(key)) for r in rows) + " |")
    return "\n".join(lines) + "\n"
