"""Reproduce "Label words are anchors" (Wang et al., EMNLP 2023) through the runner.

- ``anchors``: per task, saliency flows per layer (Fig. 3), label and word loyalty under
  shallow / deep isolation of label words or random words (Fig. 4), AUC-ROC_l and R_l (Fig. 5);
- ``anchor-applications``: anchor re-weighting (Table 1), context compression (Table 2),
  speed-up (Table 3) and the anchor-distance diagnosis (Fig. 6).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from icl_mech import settings as base
from icl_mech import stats
from icl_mech import tasks as bundled
from icl_mech.errors import IclMechError
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Task
from icl_mech.report import Report, flatten
from icl_mech.show.saliency import layer_range, saliency_figure

from . import app_figures
from .compression_experiment import (
    METRICS,
    SHOWN,
    compression_experiment,
    one_demonstration_each,
    time_per_query,
)
from .diagnosis import diagnose
from .evaluate import evaluate
from .experiment import AnalysisSettings, TaskAnalysis, task_prompts
from .figures import auc_figure, flows_figure, loyalty_figure
from .readout import Anchors, check_anchors
from .reweighting_experiment import ALL_TASKS, CONDITIONS, GAIN, reweighting_experiment
from .saliency import saliency


def compute_analysis(model, settings: AnalysisSettings, progress: bool = True) -> Report:
    analyses = evaluate(model, settings.tasks, settings, progress=progress).analyses
    summary = [{"task": a.task, **flatten(headline(a), sep="_")} for a in analyses]
    return Report(
        "anchors",
        settings,
        tables={
            "flows": pd.concat([a.flows.summary() for a in analyses]),
            "loyalty": pd.concat([a.loyalty.summary() for a in analyses]),
            "isolation_effect": pd.concat([a.loyalty.effects() for a in analyses]),
            "layers": pd.concat([a.to_frame() for a in analyses]),
            "summary": pd.DataFrame(summary),
        },
        figures={
            "flows": flows_figure([a.flows for a in analyses]),
            "flows_raw": flows_figure([a.flows for a in analyses], normalised=False),
            "loyalty": loyalty_figure([a.loyalty for a in analyses]),
            "auc": auc_figure([a.auc for a in analyses]),
            **token_pictures(model, settings),
        },
        headline={a.task: headline(a) for a in analyses},
    )


def token_pictures(model, settings: AnalysisSettings) -> dict:
    """The first task's first query: saliency edges over its tokens, shallow and deep layers."""
    prompts = task_prompts(bundled.resolve(settings.tasks[0]), settings.n_test, settings.seed)
    batch = PromptBatch.from_prompts(model, prompts[:1])
    result = saliency(model, batch, target=settings.target)
    return {
        f"saliency_tokens_{part}": saliency_figure(result, batch, 0, layer_range(result, part))
        for part in ("shallow", "deep")
    }


