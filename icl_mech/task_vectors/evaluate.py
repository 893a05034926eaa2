"""Hendel et al.'s protocol per task: baseline (zero-shot), ICL and task-vector accuracy.

Each task is split into train / dev / test. Every dev and test query gets its own set of
``n_demonstrations`` training examples and ``n_dummies`` dummy queries, from which θ(S) is
extracted at every layer. The layer is chosen on dev (cached batched sweep), then on test:

- baseline: the zero-shot prompt ``x ->``;
- ICL: the demonstrations followed by ``x ->``;
- TV replace: the zero-shot prompt with the last token's residual after layer L overwritten by θ;
- TV add: the zero-shot prompt plus ``strength`` times the mean ICL − zero-shot difference
  (measured on the dev extraction prompts) at layer L' (function-vector style).

Accuracy is greedy accuracy on the answer's first content token (:mod:`icl_mech.scoring`:
leading whitespace-only tokens must be produced first, then that token); ``exact_*`` is the
exact match of the full greedy answer (continued from the patched run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm import tqdm

from icl_mech import scoring
from icl_mech.batching import batched
from icl_mech.evaluation import scored_hits
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Task
from icl_mech.task_vectors import plan
from icl_mech.task_vectors.extract import draw_dummies, extract, mean_difference, sample_sets
from icl_mech.task_vectors.generate import exact_match, greedy
from icl_mech.task_vectors.plan import DEV_SEED, TEST_SEED
from icl_mech.task_vectors.results import TaskResult, TaskVectorResults
from icl_mech.task_vectors.scored import sweep_hits
from icl_mech.task_vectors.settings import Settings
from icl_mech.task_vectors.sweep import LayerSweep
from icl_mech.task_vectors.vector import TaskVector
from icl_mech.tasks import resolve

DEFAULT_SETTINGS = Settings()


@dataclass
class SplitData:
    """The queries of one split with their zero-shot and ICL prompts and θ per query; the gold
    answer's scored tokens per query and the zero-shot prompts tokenised, each once."""

    zero_shot: list[ICLPrompt]
    icl: list[ICLPrompt]
    theta: TaskVector
    dummies: list[list]
    gold: list[scoring.Gold]  # the same for the zero-shot and the ICL prompts
    zero_shot_batches: list[tuple[list[int], PromptBatch]]  # (query indices, batch)


def splits(task: Task, settings: Settings) -> tuple[Task, Task, Task]:
    """(train, dev, test), seeded and disjoint (:func:`icl_mech.task_vectors.plan.splits`)."""
    return plan.splits(task, settings.n_test, settings.n_dev, settings.n_demonstrations,
                       settings.n_dummies, settings.seed)  # fmt: skip


def prepare(model, task: Task, train: Task, queries: Sequence, settings: Settings, seed: int):
    """Per query: its demonstration set, dummies, zero-shot and ICL prompts, and θ."""
    sets = sample_sets(train, len(queries), settings.n_demonstrations, seed, queries=queries)
    dummies = draw_dummies(train, sets, settings.n_dummies, seed, queries=queries)
    theta = extract(model, train, sets, dummies, seed=seed, batch_size=settings.batch_size)
    zero_shot = [ICLPrompt.zero_shot(task, q) for q in queries]
    icl = [ICLPrompt.build(task, demos, q) for demos, q in zip(sets, queries)]
    gold = scoring.golds(model, zero_shot)
    tokenised = list(batched(model, zero_shot, settings.batch_size))
    return SplitData(zero_shot, icl, theta, dummies, gold, tokenised)


def layer_curve(
    model, data: SplitData, vectors, mode: str, settings: Settings, split: str
) -> LayerSweep:
    """Accuracy (:mod:`icl_mech.scoring`) of the zero-shot prompts with the vectors (``[layer,
    d_model]``, or ``[query, layer, d_model]``) patched in at every layer (cached sweep)."""
    correct = torch.zeros(model.cfg.n_layers)
    for index, batch in data.zero_shot_batches:
        rows = vectors if vectors.ndim == 2 else vectors[index]
        gold = [data.gold[i] for i in index]
        hits = sweep_hits(model, batch, gold, rows, mode, strength=settings.strength,
                          groups=settings.groups)  # fmt: skip
        correct += hits.float().sum(1)
    n = len(data.zero_shot)
    accuracy = (correct / n).tolist()
    layers = list(range(model.cfg.n_layers))
    task = data.zero_shot[0].task.name
    return LayerSweep(task, mode, split, layers, model.cfg.n_layers, accuracy, n)


