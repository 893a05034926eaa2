"""Which heads do in-context learning, through the runner: exact vs attribution patching of
every head, induction scores, ablation with exclusion (Yin & Steinhardt 2025) and a residual
attribution map."""

from __future__ import annotations

import numpy as np

from icl_mech import tasks as bundled
from icl_mech.errors import IclMechError
from icl_mech.head_roles.ablation_experiment import (
    ablation_accuracy,
    ablation_token_loss,
    head_sets,
)
from icl_mech.head_roles.comparison import compare_task
from icl_mech.head_roles.figures import ablation_curves, exact_vs_attribution, residual_map_figure
from icl_mech.head_roles.induction import induction_scores
from icl_mech.head_roles.induction_figures import induction_map, induction_vs_effect
from icl_mech.head_roles.residual_map import residual_map, same_length_twins
from icl_mech.head_roles.results import HeadRoles
from icl_mech.head_roles.settings import Settings
from icl_mech.report import Report

NOTE = (
    "attribution is first order: it ignores attention saturation and cancellation between "
    "paths (AtP*, Kramar et al. 2024)"
)


def run_head_roles(model, settings: Settings, progress: bool = False) -> HeadRoles:
    check_ks(model, settings)
    io_tasks = [bundled.resolve(t) for t in settings.io_tasks]
    class_tasks = [bundled.resolve(t) for t in settings.class_tasks]
    scores = induction_scores(model, settings.n_tokens, settings.n_sequences, settings.seed,
                              progress=progress and "induction scores")  # fmt: skip
    comparisons = [compare_task(model, task, settings, progress) for task in io_tasks]
    mean = np.mean([c.effects["exact"].mean.numpy() for c in comparisons], axis=0)
    heads = [(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    fv_ranking = sorted(heads, key=lambda lh: (-mean[lh[0], lh[1]], lh))
    sets = head_sets(model, scores.ranking("induction"), fv_ranking, settings.ablation_ks,
                     settings.seed)  # fmt: skip
    correct = ablation_accuracy(model, [*io_tasks, *class_tasks], sets, settings, progress)
    token_loss = ablation_token_loss(model, sets, settings, progress)
    first = comparisons[0]
    pairs = same_length_twins(model, first.clean, first.shuffled)
    residual = None
    if pairs:
        n_layers = model.cfg.n_layers
        step = n_layers if not settings.map_layers else max(1, n_layers // settings.map_layers)
        layers = (
            list(range(n_layers)) if not settings.map_layers else list(range(0, n_layers, step))
        )
        residual = residual_map(model, *pairs[0], layers=layers, exact=True)
    return HeadRoles(settings, comparisons, scores, fv_ranking, sets, correct, token_loss, residual)


def check_ks(model, settings: Settings) -> None:
    """Every k fits the model: two disjoint sets of k and a random control of k more."""
    heads = model.cfg.n_layers * model.cfg.n_heads
    largest = max(settings.ablation_ks)
    if 3 * largest > heads:
        raise IclMechError(
            f"head-roles settings: ablation_ks={list(settings.ablation_ks)} has k={largest}, "
            f"which needs {3 * largest} heads (induction and FV sets of k, random heads "
            f"beside them), but {model.cfg.model_name} has {heads}; choose every k <= "
            f"{heads // 3}"
        )


def compute(model, settings: Settings, progress: bool = True) -> Report:
    results = run_head_roles(model, settings, progress)
    accuracy = results.accuracy_frame()
    tables = {
        "comparison": results.comparison_frame(),
        "effects": results.effects_frame(),
        "heads": results.heads_frame(),
        "sets": results.sets_frame(),
        "ablation": accuracy,
        "token_loss": results.token_loss,
    }
    figures = {
        "attribution": exact_vs_attribution(
            [(c.effects["exact"], c.effects["attribution"]) for c in results.comparisons],
            settings.k,
        ),
        "induction": induction_map(results.scores, settings.k),
        "induction_vs_fv": induction_vs_effect(
            results.scores, [c.effects["exact"] for c in results.comparisons]
        ),
        "ablation": ablation_curves(accuracy, results.token_loss),
    }
    if results.residual is not None:
        tables["residual_map"] = results.residual.to_frame()
        figures["residual_map"] = residual_map_figure(results.residual)
    return Report("head-roles", settings, tables, figures, _headline(results, accuracy))


def _headline(results: HeadRoles, accuracy) -> dict:
    """Exact vs attribution per task, the top heads of each kind and their mean layer, and the
    ablation and token loss at the largest k."""
    k = results.settings.k
    comparison = results.comparison_frame()
    largest = max(results.settings.ablation_ks)
    at_k = accuracy[accuracy["k"] == largest]
    loss = results.token_loss[results.token_loss["k"] == largest]
    induction_top = results.scores.top(k)
    fv_top = results.fv_ranking[:k]
    return {
        "note": NOTE,
        "per_task": {
            row.task: {
                "spearman": round(row.spearman, 3),
                f"top{k}_overlap": row[f"top{k}_overlap"],
                "speedup": round(row.speedup, 1),
                "fv_exact": row.fv_exact_ci,
                "fv_attribution": row.fv_attribution_ci,
                "icl": row.icl_ci,
                "icl_shuffled": row.icl_shuffled_ci,
                "fv_exact_shuffled": row.fv_exact_shuffled_ci,
                "fv_attribution_shuffled": row.fv_attribution_shuffled_ci,
            }
            for _, row in comparison.iterrows()
        },  # fmt: skip
        "top_induction": [f"L{layer}H{h}" for layer, h in induction_top],
        "top_fv": [f"L{layer}H{h}" for layer, h in fv_top],
        "mean_layer": {
            "induction": results.layers_of(induction_top),
            "fv": results.layers_of(fv_top),
        },  # fmt: skip
        f"ablation_k{largest}": {
            f"{row.kind}/{row.condition}": f"{row.accuracy:.2f} [{row.accuracy_low:.2f}, "
            f"{row.accuracy_high:.2f}] (drop {row.drop:+.2f} [{row.drop_low:+.2f}, "
            f"{row.drop_high:+.2f}], n={row.n})"
            for row in at_k.itertuples()
        },
        f"token_loss_k{largest}": {
            row.condition: f"{row.difference:.2f} [{row.difference_low:.2f}, "
            f"{row.difference_high:.2f}] (n={row.n})"
            for row in loss.itertuples()
        },
    }
