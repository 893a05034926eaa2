"""Accuracy per test query, per task and over tasks, with intervals: shared by the task-vector
and function-vector results (same splits, same conditions-and-contrasts shape)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd

from icl_mech import stats


class TaskHits:
    """One task's hits per condition and test query (``correct``), with intervals."""

    correct: dict[str, list[bool]]

    def estimate(self, condition: str) -> stats.Estimate:
        """First-token accuracy with a 95% bootstrap interval over the test queries (each query
        is one unit)."""
        return stats.bootstrap(np.asarray(self.correct[condition], dtype=float))

    def difference(self, condition: str, minus: str) -> stats.Estimate:
        """Paired accuracy difference ``condition - minus`` over the same test queries."""
        return stats.paired(
            np.asarray(self.correct[condition], float), np.asarray(self.correct[minus], float)
        )


class OverTasks:
    """Results of several tasks (``tasks``, each a ``TaskHits`` with a ``task`` name): means
    over tasks of the class's ``conditions`` and paired ``contrasts`` (name, a, b)."""

    tasks: list
    conditions: ClassVar[tuple[str, ...]]
    contrasts: ClassVar[tuple[tuple[str, str, str], ...]]

    def intervals(self, tasks: Sequence[str] | None = None) -> dict[str, stats.Estimate]:
        """Per condition the mean accuracy over tasks (all, or the named ones), and per contrast
        the mean paired difference, with 95% stratified bootstrap intervals: test queries are
        resampled within each task, the tasks are fixed (``stats.stratified``)."""
        chosen = [t for t in self.tasks if tasks is None or t.task in list(tasks)]
        if not chosen:
            return {}
        strata = [t.task for t in chosen for _ in t.correct[self.conditions[0]]]

        def pooled(condition):
            return np.concatenate([np.asarray(t.correct[condition], float) for t in chosen])

        out = {c: stats.stratified(pooled(c), strata) for c in self.conditions}
        for name, a, b in self.contrasts:
            out[name] = stats.stratified(pooled(a) - pooled(b), strata)
        return out

    def estimates_frame(self) -> pd.DataFrame:
        """Accuracy per task and condition, then the mean over tasks (task ``"mean"``), each
        with its 95% interval: columns task, condition, accuracy, accuracy_low, accuracy_high,
        n (long; tasks and conditions in their order)."""
        means = self.intervals()
        rows = [
            {"task": t.task, "condition": c} | t.estimate(c).as_dict("accuracy")
            for t in self.tasks
            for c in self.conditions
        ]
        rows += [{"task": "mean", "condition": c} | means[c].as_dict("accuracy")
                 for c in self.conditions]  # fmt: skip
        return pd.DataFrame(rows)

    def effects_frame(self) -> pd.DataFrame:
        """Paired differences of accuracy (``contrasts``) per task and their mean over tasks,
        each with a 95% bootstrap interval and the formatted ``effect`` column."""
        rows = [
            {"task": t.task, "contrast": name} | t.difference(a, b).as_dict("difference")
            for t in self.tasks
            for name, a, b in self.contrasts
        ]
        means = self.intervals()
        rows += [
            {"task": "mean", "contrast": name} | means[name].as_dict("difference")
            for name, _, _ in self.contrasts
        ]
        out = pd.DataFrame(rows)
        out["effect"] = stats.with_intervals(out, "difference")
        return out
