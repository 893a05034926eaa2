"""``icl-mech check``: a report card for one model in a few minutes.

Each section is a small run of a reproduction through the reproduction's own code and headline
function; :mod:`icl_mech.verdicts` turns the headlines into verdicts with the rules that also
judge the committed full runs. The card holds the headlines (``report.json``), the verdicts
and the pictures (``report.html``, self-contained).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icl_mech import scoring, stats
from icl_mech import settings as base
from icl_mech import tasks as bundled
from icl_mech.anchors.experiment import AnalysisSettings, analyse_task
from icl_mech.anchors.figures import flows_figure, loyalty_figure
from icl_mech.anchors.reproduce import headline as anchor_headline
from icl_mech.anchors.reproduce import token_pictures
from icl_mech.atomic_output import publish, seal, staging
from icl_mech.errors import IclMechError, unknown
from icl_mech.evaluation import icl_accuracy
from icl_mech.icv.evaluate import evaluate as evaluate_icv
from icl_mech.icv.figures import sweep_figure
from icl_mech.icv.reproduce import headline as icv_headline
from icl_mech.icv.settings import STYLE_METRICS
from icl_mech.icv.settings import Settings as IcvSettings
from icl_mech.plotting import accuracy_figure
from icl_mech.prompts import Task
from icl_mech.report import writable_folder
from icl_mech.show.report_card import report_html
from icl_mech.task_vectors import plan
from icl_mech.task_vectors.evaluate import evaluate as evaluate_task_vectors
from icl_mech.task_vectors.figures import accuracy_bars
from icl_mech.task_vectors.reproduce import headline as task_vector_headline
from icl_mech.task_vectors.settings import Settings as TaskVectorSettings
from icl_mech.threads import run_threads
from icl_mech.verdicts import Verdict, judge, table
from icl_mech.version import __version__

TV_SIZES = {"n_test": "tv_n_test", "n_dev": "tv_n_dev"}  # task-vector sizes the card sets


@dataclass(frozen=True)
class CheckSettings(base.Settings):
    """ICL: ``icl_n_test`` per task, 0-shot vs one demonstration per class. Label words: one
    task, ``anchor_n_test`` prompts. Task vectors: ``tv_n_dev`` queries choose the layer,
    ``tv_n_test`` score it, per task; the default task sets are fixed here, before any result:
    every bundled city task and four input->output tasks. ICV: ``icv_n_demonstrations`` pairs
    make the vector and the ICL prompt, ``icv_n_dev`` sources choose λ, ``icv_n_test`` other
    sources confirm it."""

    QUICK = dict(
        icl_n_test=12, anchor_n_test=6, city_tasks=("city_language_json",),
        io_tasks=("antonym",), tv_n_dev=4, tv_n_test=6, icv_strengths=(0.06,), icv_n_test=3,
        icv_n_dev=3, max_new_tokens=8,
    )  # fmt: skip
    icl_tasks: tuple[str | Task, ...] = ("sentiment", "topic")  # names, task files or Tasks
    icl_n_test: int = 48
    anchor_task: str | Task = "sentiment"
    anchor_n_test: int = 32
    city_tasks: tuple[str | Task, ...] = tuple(bundled.names("city"))
    io_tasks: tuple[str | Task, ...] = ("antonym", "english_french", "past_tense",
                                        "country_capital")  # fmt: skip
    tv_n_dev: int = 12
    tv_n_test: int = 20
    icv_pair_set: str = "negative_positive"
    icv_strengths: tuple[float, ...] = (0.04, 0.06)
    icv_n_demonstrations: int = 16
    icv_n_test: int = 12
    icv_n_dev: int = 12
    max_new_tokens: int = 20

    def check(self) -> None:
        where = base.where(self)
        for name, need in (("icl_tasks", "classification"), ("city_tasks", "io"),
                           ("io_tasks", "io"), ("anchor_task", "classification")):  # fmt: skip
            empty_ok = name in ("city_tasks", "io_tasks") and bool(self.city_tasks + self.io_tasks)
            items = bundled.checked(getattr(self, name), where, name, need, empty_ok)
            self._set(name, items[0] if name == "anchor_task" else items)
        if self.icv_pair_set not in STYLE_METRICS:
            raise IclMechError(f"{where}: {unknown('pair set', self.icv_pair_set, STYLE_METRICS)}")
        base.positive(self, "icl_n_test", "anchor_n_test", "tv_n_dev", "tv_n_test", "icv_n_test",
                      "icv_n_dev", "icv_n_demonstrations", "max_new_tokens")  # fmt: skip
        self.icv_settings()  # the pair set holds demonstrations, dev and test sources
        for item in self.icl_tasks:
            bundled.check_queries(bundled.resolve(item), self.icl_n_test, [self.seed], where,
                                  "icl_n_test")  # fmt: skip
        bundled.check_queries(bundled.resolve(self.anchor_task), self.anchor_n_test, [self.seed],
                              where, "anchor_n_test")  # fmt: skip
        sizes = plan.sizes_of(TaskVectorSettings)
        sizes |= {"n_test": self.tv_n_test, "n_dev": self.tv_n_dev}
        for item in (*self.city_tasks, *self.io_tasks):
            task = bundled.resolve(item)
            plan.check_fits(task, sizes, self.seed, where, TV_SIZES, tuple(TV_SIZES))

    def task_vector_settings(self) -> TaskVectorSettings:
        """The task-vector section's settings: the city and input->output tasks, no pairs."""
        return TaskVectorSettings(tasks=(*self.city_tasks, *self.io_tasks), pairs=(),
                                  n_dev=self.tv_n_dev, n_test=self.tv_n_test, seed=self.seed,
                                  max_new_tokens=4, test_curves=False)  # fmt: skip

    def icv_settings(self) -> IcvSettings:
        """The ICV section's settings: one pair set, λ chosen on dev, confirmed on test."""
        return IcvSettings(pair_sets=(self.icv_pair_set,), strengths=self.icv_strengths,
                           n_demonstrations=self.icv_n_demonstrations, n_test=self.icv_n_test,
                           n_dev=self.icv_n_dev, max_new_tokens=self.max_new_tokens,
                           seed=self.seed)  # fmt: skip


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
        return {
            "model": self.model,
            "icl_mech": __version__,
            "seconds": round(self.seconds, 1),
            "settings": self.settings.as_dict(),
            "verdicts": [asdict(v) for v in self.verdicts],
            "headlines": self.headlines,
        }

    def html(self) -> str:
        return report_html(self)

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        answers = ", ".join(f"{v.method}: {v.answer}" for v in self.verdicts)
        return f"ReportCard({self.model!r}: {answers})"

    def write(self, out: str | Path) -> list[Path]:
        """``report.json`` (settings, headlines, verdicts, ``complete`` and each file's sha256)
        and ``report.html``, both or neither (:mod:`icl_mech.atomic_output`)."""
        out = writable_folder(out)
        with staging(out) as folder:
            (folder / "report.html").write_text(self.html())
            seal(folder, "report.json", self.record(), ["report.html"])
            publish(folder, out, "report.json")
        return [out / "report.json", out / "report.html"]


