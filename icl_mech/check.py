"""``icl-mech check``: a report card for one model in a few minutes.

Each section is a small run of a reproduction through the reproduction's own code and headline
function; :mod:`icl_mech.verdicts` turns the headlines into verdicts with the rules that also
judge the committed full runs. The card holds the headlines (``report.json``), the verdicts
and the pictures (``report.html``, self-contained).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icl_mech import settings as base
from icl_mech import stats
from icl_mech import tasks as bundled
from icl_mech.icv.evaluate import STYLE_METRICS
from icl_mech.verdicts import Verdict, judge, table


@dataclass(frozen=True)
class CheckSettings(base.Settings):
    """ICL: ``icl_queries`` per task, 0-shot vs one demonstration per class. Label words: one
    task, ``anchor_queries`` prompts. Task vectors: ``tv_dev`` queries choose the layer,
    ``tv_test`` score it, per task. ICV: ``icv_test`` sources per λ."""

    QUICK = dict(
        icl_queries=12, anchor_queries=6, city_tasks=("city_language_json",),
        io_tasks=("antonym",), tv_dev=4, tv_test=6, icv_strengths=(0.06,), icv_test=3,
        max_new_tokens=8,
    )  # fmt: skip
    threads: int | None = None  # all cores: a check is interactive
    icl_tasks: tuple[str, ...] = ("sentiment", "topic")
    icl_queries: int = 48
    anchor_task: str = "sentiment"
    anchor_queries: int = 32
    city_tasks: tuple[str, ...] = ("city_language", "city_continent_json", "city_country_json")
    io_tasks: tuple[str, ...] = ("antonym", "english_french", "past_tense", "country_capital")
    tv_dev: int = 12
    tv_test: int = 20
    icv_pair_set: str = "negative_positive"
    icv_strengths: tuple[float, ...] = (0.04, 0.06)
    icv_test: int = 12
    max_new_tokens: int = 20

    def check(self) -> None:
        classification = bundled.names("classification")
        base.known(self, "icl_tasks", classification)
        base.one_of(self, "anchor_task", classification)
        base.one_of(self, "icv_pair_set", STYLE_METRICS)
        base.known(self, "city_tasks", bundled.names("city"))
        base.known(self, "io_tasks", bundled.names("io"))
        base.positive(self, "icl_queries", "anchor_queries", "tv_dev", "tv_test", "icv_test",
                      "max_new_tokens")  # fmt: skip


@dataclass
class ReportCard:
    """Verdicts with their evidence, the headlines behind them and the pictures."""

    model: str
    settings: CheckSettings
    headlines: dict[str, Any]
    verdicts: list[Verdict]
    figures: dict[str, Any] = field(default_factory=dict)  # title -> Figure or HTML string
    seconds: float = float("nan")

    def table(self) -> str:
        return table(self.verdicts)

    def record(self) -> dict:
        from dataclasses import asdict

        from icl_mech import __version__

        return {
            "model": self.model,
            "icl_mech": __version__,
            "seconds": round(self.seconds, 1),
            "settings": self.settings.as_dict(),
            "verdicts": [asdict(v) for v in self.verdicts],
            "headlines": self.headlines,
        }

    def html(self) -> str:
        from icl_mech.show.report_card import report_html

        return report_html(self)

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        answers = ", ".join(f"{v.method}: {v.answer}" for v in self.verdicts)
        return f"ReportCard({self.model!r}: {answers})"

    def write(self, out: str | Path) -> list[Path]:
        """``report.json`` (settings, headlines, verdicts) and ``report.html``."""
        from icl_mech.runner import writable_folder
        from icl_mech.vectors import dumps

        out = writable_folder(out)
        json_path, html_path = out / "report.json", out / "report.html"
        json_path.write_text(dumps(self.record(), indent=1) + "\n")
        html_path.write_text(self.html())
        return [json_path, html_path]


def check(model, settings: CheckSettings | None = None, progress: bool = True) -> ReportCard:
    """Run every section on ``model`` and judge it."""
    from icl_mech.models import torch_threads

    settings = settings or CheckSettings()
    start = time.perf_counter()
    headlines: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    with torch_threads(settings.threads):
        for section in (_icl, _anchors, _task_vectors, _icv):
            section(model, settings, progress, headlines, figures)
    verdicts = judge(headlines, settings.anchor_task, settings.icv_pair_set)
    card = ReportCard(model.cfg.model_name, settings, headlines, verdicts, figures)
    card.seconds = time.perf_counter() - start
    return card


def _icl(model, s: CheckSettings, progress, headlines, figures) -> None:
    from icl_mech.evaluation import icl_accuracy
    from icl_mech.plotting import accuracy_figure

    results, section = [], {"tasks": list(s.icl_tasks)}
    gains, strata = [], []
    for name in s.icl_tasks:
        task = bundled.load(name)
        zero, few = (icl_accuracy(model, task, shots, s.icl_queries, s.seed, progress=progress)
                     for shots in (0, 1))  # fmt: skip
        results += [zero, few]
        zero_correct = np.equal(zero.gold, zero.predicted).astype(float)
        few_correct = np.equal(few.gold, few.predicted).astype(float)
        gains.append(few_correct - zero_correct)
        strata += [name] * len(zero.gold)
        section[name] = _accuracies(
            zero_correct, few_correct, stats.paired(few_correct, zero_correct)
        )
    zero_all = np.concatenate([np.equal(r.gold, r.predicted) for r in results[0::2]])
    few_all = np.concatenate([np.equal(r.gold, r.predicted) for r in results[1::2]])
    section["all"] = _accuracies(zero_all, few_all, stats.stratified(np.concatenate(gains), strata),
                                 strata)  # fmt: skip
    headlines["icl"] = section
    figures["ICL accuracy: 0-shot vs one demonstration per class"] = accuracy_figure(
        results, model.cfg.model_name
    )


def _accuracies(zero, few, gain: stats.Estimate, strata=None) -> dict:
    def estimate(values):
        values = np.asarray(values, float)
        return stats.stratified(values, strata) if strata else stats.bootstrap(values)

    out = {"shots": 1, "n": int(len(zero))}
    for name, e in (("zero_shot", estimate(zero)), ("few_shot", estimate(few)), ("gain", gain)):
        out |= {name: round(e.value, 3), f"{name}_ci": [round(e.low, 3), round(e.high, 3)]}
    return out


def _anchors(model, s: CheckSettings, progress, headlines, figures) -> None:
    from icl_mech.anchors.experiment import AnalysisSettings, analyse_task
    from icl_mech.anchors.figures import flows_figure, loyalty_figure
    from icl_mech.anchors.reproduce import headline, token_pictures

    settings = AnalysisSettings(tasks=(s.anchor_task,), n_test=s.anchor_queries, n_seeds=1,
                                seed=s.seed)  # fmt: skip
    analysis = analyse_task(model, bundled.load(s.anchor_task), s.anchor_queries, [s.seed],
                            settings, progress=progress)  # fmt: skip
    headlines["anchors"] = {s.anchor_task: headline(analysis)}
    figures["Label words: information flows per layer"] = flows_figure([analysis.flows])
    figures["Label words: loyalty under isolation"] = loyalty_figure([analysis.loyalty])
    for part, picture in token_pictures(model, settings).items():
        figures[f"Label words: saliency over the tokens ({part.split('_')[-1]} layers)"] = picture


def _task_vectors(model, s: CheckSettings, progress, headlines, figures) -> None:
    from icl_mech.task_vectors.evaluate import evaluate
    from icl_mech.task_vectors.figures import accuracy_bars
    from icl_mech.task_vectors.reproduce import headline
    from icl_mech.task_vectors.settings import Settings

    names = (*s.city_tasks, *s.io_tasks)
    settings = Settings(tasks=names, pairs=(), n_dev=s.tv_dev, n_test=s.tv_test, seed=s.seed,
                        max_new_tokens=4, test_curves=False)  # fmt: skip
    results = evaluate(model, [bundled.load(n) for n in names], settings, progress)
    headlines["task-vectors"] = headline(results, [])
    figures["Task vectors: accuracy per task"] = accuracy_bars(results)


def _icv(model, s: CheckSettings, progress, headlines, figures) -> None:
    import pandas as pd

    from icl_mech.icv.evaluate import evaluate
    from icl_mech.icv.figures import sweep_figure
    from icl_mech.icv.reproduce import headline

    evaluations = evaluate(model, (s.icv_pair_set,), s.icv_strengths, n_demonstrations=16,
                           n_test=s.icv_test, max_new_tokens=s.max_new_tokens, seed=s.seed,
                           progress=progress)  # fmt: skip
    summary = pd.concat([e.to_frame() for e in evaluations.values()], ignore_index=True)
    headlines["icv"] = headline(summary)
    figures["ICV: style, content and fluency per λ"] = sweep_figure(evaluations)
