"""Results of the side-by-side protocol: per task (``FunctionVectorResult``) and over tasks
(``FunctionVectorResults``), every accuracy with its bootstrap interval over the test queries,
the paired differences between conditions (``CONTRASTS``) and the heads behind each vector."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.function_vectors.settings import Settings
from icl_mech.function_vectors.vector import FunctionVector
from icl_mech.per_task import OverTasks, TaskHits
from icl_mech.task_vectors.sweep import LayerSweep
from icl_mech.task_vectors.vector import TaskVector

CONDITIONS = ("baseline", "icl", "icl_shuffled", "tv_replace", "tv_add", "fv_add", "fv_shuffled")
VECTORS = ("tv_replace", "tv_add", "fv_add", "fv_shuffled")  # the conditions with a chosen layer
# paired differences over the same test queries: (name, condition, minus condition)
CONTRASTS = (
    ("fv_add - baseline", "fv_add", "baseline"),
    ("fv_add - tv_add", "fv_add", "tv_add"),
    ("fv_add - tv_replace", "fv_add", "tv_replace"),
    ("fv_add - icl", "fv_add", "icl"),
    ("fv_shuffled - icl_shuffled", "fv_shuffled", "icl_shuffled"),
    ("icl - baseline", "icl", "baseline"),
)


@dataclass
class FunctionVectorResult(TaskHits):
    task: str
    n_layers: int
    n_dev: int
    n_test: int
    layers: dict[str, int]  # per vector condition: its layer, chosen on dev
    correct: dict[str, list[bool]] = field(repr=False)  # per condition and test query
    curves: list[LayerSweep] = field(repr=False)  # dev accuracy per layer, per vector condition
    effect: IndirectEffect = field(repr=False)
    vector: FunctionVector = field(repr=False)
    mean_difference: TaskVector = field(repr=False)
    answers: pd.DataFrame = field(repr=False)  # per test query: gold and each condition's hit

    @property
    def accuracy(self) -> dict[str, float]:
        return {c: float(np.mean(self.correct[c])) for c in CONDITIONS}

    def curve(self, condition: str) -> LayerSweep:
        return next(c for c in self.curves if c.mode == condition)

    def to_frame(self) -> pd.DataFrame:
        row: dict = {"task": self.task, "n_test": self.n_test}
        for condition in CONDITIONS:
            estimate = self.estimate(condition)
            row |= {condition: estimate.value, f"{condition}_low": estimate.low,
                    f"{condition}_high": estimate.high}  # fmt: skip
        for condition in VECTORS:
            layer = self.layers[condition]
            row |= {f"layer_{condition}": layer, f"depth_{condition}": (layer + 1) / self.n_layers,
                    f"dev_{condition}": self.curve(condition).at(layer)}  # fmt: skip
        row["fv_heads"] = " ".join(f"L{layer}H{head}" for layer, head in self.vector.heads)
        row["fv_norm"] = float(self.vector.values.norm())
        return pd.DataFrame([row])


@dataclass
class FunctionVectorResults(OverTasks):
    conditions = CONDITIONS
    contrasts = CONTRASTS

    """The side-by-side table over tasks."""

    tasks: list[FunctionVectorResult]
    settings: Settings

    def to_frame(self) -> pd.DataFrame:
        return pd.concat([t.to_frame() for t in self.tasks], ignore_index=True)

    def accuracy_frame(self) -> pd.DataFrame:
        """Per task and the mean over tasks: each condition as ``"0.60 [0.52, 0.68]"``, and each
        vector's dev-chosen layer."""
        rows = []
        for t in self.tasks:
            row = {"task": t.task, "n": t.n_test} | {c: str(t.estimate(c)) for c in CONDITIONS}
            rows.append(row | {f"layer_{c}": t.layers[c] for c in VECTORS})
        means = self.intervals()
        n = sum(t.n_test for t in self.tasks)
        rows.append({"task": "mean", "n": n} | {c: str(means[c]) for c in CONDITIONS})
        return pd.DataFrame(rows)

    def curves_frame(self) -> pd.DataFrame:
        return pd.concat([c.to_frame() for t in self.tasks for c in t.curves], ignore_index=True)

    def heads_frame(self, k: int | None = None) -> pd.DataFrame:
        """Each task's top heads (default: the function vector's k) with their indirect effect."""
        k = self.settings.k if k is None else k
        return pd.concat([t.effect.top_frame(k) for t in self.tasks], ignore_index=True)

    def indirect_frame(self) -> pd.DataFrame:
        """Every head of every task: indirect effect with its interval and rank."""
        return pd.concat([t.effect.to_frame() for t in self.tasks], ignore_index=True)

    def mean_effect(self) -> Float[Tensor, "layer head"]:
        """The indirect effect averaged over tasks (Todd et al.'s average indirect effect)."""
        return torch.stack([t.effect.mean for t in self.tasks]).mean(0)

    def top_heads(self, k: int | None = None) -> list[tuple[int, int]]:
        """The heads with the largest indirect effect averaged over tasks."""
        k = self.settings.k if k is None else k
        mean = self.mean_effect()
        order = torch.argsort(-mean.flatten(), stable=True)[:k].tolist()
        layers = self.tasks[0].effect.layers
        return [(layers[i // mean.shape[1]], i % mean.shape[1]) for i in order]

    def summary(self) -> dict[str, float]:
        """Mean accuracy per condition over tasks, and the function vector's share of ICL. (The
        chosen layers are per task in ``to_frame``: where no layer beats another on dev, the
        earliest is kept, so a mean depth would mislead.)"""
        frame = self.to_frame()
        means = {c: float(frame[c].mean()) for c in CONDITIONS}
        icl = means["icl"] or float("nan")
        return means | {"fv_add_over_icl": means["fv_add"] / icl}
