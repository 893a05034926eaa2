"""Reproduce Hendel et al. 2023 through the runner: the baseline / ICL / task-vector table over
the bundled input→output and city tasks, accuracy per layer (curves and a task x layer
heatmap), the conflicting-tasks experiment (demonstrations of task A, the vector of task B),
and the logit lens of each task's dev θ per layer."""

from __future__ import annotations

import pandas as pd

from icl_mech import tasks as bundled
from icl_mech.report import Report
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
    chosen = [bundled.resolve(t) for t in settings.tasks]
    pairs = [(bundled.resolve(a), bundled.resolve(b)) for a, b in settings.pairs]
    names = [t.name for t in chosen]
    needed = {t.name: t for t in [*chosen, *(b for _, b in pairs)]}
    results = evaluate(model, list(needed.values()), settings, progress)
    by_task = {r.task: r for r in results.tasks}
    conflicts = [
        conflicting_tasks(model, a, b, by_task[b.name].layer_replace, by_task[b.name].layer_add,
                          settings, by_task[b.name].mean_difference)
        for a, b in pairs
    ]  # fmt: skip
    results.tasks = [by_task[n] for n in names]
    tables = {
        "table": results.to_frame(),
        "accuracy": results.accuracy_frame(),
        "effects": results.effects_frame(),
        "curves": results.curves_frame(),
    }
    lenses = [theta_lens(model, task, settings) for task in chosen]
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
        "n_test_per_task": results.settings.n_test,
        "mean": rounded(),
        "paper_mean": PAPER,
    }
    io = [n for n in names if n not in city]
    for group, members in (("io", io), ("city", city)):
        if members:  # a group without tasks has no mean
            out[f"{group}_tasks_mean"] = rounded(members)
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