def evaluate_task(model, task: Task, settings: Settings = DEFAULT_SETTINGS) -> TaskResult:
    scoring.check_answers(model, task)
    train, dev, test = splits(task, settings)
    dev_data = prepare(model, task, train, dev.examples, settings, settings.seed + DEV_SEED)
    test_data = prepare(model, task, train, test.examples, settings, settings.seed + TEST_SEED)
    delta = mean_difference(model, dev_data.theta, train, dev_data.dummies, settings.batch_size)
    swept = (("dev", dev_data), ("test", test_data))[: 2 if settings.test_curves else 1]
    curves = [
        layer_curve(model, data, vectors, mode, settings, split)
        for split, data in swept
        for mode, vectors in (("replace", data.theta.values), ("add", delta.values[0]))
    ]
    layer_replace = curves[0].best_layer
    layer_add = curves[1].best_layer
    zero_shot = test_data.zero_shot_batches
    runs = {
        "baseline": (zero_shot, None, 0, "replace"),
        "icl": (list(batched(model, test_data.icl, settings.batch_size)), None, 0, "replace"),
        "tv_replace": (zero_shot, test_data.theta, layer_replace, "replace"),
        "tv_add": (zero_shot, delta, layer_add, "add"),
    }
    accuracy, exact, correct = {}, {}, {}
    answers = {"query": [q.x for q in test.examples], "gold": [q.y for q in test.examples]}
    for condition, (tokenised, vector, layer, mode) in runs.items():
        first, matched, texts = _answers(
            model, tokenised, test_data.gold, settings, vector, layer, mode
        )
        accuracy[condition], exact[condition] = sum(first) / len(first), matched
        answers[condition], correct[condition] = texts, first
    return TaskResult(
        task.name,
        model.cfg.n_layers,
        len(dev.examples),
        len(test.examples),
        layer_replace,
        layer_add,
        accuracy,
        exact,
        curves,
        pd.DataFrame(answers),
        delta,
        _first_token_accuracy(model, dev_data),
        correct,
    )


def evaluate(
    model, tasks: Sequence[Task], settings: Settings = DEFAULT_SETTINGS, progress: bool = True
) -> TaskVectorResults:
    """``evaluate_task`` for every task (names, task files or ``Task``s); every task's size is
    checked before any forward (:mod:`icl_mech.task_vectors.plan`), and its answers against the
    scoring rule (:func:`icl_mech.scoring.check_answers`)."""
    tasks = [resolve(t) for t in tasks]
    for task in tasks:
        scoring.check_answers(model, task)
        plan.check_fits(task, plan.sizes_of(settings), settings.seed, "task-vectors")
    results = []
    for task in tqdm(tasks, desc="task vectors", disable=not progress, leave=False):
        results.append(evaluate_task(model, task, settings))
    return TaskVectorResults(results, settings)


def _first_token_accuracy(model, data: SplitData) -> float:
    """Zero-shot accuracy on the split, by the scoring rule."""
    hits = []
    for index, batch in data.zero_shot_batches:
        hits += scored_hits(model, batch, [data.gold[i] for i in index])
    return float(torch.tensor(hits, dtype=torch.float).mean())


def _answers(
    model,
    tokenised: list[tuple[list[int], PromptBatch]],
    gold: list[scoring.Gold],
    settings: Settings,
    vector: TaskVector | None,
    layer: int,
    mode: str,
) -> tuple[list[bool], float, list[str]]:
    """Correctness per prompt (in query order; :mod:`icl_mech.scoring`), exact-match accuracy
    and the greedy answers of the tokenised prompts, with ``vector`` (one set per prompt, or one
    shared set) patched in at ``layer``."""
    first, matched, texts, n = [False] * len(gold), 0, [], len(gold)
    for index, batch in tokenised:
        items = []
        if vector is not None:
            rows = vector if len(vector) == 1 else vector.select(index)
            strength = settings.strength if mode == "add" else 1.0  # of the additive variant
            items.append(rows.intervention(layer=layer, mode=mode, strength=strength))
        golds = [gold[i] for i in index]
        steps = max(1, settings.max_new_tokens, scoring.steps(golds))
        out = greedy(model, batch, *items, max_new_tokens=steps)
        for i, hit in zip(index, scoring.token_hits(out.tokens, golds)):
            first[i] = hit
        matched += sum(exact_match(out, batch.prompts))
        texts += out.texts
    return first, matched / n, texts
