"""Reproduce Hendel et al. 2023 on a model: the baseline / ICL / task-vector table over the
bundled input→output and city tasks, accuracy per layer, and the conflicting-tasks experiment.

Writes into ``out_dir``: ``task_vectors_layers.png`` (accuracy per layer, per task and mean),
``task_vectors_accuracy.png`` (bars), ``task_vectors_conflict.png``, and the tables
``task_vectors_table.{md,csv}``, ``task_vectors_curves.csv``, ``task_vectors_conflict.{md,csv}``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from icl_mech import tasks as bundled
from icl_mech.models import torch_threads
from icl_mech.task_vectors.conflict import conflicting_tasks
from icl_mech.task_vectors.evaluate import CONDITIONS, Protocol, evaluate
from icl_mech.task_vectors.figures import accuracy_bars, conflict_bars, layer_curves

PREFIX = "task_vectors_"
QUICK_TASKS = ("country_capital", "uppercase", "city_country")
# (demonstrations of A, vector of B): the two tasks share their inputs
PAIRS = (
    ("country_continent", "country_capital"),
    ("english_spanish", "english_french"),
    ("last_letter", "first_letter"),
    ("previous_letter", "next_letter"),
    ("city_language", "city_country"),
)
QUICK_PAIRS = (("country_continent", "country_capital"),)
QUICK = Protocol(n_dev=8, n_test=12, max_new_tokens=4, groups=3, test_curves=False)
FULL = Protocol(n_dev=16, n_test=32, groups=3)
PAPER = {"baseline": 0.13, "icl": 0.84, "tv_replace": 0.74}  # mean over the paper's 7 models


def default_tasks() -> list[str]:
    """Every bundled input→output and city task (names are unique)."""
    return list(dict.fromkeys(bundled.names("io") + bundled.names("city")))


def run(
    model,
    out_dir: pathlib.Path,
    quick: bool = False,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    threads: int | None = 1,
    progress: bool = True,
    **protocol_overrides,
) -> dict:
    """Compute the table, curves and conflicts; write figures and tables; return headlines.

    ``protocol_overrides`` change fields of ``Protocol`` (e.g. ``n_test=50``). ``threads``
    sets torch's CPU threads for the run (1 is fastest on a machine shared by several jobs).
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = dataclasses.replace(QUICK if quick else FULL, seed=seed, **protocol_overrides)
    names = list(tasks) if tasks is not None else list(QUICK_TASKS if quick else default_tasks())
    pairs = list(pairs) if pairs is not None else list(QUICK_PAIRS if quick else PAIRS)
    needed = names + [b for _, b in pairs if b not in names]
    start = time.perf_counter()
    with torch_threads(threads):
        results = evaluate(model, [bundled.load(n) for n in needed], protocol, progress)
        by_task = {r.task: r for r in results.tasks}
        conflicts = [
            conflicting_tasks(
                model,
                bundled.load(a),
                bundled.load(b),
                by_task[b].layer_replace,
                by_task[b].layer_add,
                protocol,
                by_task[b].mean_difference,
            )
            for a, b in pairs
        ]
    results.tasks = [by_task[n] for n in names]
    seconds = time.perf_counter() - start
    _write(out_dir, results, conflicts)
    return _headline(results, conflicts, seconds, model, protocol)


def _write(out_dir: pathlib.Path, results, conflicts) -> None:
    table = results.to_frame()
    table.to_csv(out_dir / f"{PREFIX}table.csv", index=False)
    (out_dir / f"{PREFIX}table.md").write_text(markdown(_rounded(table)))
    results.curves_frame().to_csv(out_dir / f"{PREFIX}curves.csv", index=False)
    figures = {"layers": layer_curves(results), "accuracy": accuracy_bars(results)}
    if conflicts:
        frame = pd.concat([c.to_frame() for c in conflicts], ignore_index=True)
        frame.to_csv(out_dir / f"{PREFIX}conflict.csv", index=False)
        (out_dir / f"{PREFIX}conflict.md").write_text(markdown(_rounded(frame)))
        figures["conflict"] = conflict_bars(conflicts)
    for name, figure in figures.items():
        figure.savefig(out_dir / f"{PREFIX}{name}.png", dpi=120)
        plt.close(figure)


def _headline(results, conflicts, seconds, model, protocol) -> dict:
    def rounded(summary: dict) -> dict:
        return {k: round(v, 3) for k, v in summary.items()}

    names = [t.task for t in results.tasks]
    city = [n for n in names if n in bundled.names("city")]
    headline = {
        "model": model.cfg.model_name,
        "n_tasks": len(results.tasks),
        "n_test_per_task": protocol.n_test,
        **rounded(results.summary()),
        "io_tasks_mean": rounded(results.summary([n for n in names if n not in city])),
        "city_tasks_mean": rounded(results.summary(city)),
        "paper_mean": PAPER,
        "seconds": round(seconds, 1),
    }
    for c in conflicts:
        key = f"conflict {c.task_a} demos / {c.task_b} vector"
        headline[key] = {
            name: {"follows_demos": round(c.follows_a[name], 3), "follows_vector": round(b, 3)}
            for name, b in c.follows_b.items()
        }
    return headline


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.round(3)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (no extra dependency)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


__all__ = ["CONDITIONS", "FULL", "PAIRS", "QUICK", "run"]
