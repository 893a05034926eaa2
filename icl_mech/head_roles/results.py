"""``HeadRoles``: everything the head-roles reproduction measured, as tidy tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icl_mech.function_vectors.heads import Head
from icl_mech.head_roles.ablation_experiment import accuracy_table
from icl_mech.head_roles.comparison import CONDITIONS, METHODS, TaskComparison
from icl_mech.head_roles.induction import HeadScores
from icl_mech.head_roles.residual_map import ResidualMap
from icl_mech.head_roles.settings import Settings


@dataclass
class HeadRoles:
    """Per task the exact and attribution effects (``comparisons``), every head's induction
    scores, the FV ranking (mean exact effect over the tasks), the ablated head sets, the
    per-query ablation results, the token-loss differences and one residual map."""

    settings: Settings
    comparisons: list[TaskComparison] = field(repr=False)
    scores: HeadScores = field(repr=False)
    fv_ranking: list[Head]
    sets: dict = field(repr=False)
    correct: pd.DataFrame = field(repr=False)
    token_loss: pd.DataFrame = field(repr=False)
    residual: ResidualMap | None = field(default=None, repr=False)

    @property
    def fv_effect(self) -> np.ndarray:
        """The exact indirect effect of every head, ``[layer, head]``, mean over the tasks."""
        return np.mean([c.effects["exact"].mean.numpy() for c in self.comparisons], axis=0)

    def comparison_frame(self) -> pd.DataFrame:
        """One row per task: agreement, passes, wall time and speed-up, and the accuracy of
        zero-shot, ICL, shuffled-label ICL and the function vector of each method's top ``k``
        heads on zero-shot and on shuffled-label prompts."""
        rows = []
        for c in self.comparisons:
            row = {"task": c.task} | c.agreement(self.settings.k)
            for method in METHODS:
                row[f"forwards_{method}"] = c.effects[method].forwards
                row[f"seconds_{method}"] = round(c.seconds[method], 2)
            row["speedup"] = c.seconds["exact"] / c.seconds["attribution"]
            for condition in CONDITIONS:
                estimate = c.accuracy(condition)
                row[condition] = estimate.value
                row[f"{condition}_ci"] = estimate.format(2)
            row["n_test"] = len(c.hits["icl"])
            row |= {f"layer_{name}": layer for name, layer in c.layers.items()}
            rows.append(row)
        return pd.DataFrame(rows)

    def effects_frame(self) -> pd.DataFrame:
        """One row per (task, head): the exact effect with its interval and the estimate."""
        parts = []
        for c in self.comparisons:
            frame = c.effects["exact"].to_frame()
            frame["attribution"] = c.effects["attribution"].mean.flatten().numpy()
            parts.append(frame)
        return pd.concat(parts, ignore_index=True)

    def heads_frame(self) -> pd.DataFrame:
        """One row per head: induction and prefix-matching scores, and the FV effect."""
        frame = self.scores.to_frame()
        effect = self.fv_effect
        heads = list(zip(frame["layer"], frame["head"]))
        frame["fv_effect"] = [effect[layer, head] for layer, head in heads]
        rank = {head: r + 1 for r, head in enumerate(self.fv_ranking)}
        frame["rank_fv"] = [rank[head] for head in heads]
        return frame

    def sets_frame(self) -> pd.DataFrame:
        """The heads ablated for each (k, condition)."""
        rows = []
        for (k, condition), heads in self.sets.items():
            if condition != "none":
                names = " ".join(f"L{layer}H{h}" for layer, h in heads)
                rows.append({"k": k, "condition": condition, "heads": names})
        return pd.DataFrame(rows)

    def accuracy_frame(self) -> pd.DataFrame:
        return accuracy_table(self.correct)

    def layers_of(self, heads: list[Head]) -> float:
        return float(np.mean([layer for layer, _ in heads])) if heads else float("nan")