def headline(analysis: TaskAnalysis) -> dict:
    """Where each flow dominates, loyalty per condition, where AUC-ROC_l rises. Every
    accuracy, loyalty and AUC comes with ``*_ci``: its 95% bootstrap interval over queries (a
    query drawn under several seeds is one unit); ``isolation_effect``: shallow minus deep
    isolation of the label words, a paired interval over the same queries; ``S_wp_lead``: per
    layer, S_wp minus S_pq in the renormalised view (shares of the layer's flow), paired."""
    layers = analysis.flows.layers
    shares = analysis.flows.normalised().double().numpy()
    differences = shares[..., 0] - shares[..., 1]
    lead, low, high, _ = stats.bootstrap_columns(differences, analysis.flows.units())
    dominant = analysis.flows.dominant()
    auc, ratio = analysis.auc.auc(), analysis.auc.ratio()
    resampled = analysis.auc.resampled_auc()
    peak = int(auc.nan_to_num(0).argmax())
    half = len(layers) // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers of a resample
        first_half = np.nanmean(resampled[:, :half], 1)
        second_half = np.nanmean(resampled[:, half:], 1)
    n = len(set(analysis.units()))
    auc_peak = stats.from_resamples(float(auc.nan_to_num(0).max()), resampled[:, peak], n)
    first = stats.from_resamples(float(auc[:half].nanmean()), first_half, n)
    second = stats.from_resamples(float(auc[half:].nanmean()), second_half, n)
    return {
        "n": len(analysis.correct),
        "n_queries": n,
        **_rounded("accuracy", analysis.accuracy_estimate()),
        "S_wp_dominant_layers": _ranges([ly for ly, d in zip(layers, dominant) if d == "S_wp"]),
        "S_pq_dominant_layers": _ranges([ly for ly, d in zip(layers, dominant) if d == "S_pq"]),
        "S_pq_dominant_from": _dominant_from(layers, dominant),
        "flow_layers": list(layers),
        "S_wp_lead": [round(float(v), 3) for v in lead],
        "S_wp_lead_ci": [[round(float(a), 3), round(float(b), 3)] for a, b in zip(low, high)],
        "loyalty": {
            f"{depth}_{words}": {
                **_rounded("label", analysis.loyalty.estimate(depth, words, "label")),
                **_rounded("word", analysis.loyalty.estimate(depth, words, "word")),
            }
            for depth, words in analysis.loyalty.conditions
        },
        "isolation_effect": {
            f"{metric}_loyalty_shallow_minus_deep": _rounded_pair(
                analysis.loyalty.effect(metric, "label")
            )
            for metric in ("label", "word")
        },
        "auc_peak_layer": layers[peak],
        **_rounded("auc_peak", auc_peak),
        **_rounded("auc_mean_first_half", first),
        **_rounded("auc_mean_second_half", second),
        "R_half_layer": next((ly for ly, r in zip(layers, ratio.tolist()) if r >= 0.5), None),
    }


def _rounded(name: str, estimate, digits: int = 3) -> dict:
    """``{name: value, name_ci: [low, high]}``, rounded."""
    return {
        name: round(estimate.value, digits),
        f"{name}_ci": [round(estimate.low, digits), round(estimate.high, digits)],
    }


def _rounded_pair(estimate, digits: int = 3) -> dict:
    return _rounded("value", estimate, digits)


def _dominant_from(layers: list[int], dominant: list[str]) -> int | None:
    """First layer from which S_pq exceeds S_wp in every later layer."""
    start = None
    for layer, which in zip(layers, dominant):
        if which == "S_pq" and start is None:
            start = layer
        elif which == "S_wp":
            start = None
    return start


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts, run_start = [], None
    for i, layer in enumerate(layers):
        if run_start is None:
            run_start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(f"{run_start}" if run_start == layer else f"{run_start}-{layer}")
            run_start = None
    return ", ".join(parts) or "none"


@dataclass(frozen=True)
class ApplicationSettings(base.Settings):
    """Tables 1-3 and the diagnosis. Re-weighting trains beta (Adam, ``lr``, ``epochs``,
    ``batch_size``) on ``aux_per_class`` auxiliary examples per class; compression averages
    ``n_draws`` random draws and picks Hidden_random-top's on ``n_select`` held-out queries;
    timing takes the median of ``rounds`` over ``timing_queries``."""

    QUICK = dict(
        tasks=("sentiment",), n_test=16, n_seeds=1, epochs=2, n_draws=2, n_select=16,
        timing_queries=3, rounds=1, diagnosis_tasks=("question_type",), diagnosis_n_test=24,
        scan=False,
    )  # fmt: skip
    tasks: tuple[str | Task, ...] = tuple(bundled.names("classification"))  # or files, Tasks
    n_test: int = 64
    n_seeds: int = 2
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 4
    aux_per_class: int = 4
    anchors: Anchors = "all"
    n_draws: int = 10
    n_select: int = 64  # held-out queries that choose Hidden_random-top's draw
    timing_queries: int = 8
    rounds: int = 3
    diagnosis_tasks: tuple[str | Task, ...] = ("question_type", "topic", "emotion")
    diagnosis_n_test: int = 120
    scan: bool = True  # correlation of every single layer's keys, in the diagnosis figure

    def check(self) -> None:
        where = base.where(self)
        for name in ("tasks", "diagnosis_tasks"):
            self._set(name, bundled.checked(getattr(self, name), where, name, "classification"))
        base.positive(self, "n_test", "n_seeds", "batch_size", "aux_per_class", "n_draws",
                        "n_select", "timing_queries", "rounds", "diagnosis_n_test")  # fmt: skip
        for item in self.tasks:
            bundled.check_queries(bundled.resolve(item), self.n_test, self.seeds, where,
                                  "n_test", per_class=1 + self.aux_per_class)  # fmt: skip
        for item in self.diagnosis_tasks:
            bundled.check_queries(bundled.resolve(item), self.diagnosis_n_test, [self.seed],
                                  where, "diagnosis_n_test")  # fmt: skip
        base.positive(self, "epochs", allow_zero=True)
        check_anchors(self.anchors)
        if not self.lr > 0:
            raise IclMechError(f"anchor-applications settings: lr must be > 0, got {self.lr}")

    @property
    def seeds(self) -> list[int]:
        return base.consecutive_seeds(self, self.n_seeds)


