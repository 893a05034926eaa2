"""Reproduce Todd et al. 2024 through the runner: the indirect effect of every head, the function
vector of the top heads, and the side-by-side table (baseline, ICL, task vector, mean difference,
function vector) on the same splits and queries."""

from __future__ import annotations

from icl_mech import tasks as bundled
from icl_mech.function_vectors.evaluate import evaluate
from icl_mech.function_vectors.figures import accuracy_bars, indirect_effect_map, layer_curves
from icl_mech.function_vectors.results import CONDITIONS, CONTRASTS, FunctionVectorResults
from icl_mech.function_vectors.settings import Settings
from icl_mech.report import Report


def compute(model, settings: Settings, progress: bool = True) -> Report:
    results = evaluate(model, [bundled.resolve(t) for t in settings.tasks], settings, progress)
    tables = {
        "table": results.to_frame(),
        "accuracy": results.accuracy_frame(),
        "effects": results.effects_frame(),
        "heads": results.heads_frame(),
        "indirect_effects": results.indirect_frame(),
        "curves": results.curves_frame(),
    }
    figures = {
        "indirect_effects": indirect_effect_map([t.effect for t in results.tasks], settings.k),
        "accuracy": accuracy_bars(results),
        "layers": layer_curves(results),
    }
    return Report("function-vectors", settings, tables, figures, _headline(results))


def _headline(results: FunctionVectorResults) -> dict:
    """Means over tasks with ``*_ci`` (95% stratified bootstrap), the paired contrasts, the
    chosen layers, each task's top three heads and the top heads of the mean indirect effect."""
    means = results.intervals()
    summary = results.summary()
    mean = {}
    for name in (*CONDITIONS, *(c for c, _, _ in CONTRASTS)):
        estimate = means[name]
        mean[name] = round(estimate.value, 3)
        mean[f"{name}_ci"] = [round(estimate.low, 3), round(estimate.high, 3)]
    mean["fv_add_over_icl"] = round(summary["fv_add_over_icl"], 3)
    first = results.tasks[0].effect
    return {
        "n_tasks": len(results.tasks),
        "n_test_per_task": results.settings.n_test,
        "k": results.settings.k,
        "mean": mean,
        "layers": {t.task: t.layers for t in results.tasks},
        "top_heads": {
            t.task: [
                f"L{layer}H{head} {t.effect.mean[t.effect.layers.index(layer), head]:.3f}"
                for layer, head in t.effect.top(3)
            ]
            for t in results.tasks
        },  # fmt: skip
        "top_heads_mean_over_tasks": [f"L{layer}H{head}" for layer, head in results.top_heads()],
        "indirect_effect_forwards_per_task": first.forwards,
    }
