"""All three analyses of a task from one saliency pass per batch.

Per batch: one forward + backward gives the saliency (hence the flows), the unmodified logits
at q, the target's attention rows (AUC-ROC) and the residual stream entering the first deep
layer; then the four isolation runs reuse the logits and, for deep isolation, that residual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from icl_mech import settings as base
from icl_mech import stats
from icl_mech import tasks as bundled
from icl_mech.errors import IclMechError
from icl_mech.evaluation import batches, build_prompts
from icl_mech.hooks import points
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.interventions import Capture
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Task

from .aucroc import AnchorAuc, QueryAttention, Span, class_scores
from .flows import Flows, flows
from .isolation import deep_layers
from .loyalty import Loyalty, isolation_loyalty
from .readout import Anchors, check_anchors
from .saliency import Target, saliency


@dataclass(frozen=True)
class AnalysisSettings(base.Settings):
    """The analysis (flows, isolation, AUC-ROC) with the paper's defaults; the full run is
    100 held-out queries per task and three seeds (each draws its own split and
    demonstrations), one demonstration per class."""

    QUICK = dict(tasks=("sentiment", "topic"), n_test=4, n_seeds=1)
    tasks: tuple[str | Task, ...] = tuple(bundled.names("classification"))  # or files, Tasks
    n_test: int = 100  # held-out queries per task and seed
    n_seeds: int = 3
    k: int = 5  # isolated layers, shallow (first k) and deep (last k)
    anchors: Anchors = "all"
    span: Span = "sum"
    target: Target = "gold"
    top_k: int = 5
    n_random: int | None = None  # random words isolated per row (default: as many as anchors)
    batch_size: int = 8

    def check(self) -> None:
        where = base.where(self)
        self._set("tasks", bundled.checked(self.tasks, where, "tasks", need="classification"))
        base.positive(self, "n_test", "n_seeds", "k", "top_k", "batch_size")
        for item in self.tasks:
            bundled.check_queries(bundled.resolve(item), self.n_test, self.seeds, where, "n_test")
        if self.n_random is not None:
            base.positive(self, "n_random")
        check_anchors(self.anchors)
        base.one_of(self, "span", ("sum", "mean"))
        base.one_of(self, "target", ("gold", "prediction"))

    @property
    def seeds(self) -> list[int]:
        return base.consecutive_seeds(self, self.n_seeds)


@dataclass
class TaskAnalysis:
    task: str
    flows: Flows
    loyalty: Loyalty
    auc: AnchorAuc
    correct: torch.Tensor  # [example] bool: prediction equals gold
    queries: list[str] | None = None  # per example; a query drawn under several seeds is one unit

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())

    def units(self) -> list:
        return list(self.queries) if self.queries is not None else list(range(len(self.correct)))

    def accuracy_estimate(self) -> stats.Estimate:
        """Accuracy with a 95% bootstrap interval over queries (clustered across seeds)."""
        return stats.bootstrap(self.correct.float().numpy(), self.units())

    def to_frame(self) -> pd.DataFrame:
        """The headline per-layer table: mean flows (normalised), AUC-ROC_l and R_l."""
        mean = self.flows.mean(normalised=True)
        frame = self.auc.to_frame()
        for i, name in enumerate(("S_wp", "S_pq", "S_ww")):
            frame[name] = mean[:, i].numpy()
        return frame


def analyse_batch(model, batch: PromptBatch, settings: AnalysisSettings):
    """(flows, loyalty, auc, correct) of one batch."""
    check_settings(model, settings)
    deep = deep_layers(model, settings.k)
    attention = QueryAttention()
    capture = Capture(points(model, "hook_resid_pre", deep[:1])) if deep else None
    extra = [attention] + ([capture] if capture else [])
    result = saliency(model, batch, *extra, target=settings.target)
    residual = next(iter(capture.activations.values())) if capture else None
    loyalty = isolation_loyalty(
        model,
        batch,
        settings.k,
        anchors=settings.anchors,
        n_random=settings.n_random,
        top_k=settings.top_k,
        seed=settings.seed,
        base_logits=result.logits,
        deep_residual=residual,
    )
    scores = class_scores(attention.stacked(), batch, settings.anchors, settings.span)
    task = batch.prompts[0].task.name
    auc = AnchorAuc(scores, result.predicted.cpu(), sorted(attention.rows), task)
    correct = result.predicted.cpu() == batch.gold
    return flows(result, batch, settings.anchors), loyalty, auc, correct


def check_settings(model, settings: AnalysisSettings) -> None:
    """What depends on the model is checked here, before the first forward pass."""
    deep_layers(model, settings.k)
    if not 1 <= settings.top_k <= model.cfg.d_vocab_out:
        raise IclMechError(f"top_k must be between 1 and the vocabulary size, got {settings.top_k}")


def analyse_prompts(
    model, prompts: Sequence[ICLPrompt], settings: AnalysisSettings, progress: bool | str = False
) -> TaskAnalysis:
    """Analyse prompts of one task, batched by similar length (results keep prompt order)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].text))
    parts = []
    for batch in batches(model, [prompts[i] for i in order], settings.batch_size, progress):
        parts.append(analyse_batch(model, batch, settings))
    inverse = torch.argsort(torch.tensor(order))
    flow = Flows.concat([p[0] for p in parts])
    loyalty = Loyalty.concat([p[1] for p in parts])
    auc = AnchorAuc.concat([p[2] for p in parts])
    correct = torch.cat([p[3] for p in parts])
    flow.values = flow.values[inverse]
    loyalty.label, loyalty.word = loyalty.label[inverse], loyalty.word[inverse]
    auc.scores, auc.predicted = auc.scores[inverse], auc.predicted[inverse]
    queries = [flow.queries[i] for i in inverse.tolist()] if flow.queries is not None else None
    flow.queries = loyalty.queries = auc.queries = queries
    return TaskAnalysis(flow.task, flow, loyalty, auc, correct[inverse], queries)


def task_prompts(task: Task, n_test: int, seed: int, n_demonstrations: int = 1) -> list[ICLPrompt]:
    """``n_test`` held-out queries of a seeded split, ``n_demonstrations`` per class each."""
    pool, test = task.split(n_test, seed)
    return build_prompts(pool, n_demonstrations, test.examples, seed)


def analyse_task(
    model,
    task: Task,
    n_test: int = 100,
    seeds: Sequence[int] = (0,),
    settings: AnalysisSettings | None = None,
    n_demonstrations: int = 1,
    progress: bool = True,
) -> TaskAnalysis:
    """Every seed draws its own split and demonstrations; results are pooled over seeds."""
    settings = settings or AnalysisSettings()
    check_settings(model, settings)
    parts = []
    for seed in seeds:
        prompts = task_prompts(task, n_test, seed, n_demonstrations)
        label = progress and f"{task.name} seed {seed}"
        parts.append(analyse_prompts(model, prompts, settings, progress=label))
    return TaskAnalysis(
        task.name,
        Flows.concat([p.flows for p in parts]),
        Loyalty.concat([p.loyalty for p in parts]),
        AnchorAuc.concat([p.auc for p in parts]),
        torch.cat([p.correct for p in parts]),
        [q for p in parts for q in p.units()],
    )
