"""Results of the task-vector protocol: per task (``TaskResult``) and over tasks
(``TaskVectorResults``), each accuracy with its bootstrap interval over test queries and the
paired differences between conditions (``CONTRASTS``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from icl_mech import display
from icl_mech.per_task import OverTasks, TaskHits
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
class TaskResult(TaskHits):
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
class TaskVectorResults(OverTasks):
    conditions = CONDITIONS
    contrasts = CONTRASTS

    """The table over tasks."""

    tasks: list[TaskResult]
    settings: Settings

    def __repr__(self) -> str:
        names = [t.task for t in self.tasks]
        shown = names if len(names) <= 4 else names[:3] + ["..."]
        return (
            f"TaskVectorResults({len(names)} tasks: {', '.join(shown)}; "
            f"n_test={self.settings.n_test})"
        )

    def _repr_html_(self) -> str:
        """First-token accuracy per task and condition, and the mean over tasks, with 95%
        intervals over test queries; the bars of ``accuracy_bars``."""
        return display.html(self)

    def to_frame(self) -> pd.DataFrame:
        return pd.concat([t.to_frame() for t in self.tasks], ignore_index=True)

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
