"""The anchors analysis (flows, isolation loyalty, AUC-ROC_l and R_l) over tasks, in the one
evaluation signature of every method: ``evaluate(model, tasks, settings)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm import tqdm

from icl_mech.anchors.experiment import AnalysisSettings, TaskAnalysis, analyse_task
from icl_mech.prompts import Task
from icl_mech.tasks import resolve

DEFAULT_SETTINGS = AnalysisSettings()


@dataclass
class AnchorResults:
    """One ``TaskAnalysis`` per task, with the settings that made them."""

    analyses: list[TaskAnalysis]
    settings: AnalysisSettings

    def __iter__(self):
        return iter(self.analyses)

    def __len__(self) -> int:
        return len(self.analyses)

    def to_frame(self) -> pd.DataFrame:
        """Per task and layer: mean flows (normalised), AUC-ROC_l and R_l."""
        frames = [a.to_frame().assign(task=a.task) for a in self.analyses]
        frame = pd.concat(frames, ignore_index=True)
        return frame[["task", *(c for c in frame.columns if c != "task")]]

    def summary(self) -> pd.DataFrame:
        """Per task: accuracy with its 95% bootstrap interval over queries, and n."""
        rows = []
        for a in self.analyses:
            estimate = a.accuracy_estimate()
            rows.append({"task": a.task, **estimate.as_dict("accuracy")})
        return pd.DataFrame(rows)


def evaluate(
    model,
    tasks: Sequence[str | Task] | None = None,
    settings: AnalysisSettings = DEFAULT_SETTINGS,
    progress: bool = True,
) -> AnchorResults:
    """``analyse_task`` on each task (names, ``Task`` objects or task files; default: the
    settings' tasks) with ``settings.n_test`` queries per seed of ``settings.seeds``."""
    chosen = [resolve(t) for t in (settings.tasks if tasks is None else tasks)]
    analyses = [
        analyse_task(model, task, settings.n_test, settings.seeds, settings, progress=progress)
        for task in tqdm(chosen, desc="anchors", disable=not progress, leave=False)
    ]
    return AnchorResults(analyses, settings)
