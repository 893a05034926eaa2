"""The atlas's results: per task the test hits of every condition, the chosen layers, the dev
curves, the costs, the vectors' geometry and logit lens; tidy frames with intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from torch import Tensor

from icl_mech import stats
from icl_mech.task_vectors.sweep import LayerSweep
from icl_mech.vector_atlas.geometry import cosines

CONDITIONS = ("zero_shot", "icl", "icl_i2cl_demos", "task_vector", "mean_difference",
              "function_vector", "state_inner", "state_momentum", "icv", "i2cl")  # fmt: skip
VECTORS = CONDITIONS[3:]
WORKS = 0.5  # a vector "works" where it recovers at least half of ICL's gain over zero-shot


@dataclass
class Used:
    """How a condition ran on test: its prompts and either vectors patched at a layer
    (``[layer, d_model]`` shared, or ``[query, layer, d_model]``; ``mode`` replace or add) or
    registry items attached as they are."""

    prompts: list = field(repr=False)
    vectors: Tensor | None = field(default=None, repr=False)
    mode: str | None = None
    layer: int | None = None
    items: list = field(default_factory=list, repr=False)


@dataclass
class AtlasTask:
    task: str
    kind: str  # "io" or "classification"
    n_layers: int
    n_dev: int
    n_test: int
    layers: dict[str, int]  # condition -> layer chosen on dev
    icv_strength: float  # chosen on dev
    correct: dict[str, list[bool]]  # condition -> per test query
    curves: list[LayerSweep]
    costs: list[dict]
    vectors: dict[str, Tensor] = field(repr=False)  # name -> [layer, d_model]
    lens: pd.DataFrame = field(repr=False)
    calibration_losses: list[float] = field(default_factory=list)
    used: dict[str, Used] = field(default_factory=dict, repr=False)
    extracted: dict = field(default_factory=dict, repr=False)  # the task-level vector objects

    def estimate(self, condition: str) -> stats.Estimate:
        return stats.bootstrap([float(c) for c in self.correct[condition]])


@dataclass
class AtlasResults:
    tasks: list[AtlasTask]
    settings: object

    def conditions(self) -> list[str]:
        seen = dict.fromkeys(c for t in self.tasks for c in t.correct)
        return list(dict.fromkeys(c for c in (*CONDITIONS, *seen) if c in seen))

    def correct_frame(self) -> pd.DataFrame:
        """One row per task, condition and test query."""
        rows = [{"task": t.task, "kind": t.kind, "condition": c, "query": i, "correct": hit}
                for t in self.tasks for c, hits in t.correct.items()
                for i, hit in enumerate(hits)]  # fmt: skip
        return pd.DataFrame(rows)

    def accuracy_frame(self) -> pd.DataFrame:
        """Per task and condition: accuracy with its 95% bootstrap interval, n, the layer."""
        rows = []
        for t in self.tasks:
            for condition in t.correct:
                row = {"task": t.task, "kind": t.kind, "condition": condition}
                estimate = t.estimate(condition)
                row |= estimate.as_dict("accuracy") | {"accuracy_ci": estimate.format(2)}
                row["layer"] = t.layers.get(condition)
                rows.append(row)
        return pd.DataFrame(rows)

    def summary_frame(self) -> pd.DataFrame:
        """Per task kind and condition: the mean over tasks with a stratified interval (queries
        resampled within tasks), and the paired difference from zero-shot."""
        frame, rows = self.correct_frame(), []
        for kind, part in frame.groupby("kind", sort=False):
            zero = part[part.condition == "zero_shot"].sort_values(["task", "query"])
            for condition in [c for c in self.conditions() if c in set(part.condition)]:
                these = part[part.condition == condition].sort_values(["task", "query"])
                row = {"kind": kind, "condition": condition, "n_tasks": these.task.nunique()}
                accuracy = stats.stratified(these.correct, these.task)
                row |= accuracy.as_dict("accuracy") | {"accuracy_ci": accuracy.format(2)}
                if len(zero) == len(these) and not condition.endswith(":labels"):
                    gain = these.correct.to_numpy(float) - zero.correct.to_numpy(float)
                    estimate = stats.stratified(gain, these.task)
                    row |= _prefixed(estimate.as_dict("gain")) | {"gain_ci": estimate.format(2)}
                rows.append(row)
        return pd.DataFrame(rows)

    def works_frame(self) -> pd.DataFrame:
        """Which vector works where: per task kind and vector, the share of ICL's gain over
        zero-shot it recovers (mean over tasks), and whether its gain's interval excludes 0."""
        summary = self.summary_frame().set_index(["kind", "condition"])
        rows = []
        for kind in summary.index.get_level_values(0).unique():
            icl = summary.loc[(kind, "icl"), "gain"]
            for vector in VECTORS:
                if (kind, vector) not in summary.index:
                    continue
                row = summary.loc[(kind, vector)]
                share = row["gain"] / icl if icl > 0 else float("nan")
                rows.append({"kind": kind, "vector": vector, "accuracy": row["accuracy"],
                             "gain": row["gain"], "gain_low": row["gain_low"],
                             "gain_high": row["gain_high"], "gain_ci": row["gain_ci"],
                             "share_of_icl_gain": share,
                             "works": bool(row["gain_low"] > 0 and share >= WORKS)})  # fmt: skip
        return pd.DataFrame(rows)

    def costs_frame(self) -> pd.DataFrame:
        rows = [{"task": t.task, "kind": t.kind} | row for t in self.tasks for row in t.costs]
        return pd.DataFrame(rows)

    def cosine_frame(self) -> pd.DataFrame:
        parts = []
        for t in self.tasks:
            part = cosines(t.vectors)
            part.insert(0, "kind", t.kind)
            part.insert(0, "task", t.task)
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    def lens_frame(self) -> pd.DataFrame:
        parts = [t.lens.assign(task=t.task, kind=t.kind) for t in self.tasks]
        return pd.concat(parts, ignore_index=True)

    def curves_frame(self) -> pd.DataFrame:
        return pd.concat([c.to_frame() for t in self.tasks for c in t.curves], ignore_index=True)

    def calibration_frame(self) -> pd.DataFrame:
        rows = [{"task": t.task, "epoch": e + 1, "loss": loss}
                for t in self.tasks for e, loss in enumerate(t.calibration_losses)]  # fmt: skip
        return pd.DataFrame(rows)

    def vectors_at(self, task: str) -> dict[str, Tensor]:
        (found,) = [t for t in self.tasks if t.task == task]
        return {name: v.clone() for name, v in found.vectors.items()}

    def mean_cosines(self) -> pd.DataFrame:
        """Per task kind, pair and layer: the cosine averaged over tasks."""
        frame = self.cosine_frame()
        return frame.groupby(["kind", "a", "b", "layer"], as_index=False, sort=False).cosine.mean()


def _prefixed(values: dict) -> dict:
    return {key: value for key, value in values.items() if key != "n"}
