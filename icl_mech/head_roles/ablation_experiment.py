"""Ablation with exclusion (Yin & Steinhardt 2025): for each k, mean-ablate the top-k induction
heads that are not among the top-k function-vector heads, the top-k FV heads that are not among
the top-k induction heads, and random heads from the same layers as each, then score few-shot
ICL on every task and the token-loss difference on the package's own text.

Each head's mean is taken over the very prompts (or text windows) it is ablated on, position by
position (:class:`icl_mech.head_roles.ablation.MeanAblateHeads`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from tqdm import tqdm

from icl_mech import stats
from icl_mech.evaluation import build_prompts, hits
from icl_mech.function_vectors.heads import Head
from icl_mech.head_roles.ablation import (
    MeanAblateHeads,
    exclusion_sets,
    mean_ablation,
    random_heads,
)
from icl_mech.head_roles.settings import Settings
from icl_mech.head_roles.token_loss import text_windows, token_loss_difference
from icl_mech.prompts import Task

CONDITIONS = ("none", "induction", "fv", "random_induction", "random_fv")
LABELS = {
    "none": "no ablation",
    "induction": "induction heads (FV heads excluded)",
    "fv": "FV heads (induction heads excluded)",
    "random_induction": "random heads, induction layers",
    "random_fv": "random heads, FV layers",
}


def head_sets(model, induction: Sequence[Head], fv: Sequence[Head], ks, seed: int) -> dict:
    """``{(k, condition): heads}`` for every k and condition (``none``: no head)."""
    sets: dict = {}
    for k in ks:
        induction_only, fv_only = exclusion_sets(induction, fv, k)
        chosen = [*induction_only, *fv_only]
        sets[(k, "none")] = []
        sets[(k, "induction")] = induction_only
        sets[(k, "fv")] = fv_only
        sets[(k, "random_induction")] = random_heads(model, induction_only, chosen, seed)
        sets[(k, "random_fv")] = random_heads(model, fv_only, chosen, seed + 1)
    return sets


def _ablating(full: MeanAblateHeads, heads: Sequence[Head]) -> list[MeanAblateHeads]:
    """The items that mean-ablate ``heads`` (none for no head)."""
    return [full.select(heads)] if heads else []


def _all_heads(model) -> list[Head]:
    return [(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def ablation_accuracy(
    model, tasks: Sequence[Task], sets: dict, settings: Settings, progress: bool = False
) -> pd.DataFrame:
    """One row per (task, k, condition, query): whether few-shot ICL answered right."""
    rows = []
    for task in tqdm(tasks, desc="ablation", disable=not progress, leave=False):
        prompts = _prompts(model, task, settings)
        full = mean_ablation(model, prompts, _all_heads(model), settings.batch_size)
        done: dict = {}
        for (k, condition), heads in sets.items():
            key = tuple(heads)
            if key not in done:  # "none" is the same run for every k
                done[key] = hits(model, prompts, _ablating(full, heads), settings.batch_size)
            kind = "classification" if task.is_classification else "io"
            for i, hit in enumerate(done[key]):
                rows.append({"kind": kind, "task": task.name, "k": k, "condition": condition,
                             "query": i, "correct": hit})  # fmt: skip
    return pd.DataFrame(rows)


def _prompts(model, task: Task, settings: Settings):
    shots = settings.class_demonstrations if task.is_classification else settings.n_demonstrations
    pool, test = task.split(min(settings.n_test, len(task.examples) // 3), settings.seed)
    return build_prompts(pool, shots, test.examples, settings.seed)


def ablation_token_loss(model, sets: dict, settings: Settings, progress: bool = False):
    """One row per (k, condition): the token-loss difference with its interval."""
    windows = text_windows(model, settings.n_windows, settings.window, settings.seed)
    full = mean_ablation(model, windows, _all_heads(model), batch_size=2)
    rows, done = [], {}
    for (k, condition), heads in tqdm(sets.items(), desc="token loss", disable=not progress,
                                      leave=False):  # fmt: skip
        key = tuple(heads)
        if key not in done:
            items = _ablating(full, heads)
            done[key] = token_loss_difference(model, windows, *items, early=settings.early,
                                              late=settings.late, span=settings.span,
                                              batch_size=2)  # fmt: skip
        loss = done[key]
        rows.append({"k": k, "condition": condition} | loss.to_frame().iloc[0].to_dict())
    frame = pd.DataFrame(rows)
    frame["n"] = frame["n"].astype(int)
    return frame


def accuracy_table(correct: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (kind, k, condition) over every query of every task of that kind (the mean
    of the tasks' accuracies), and its drop from no ablation; 95% bootstrap intervals that
    resample queries within each task, the same draws for every condition (paired)."""
    rows = []
    for (kind, k), group in correct.groupby(["kind", "k"], sort=False):
        resamples = {}
        for condition, part in group.groupby("condition", sort=False):
            values = part.sort_values(["task", "query"])
            resamples[condition] = stats.stratified_resamples(
                values["correct"].astype(float).tolist(), values["task"].tolist()
            )
        n = int((group["condition"] == "none").sum())
        for condition, (point, draws) in resamples.items():
            accuracy = stats.from_resamples(point, draws, n)
            base_point, base_draws = resamples["none"]
            drop = stats.from_resamples(base_point - point, base_draws - draws, n)
            rows.append({"kind": kind, "k": k, "condition": condition, "label": LABELS[condition],
                         "tasks": group["task"].nunique()} | accuracy.as_dict("accuracy")
                        | drop.as_dict("drop"))  # fmt: skip
    return pd.DataFrame(rows)
