"""Exact indirect effect against its attribution estimate, per task: the rank agreement over
every head, the overlap of the top heads, the function vector built from each with its
accuracy, and the passes and wall time each took.

Each function vector is added after one layer to two kinds of prompt (Todd et al. 2024):
zero-shot (``fv_<method>``) and ICL with the demonstrations' answers shuffled
(``fv_<method>_shuffled``), beside the unpatched ``zero_shot``, ``icl`` and ``icl_shuffled``.
Splits (:func:`icl_mech.task_vectors.plan.splits`, disjoint): the effect prompts come from
train, each vector's layer is the earliest best on dev for each kind of prompt (the cached
layer sweep), and every accuracy is scored on test.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from icl_mech import scoring, stats
from icl_mech.batching import batched
from icl_mech.correlation import pearson, spearman
from icl_mech.evaluation import build_prompts, scored_hits
from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.function_vectors.evaluate import shuffled_twins
from icl_mech.function_vectors.indirect import effect_prompts, indirect_effects
from icl_mech.function_vectors.vector import function_vector
from icl_mech.head_roles.settings import Settings
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompts import Task
from icl_mech.task_vectors import plan
from icl_mech.task_vectors.scored import sweep_hits

METHODS = ("exact", "attribution")
CONDITIONS = ("zero_shot", "icl", "icl_shuffled", "fv_exact", "fv_attribution",
              "fv_exact_shuffled", "fv_attribution_shuffled")  # fmt: skip


@dataclass
class TaskComparison:
    """One task: both effects, their wall times, and test hits per condition (``zero_shot``,
    ``icl``, ``icl_shuffled``, ``fv_<method>`` and ``fv_<method>_shuffled``) with each
    vector's chosen layer per condition."""

    task: str
    effects: dict[str, IndirectEffect] = field(repr=False)
    seconds: dict[str, float]
    hits: dict[str, list[bool]] = field(repr=False)
    layers: dict[str, int]
    clean: list[ICLPrompt] = field(repr=False, default_factory=list)
    shuffled: list[ICLPrompt] = field(repr=False, default_factory=list)

    def agreement(self, k: int) -> dict:
        return agreement(self.effects["exact"], self.effects["attribution"], k)

    def accuracy(self, condition: str) -> stats.Estimate:
        return stats.bootstrap([float(h) for h in self.hits[condition]])


def agreement(exact: IndirectEffect, estimate: IndirectEffect, k: int = 10) -> dict:
    """Rank and linear correlation over every head, and the shared top-``k`` heads."""
    a, b = exact.mean.flatten().numpy(), estimate.mean.flatten().numpy()
    shared = set(exact.top(k)) & set(estimate.top(k))
    return {"spearman": spearman(a, b), "pearson": pearson(a, b), f"top{k}_overlap": len(shared),
            "k": k}  # fmt: skip


def verified(
    model, clean, shuffled, estimate: IndirectEffect, top: int = 10, batch_size: int = 8
) -> IndirectEffect:
    """``estimate`` (attribution) with every layer that holds one of its ``top`` heads
    recomputed exactly: the candidates' effects, and their neighbours', are then exact. The
    passes of both are counted; ``method`` says which layers are exact."""
    layers = sorted({layer for layer, _ in estimate.top(top)})
    exact = indirect_effects(model, clean, shuffled, layers=layers, batch_size=batch_size)
    effects = estimate.effects.clone()
    for i, layer in enumerate(layers):
        effects[:, estimate.layers.index(layer)] = exact.effects[:, i]
    method = f"attribution, exact at layers {','.join(map(str, layers))}"
    return dataclasses.replace(estimate, effects=effects, method=method,
                               forwards=estimate.forwards + exact.forwards)  # fmt: skip


def compare_task(model, task: Task, settings: Settings, progress: bool = False) -> TaskComparison:
    """Both effects of every head, the function vector of each one's top ``k`` heads, and the
    test accuracy of zero-shot, ICL and each vector."""
    train, dev, test = plan.splits(task, settings.n_test, settings.n_dev,
                                   settings.n_demonstrations, 0, settings.seed)  # fmt: skip
    clean, shuffled = effect_prompts(train, min(settings.n_prompts, len(train.examples)),
                                     settings.n_demonstrations, settings.seed)  # fmt: skip
    effects, seconds = {}, {}
    for method in METHODS:
        start = time.perf_counter()
        effects[method] = indirect_effects(
            model, clean, shuffled, batch_size=settings.effect_batch_size,
            progress=progress and f"{method} effect {task.name}", method=method,
        )  # fmt: skip
        seconds[method] = time.perf_counter() - start
    prompts = {split: _prompts(task, train, part, settings)
               for split, part in (("dev", dev), ("test", test))}  # fmt: skip
    hits = {name: _hits(model, prompts["test"][kind], settings)
            for name, kind in (("zero_shot", "zero_shot"), ("icl", "icl"),
                               ("icl_shuffled", "shuffled"))}  # fmt: skip
    layers = {}
    for method in METHODS:
        vector = function_vector(model, effects[method], k=settings.k).values
        for kind, name in (("zero_shot", f"fv_{method}"), ("shuffled", f"fv_{method}_shuffled")):
            layers[name] = _best_layer(model, prompts["dev"][kind], vector, settings)
            hits[name] = _sweep(model, prompts["test"][kind], vector, settings,
                                layers=[layers[name]])[0].tolist()  # fmt: skip
    return TaskComparison(task.name, effects, seconds, hits, layers, clean, shuffled)


def _prompts(task: Task, train: Task, split: Task, settings: Settings) -> dict:
    """The split's zero-shot, ICL and shuffled-label ICL prompts (demonstrations from train)."""
    icl = build_prompts(train, settings.n_demonstrations, split.examples, settings.seed)
    return {"zero_shot": [ICLPrompt.zero_shot(task, q) for q in split.examples], "icl": icl,
            "shuffled": shuffled_twins(icl, settings.seed + 1)}  # fmt: skip


def _hits(model, prompts, settings: Settings) -> list[bool]:
    gold = scoring.golds(model, prompts)
    out = [False] * len(prompts)
    for index, batch in batched(model, prompts, settings.batch_size):
        for i, hit in zip(index, scored_hits(model, batch, [gold[i] for i in index])):
            out[i] = hit
    return out


def _sweep(model, prompts, vector, settings: Settings, layers=None):
    """Hits ``[layer, query]`` of the prompts plus ``vector`` after each layer."""
    gold = scoring.golds(model, prompts)
    n_layers = model.cfg.n_layers if layers is None else len(layers)
    rows = vector[None].expand(n_layers, -1)
    parts = []
    for index, batch in batched(model, prompts, settings.batch_size):
        parts.append(sweep_hits(model, batch, [gold[i] for i in index], rows, "add",
                                layers=layers))  # fmt: skip
    return torch.cat(parts, dim=1)


def _best_layer(model, prompts, vector, settings: Settings) -> int:
    """The earliest layer with the best dev accuracy."""
    return int(_sweep(model, prompts, vector, settings).float().mean(1).argmax())
