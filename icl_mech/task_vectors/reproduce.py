"""Reproduce Hendel et al. 2023 through the runner: the baseline / ICL / task-vector table over
the bundled input→output and city tasks, accuracy per layer (curves and a task x layer
heatmap), the conflicting-tasks experiment (demonstrations of task A, the vector of task B),
and the logit lens of each task's dev θ per layer."""

from __future__ import annotations

import pandas as pd

from icl_mech import tasks as bundled
from icl_mech.runner import Report
from icl_mech.task_vectors.conflict import conflicting_tasks
from icl_mech.task_vectors.evaluate import evaluate
from icl_mech.task_vectors.figures import (
    accuracy_bars,
    conflict_bars,
    layer_curves,
    layer_heatmap,
    lens_figure,
)
from icl_mech.task_vectors.lens import theta_lens
from icl_mech.task_vectors.settings import Settings

PAPER = {"baseline": 0.13, "icl": 0.84, "tv_replace": 0.74}  # mean over the paper's 7 models


def compute(model, settings: Settings, progress: bool = True) -> Report:
    names = list(settings.tasks)
    needed = names + [b for _, b in settings.pairs if b not in names]
    results = evaluate(model, [bundled.load(n) for n in needed], settings, progress)
    by_task = {r.task: r for r in results.tasks}
    conflicts = [
        conflicting_tasks(model, bundled.load(a), bundled.load(b), by_task[b].layer_replace,
                          by_task[b].layer_add, settings, by_task[b].mean_difference)
        for a, b in settings.pairs
    ]  # fmt: skip
    results.tasks = [by_task[n] for n in names]
    tables = {
        "table": results.to_frame(),
        "accuracy": results.accuracy_frame(),
        "effects": results.effects_frame(),
        "curves": results.curves_frame(),
    }
    lenses = [theta_lens(model, bundled.load(n), settings) for n in names]
    tables["logit_lens"] = pd.concat([lens.to_frame() for lens in lenses], ignore_index=True)
    figures = {
        "layers": layer_curves(results),
        "heatmap": layer_heatmap(results),
        "accuracy": accuracy_bars(results),
        "logit_lens": lens_figure(lenses),
    }
    if conflicts:
        tables["conflict"] = pd.concat([c.to_frame() for c in conflicts], ignore_index=True)
        figures["conflict"] = conflict_bars(conflicts)
    return Report("task-vectors", settings, tables, figures, headline(results, conflicts))


def headline(results, conflicts) -> dict:
    """Means over tasks; every accuracy and paired difference (``CONTRASTS``) with ``*_ci``: a
    95% stratified bootstrap interval (queries resampled within tasks, tasks fixed)."""

    def rounded(tasks=None) -> dict:
        out = {k: round(v, 3) for k, v in results.summary(tasks).items()}
        for name, estimate in results.intervals(tasks).items():
            if name not in out:
                out[name] = round(estimate.value, 3)
            out[f"{name}_ci"] = [round(estimate.low, 3), round(estimate.high, 3)]
        return out

    names = [t.task for t in results.tasks]
    city = [n for n in names if n in bundled.names("city")]
    out = {
        "n_tasks": len(names),
        "n_test_per_task": results.protocol.n_test,
        "mean": rounded(),
        "io_tasks_mean": rounded([n for n in names if n not in city]),
        "city_tasks_mean": rounded(city),
        "paper_mean": PAPER,
    }
    for c in conflicts:
        out[f"conflict {c.task_a} demos / {c.task_b} vector"] = {
            name: {
                "follows_demos": round(c.follows_a[name], 3),
                "follows_demos_ci": _ci(c.estimate(name, "a")),
                "follows_vector": round(b, 3),
                "follows_vector_ci": _ci(c.estimate(name, "b")),
            }
            for name, b in c.follows_b.items()
        }
    return out


def _ci(estimate) -> list[float]:
    return [round(estimate.low, 3), round(estimate.high, 3)]