def compute_applications(model, settings: ApplicationSettings, progress: bool = True) -> Report:
    s = settings
    task_list = [bundled.resolve(item) for item in s.tasks]
    training = dict(epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, anchors=s.anchors)
    table1 = reweighting_experiment(model, task_list, s.n_test, s.seeds, progress=progress,
                                    aux_per_class=s.aux_per_class, **training)  # fmt: skip
    table2 = compression_experiment(model, task_list, s.n_test, s.seeds, n_draws=s.n_draws,
                                    n_select=s.n_select, progress=progress)  # fmt: skip
    steps = tqdm(task_list, desc="timing", disable=not progress, leave=False)
    table3 = pd.DataFrame([_speedups(model, task, s) for task in steps]).set_index("task")
    diagnoses = []
    for item in s.diagnosis_tasks:
        task = bundled.resolve(item)
        pool, test = task.split(s.diagnosis_n_test, s.seed)
        demonstrations = pool.sample_demonstrations(1, random.Random(s.seed))
        diagnoses.append(diagnose(model, task, demonstrations, list(test.examples), scan=s.scan))
    return Report(
        "anchor-applications",
        settings,
        tables={
            "table1_reweighting": table1.table(),
            "table2_compression": table2.table(),
            "table2_compression_by_task": table2.table(by_task=True),
            "table3_speedup": table3.round(4),
            "diagnosis": pd.concat([d.to_frame() for d in diagnoses]),
        },
        figures={
            "reweighting": app_figures.reweighting_figure(table1),
            "compression": app_figures.compression_figure(table2),
            "speedup": app_figures.speedup_figure(table3),
            "diagnosis": app_figures.diagnosis_figure(diagnoses),
        },
        headline=_application_headline(table1, table2, table3, diagnoses),
    )


SPEED = ("full_seconds", "anchor_seconds", "speedup")


def _speedups(model, task, settings: ApplicationSettings) -> dict:
    """Table 3 row: time per query with logits at q, and with logits at every token."""
    prompts = one_demonstration_each(task, settings.timing_queries, settings.seed)
    at_q = time_per_query(model, prompts, settings.rounds)
    every = time_per_query(model, prompts, settings.rounds, every_position=True)
    return {"task": task.name} | at_q | {f"{k}_every_position": every[k] for k in SPEED}


def _application_headline(table1, table2, table3: pd.DataFrame, diagnoses) -> dict:
    """Accuracies, gains and loyalties in % as "value [95% interval]" (the tables' strings)."""
    rows = table1.table()
    overall = rows.loc[ALL_TASKS]
    out = {f"table1 {c}": overall[c] for c in CONDITIONS}
    out["table1 gain"] = overall[GAIN]
    out["table1 gain per task"] = {t: rows.loc[t, GAIN] for t in rows.index if t != ALL_TASKS}
    compressed = table2.table()
    out["table2"] = {
        method: {"kept": float(compressed.loc[method, "kept"])}
        | {metric: compressed.loc[method, SHOWN[metric]] for metric in METRICS}
        for method in compressed.index
    }
    out["table3 speed-up"] = {t: round(float(v), 2) for t, v in table3["speedup"].items()}
    for d in diagnoses:
        out[f"diagnosis {d.task}"] = {
            "correlation": round(d.correlation, 3),
            "most confused (actual)": "/".join(d.most_confused("actual")),
            "most confused (predicted)": "/".join(d.most_confused("predicted")),
        }
    return out
