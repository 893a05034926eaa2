"""The vector atlas through the runner: every vector's accuracy with intervals per task and
kind, which vector works where, the costs, the cosines and the logit lens."""

from __future__ import annotations

from icl_mech.report import Report
from icl_mech.tasks import resolve
from icl_mech.vector_atlas.evaluate import evaluate
from icl_mech.vector_atlas.figures import accuracy_bars, calibration_curves, cosine_maps, cost_bars
from icl_mech.vector_atlas.results import AtlasResults
from icl_mech.vector_atlas.settings import Settings

PAPERS = {  # the papers' claims, beside which the README puts what the atlas shows
    "task_vector": "Hendel et al. 2023: θ recovers ~90% of ICL accuracy (mean of 7 models)",
    "function_vector": "Todd et al. 2024: an FV added to zero-shot prompts recovers much of ICL",
    "i2cl": "Li et al. 2025: few-shot accuracy at zero-shot cost",
    "state_momentum": "Li et al. 2024: momentum-optimised state vectors beat task vectors",
}


def run_atlas(model, settings: Settings, progress: bool = False) -> AtlasResults:
    tasks = [resolve(t) for t in (*settings.io_tasks, *settings.class_tasks)]
    return evaluate(model, tasks, settings, progress)


def compute(model, settings: Settings, progress: bool = True) -> Report:
    results = run_atlas(model, settings, progress)
    tables = {
        "accuracy": results.accuracy_frame(),
        "summary": results.summary_frame(),
        "works": results.works_frame(),
        "costs": results.costs_frame(),
        "cosines": results.cosine_frame(),
        "lens": results.lens_frame(),
        "curves": results.curves_frame(),
        "calibration": results.calibration_frame(),
    }
    figures = {
        "accuracy": accuracy_bars(results),
        "cosines": cosine_maps(results),
        "costs": cost_bars(results),
        "calibration": calibration_curves(results),
    }
    return Report("vector-atlas", settings, tables, figures, headline(results))


def headline(results: AtlasResults) -> dict:
    """Per task kind and condition: the mean accuracy over tasks with its stratified interval
    and its gain over zero-shot (paired); which vectors work."""
    out = {"n_tasks": len(results.tasks), "n_test_per_task": results.settings.n_test}
    for row in results.summary_frame().to_dict("records"):
        entry = {"accuracy": round(row["accuracy"], 3),
                 "accuracy_ci": [round(row["accuracy_low"], 3), round(row["accuracy_high"], 3)],
                 "n": int(row["n"])}  # fmt: skip
        if row.get("gain") == row.get("gain"):  # not NaN
            entry["gain"] = round(row["gain"], 3)
            entry["gain_ci"] = [round(row["gain_low"], 3), round(row["gain_high"], 3)]
        out.setdefault(row["kind"], {})[row["condition"]] = entry
    works = results.works_frame()
    out["works"] = {kind: list(part.loc[part["works"], "vector"])
                    for kind, part in works.groupby("kind", sort=False)}  # fmt: skip
    out["papers"] = PAPERS
    return out
