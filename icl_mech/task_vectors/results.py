"""Results of the task-vector protocol: per task (``TaskResult``) and over tasks
(``TaskVectorResults``), each accuracy with its bootstrap interval over test queries and the
paired differences between conditions (``CONTRASTS``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icl_mech import stats
from icl_mech.task_vectors.settings import Settings
from icl_mech.task_vectors.sweep import LayerSweep
from icl_mech.task_vectors.vector import TaskVector

CONDITIONS = ("baseline", "icl", "tv_replace", "tv_add")
# paired differences over the same test queries: (name, condition, minus condition)
CONTRASTS = (
    ("tv_replace - baseline", "tv_replace", "baseline"),
    ("tv_add - baseline", "tv_add", "baseline"),
    ("tv_replace - icl", "tv_replace", "icl"),
    ("tv_add - icl", "tv_add", "icl"),
    ("icl - baseline", "icl", "baseline"),
)


@dataclass
class TaskResult:
    task: str
    n_layers: int
    n_dev: int
    n_test: int
    layer_replace: int
    layer_add: int
    accuracy: dict[str, float]  # first token, per condition
    exact: dict[str, float]  # full greedy answer, per condition
    curves: list[LayerSweep]
    answers: pd.DataFrame  # per test query: gold and each condition's greedy answer
    mean_difference: TaskVector = field(repr=False)
    dev_baseline: float = float("nan")  # zero-shot first-token accuracy on dev
    correct: dict[str, list[bool]] = field(default_factory=dict, repr=False)  # per test query

    def curve(self, mode: str, split: str = "test") -> LayerSweep:
        return next(c for c in self.curves if c.mode == mode and c.split == split)

    def estimate(self, condition: str) -> stats.Estimate:
        """First-token accuracy of a condition with a 95% bootstrap interval over the test
        queries (each query is one unit)."""
        return stats.bootstrap(np.asarray(self.correct[condition], dtype=float))

    def difference(self, condition: str, minus: str) -> stats.Estimate:
        """Paired accuracy difference ``condition - minus`` over the same test queries."""
        return stats.paired(
            np.asarray(self.correct[condition], float), np.asarray(self.correct[minus], float)
        )

    def to_frame(self) -> pd.DataFrame:
        intervals = {}
        if self.correct:
            for c in CONDITIONS:
                estimate = self.estimate(c)
                intervals |= {f"{c}_low": estimate.low, f"{c}_high": estimate.high}
        row = {
            "task": self.task,
            "n_test": self.n_test,
            **self.accuracy,
            **intervals,
            "layer_replace": self.layer_replace,
            "depth_replace": (self.layer_replace + 1) / self.n_layers,
            "dev_baseline": self.dev_baseline,
            "dev_tv_replace": self.curve("replace", "dev").at(self.layer_replace),
            "layer_add": self.layer_add,
            "depth_add": (self.layer_add + 1) / self.n_layers,
            "dev_tv_add": self.curve("add", "dev").at(self.layer_add),
            **{f"exact_{k}": v for k, v in self.exact.items()},
        }
        return pd.DataFrame([row])


@dataclass
class TaskVectorResults:
    """The table over tasks."""

    tasks: list[TaskResult]
    protocol: Settings

    def to_frame(self) -> pd.DataFrame:
        return pd.concat([t.to_frame() for t in self.tasks], ignore_index=True)

    def intervals(self, tasks: Sequence[str] | None = None) -> dict[str, stats.Estimate]:
        """Per condition the mean accuracy over tasks, and per contrast (``CONTRASTS``) the mean
        paired difference, with 95% stratified bootstrap intervals: test queries are resampled
        within each task, the tasks are fixed (``stats.stratified``); ``n`` counts queries."""
        chosen = [t for t in self.tasks if tasks is None or t.task in list(tasks)]
        if not chosen:
            return {}
        strata = [t.task for t in chosen for _ in t.correct[CONDITIONS[0]]]

        def pooled(condition):
            return np.concatenate([np.asarray(t.correct[condition], float) for t in chosen])

        out = {c: stats.stratified(pooled(c), strata) for c in CONDITIONS}
        for name, a, b in CONTRASTS:
            out[name] = stats.stratified(pooled(a) - pooled(b), strata)
        return out

    def effects_frame(self) -> pd.DataFrame:
        """Paired differences of accuracy (``CONTRASTS``) per task and their mean over tasks,
        each with a 95% bootstrap interval and the formatted ``effect`` column."""
        rows = [
            {"task": t.task, "contrast": name} | t.difference(a, b).as_dict("difference")
            for t in self.tasks
            for name, a, b in CONTRASTS
        ]
        means = self.intervals()
        rows += [
            {"task": "mean", "contrast": name} | means[name].as_dict("difference")
            for name, _, _ in CONTRASTS
        ]
        out = pd.DataFrame(rows)
        out["effect"] = stats.with_intervals(out, "difference")
        return out

    def accuracy_frame(self) -> pd.DataFrame:
        """Per task and the mean over tasks: each condition as ``"0.60 [0.52, 0.68]"``."""
        rows = [
            {"task": t.task, "n": t.n_test} | {c: str(t.estimate(c)) for c in CONDITIONS}
            for t in self.tasks
        ]
        means = self.intervals()
        n = sum(t.n_test for t in self.tasks)
        rows.append({"task": "mean", "n": n} | {c: str(means[c]) for c in CONDITIONS})
        return pd.DataFrame(rows)

    def curves_frame(self) -> pd.DataFrame:
        return pd.concat([c.to_frame() for t in self.tasks for c in t.curves], ignore_index=True)

    def summary(self, tasks: Sequence[str] | None = None) -> dict[str, float]:
        """Means over tasks (all, or the named ones). The depths average only the tasks where
        the vector beats zero-shot on dev at its chosen layer (elsewhere no layer works and the
        choice is a tie-break)."""
        frame = self.to_frame()
        if tasks is not None:
            frame = frame[frame["task"].isin(list(tasks))]
        means = {k: float(frame[k].mean()) for k in CONDITIONS}
        icl = means["icl"] or float("nan")
        return {
            **means,
            "tv_replace_over_icl": means["tv_replace"] / icl,
            "tv_add_over_icl": means["tv_add"] / icl,
            "depth_replace": _mean_where(frame, "depth_replace", "dev_tv_replace"),
            "depth_add": _mean_where(frame, "depth_add", "dev_tv_add"),
        }


def _mean_where(frame: pd.DataFrame, column: str, dev_accuracy: str) -> float:
    working = frame[frame[dev_accuracy] > frame["dev_baseline"]]
    return float(working[column].mean()) if len(working) else float("nan")