def check(model, settings: CheckSettings | None = None, progress: bool = True) -> ReportCard:
    """Run every section on ``model`` and judge it. Every task's answers are checked against
    the scoring rule (:func:`icl_mech.scoring.check_answers`) before any forward pass."""
    settings = settings or CheckSettings()
    for item in (*settings.icl_tasks, settings.anchor_task, *settings.city_tasks,
                 *settings.io_tasks):  # fmt: skip
        scoring.check_answers(model, bundled.resolve(item))
    start = time.perf_counter()
    headlines: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    with run_threads(settings.threads):
        for section in (_icl, _anchors, _task_vectors, _icv):
            section(model, settings, progress, headlines, figures)
    verdicts = judge(headlines, bundled.label(settings.anchor_task), settings.icv_pair_set)
    card = ReportCard(model.cfg.model_name, settings, headlines, verdicts, figures)
    card.seconds = time.perf_counter() - start
    return card


def _icl(model, s: CheckSettings, progress, headlines, figures) -> None:
    results, section = [], {"tasks": [bundled.label(t) for t in s.icl_tasks]}
    gains, strata = [], []
    for item in s.icl_tasks:
        task = bundled.resolve(item)
        name = task.name
        zero, few = (icl_accuracy(model, task, shots, s.icl_n_test, s.seed, progress=progress)
                     for shots in (0, 1))  # fmt: skip
        results += [zero, few]
        zero_correct = np.asarray(zero.correct, dtype=float)  # by icl_mech.scoring's rule
        few_correct = np.asarray(few.correct, dtype=float)
        gains.append(few_correct - zero_correct)
        strata += [name] * len(zero.gold)
        section[name] = _accuracies(
            zero_correct, few_correct, stats.paired(few_correct, zero_correct)
        )
    zero_all = np.concatenate([np.asarray(r.correct) for r in results[0::2]])
    few_all = np.concatenate([np.asarray(r.correct) for r in results[1::2]])
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
    k = min(AnalysisSettings.k, max(1, model.cfg.n_layers // 2))  # a tiny model has 3 layers
    settings = AnalysisSettings(tasks=(s.anchor_task,), n_test=s.anchor_n_test, n_seeds=1,
                                seed=s.seed, k=k)  # fmt: skip
    analysis = analyse_task(model, bundled.resolve(s.anchor_task), s.anchor_n_test, [s.seed],
                            settings, progress=progress)  # fmt: skip
    headlines["anchors"] = {bundled.label(s.anchor_task): anchor_headline(analysis)}
    figures["Label words: information flows per layer"] = flows_figure([analysis.flows])
    figures["Label words: loyalty under isolation"] = loyalty_figure([analysis.loyalty])
    for part, picture in token_pictures(model, settings).items():
        figures[f"Label words: saliency over the tokens ({part.split('_')[-1]} layers)"] = picture


def _task_vectors(model, s: CheckSettings, progress, headlines, figures) -> None:
    settings = s.task_vector_settings()
    results = evaluate_task_vectors(model, settings.tasks, settings, progress)
    tasks = {"tasks": [t.task for t in results.tasks]}
    headlines["task-vectors"] = task_vector_headline(results, []) | tasks
    figures["Task vectors: accuracy per task"] = accuracy_bars(results)


def _icv(model, s: CheckSettings, progress, headlines, figures) -> None:
    settings = s.icv_settings()
    evaluations = evaluate_icv(model, settings.pair_sets, settings, progress=progress)
    headlines["icv"] = icv_headline(evaluations)
    figures["ICV: style, content and fluency per λ"] = sweep_figure(evaluations)
