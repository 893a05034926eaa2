"""Hendel et al.'s protocol per task: baseline (zero-shot), ICL and task-vector accuracy.

Each task is split into train / dev / test. Every dev and test query gets its own set of
``n_demonstrations`` training examples and ``n_dummies`` dummy queries, from which θ(S) is
extracted at every layer. The layer is chosen on dev (cached batched sweep), then on test:

- baseline: the zero-shot prompt ``x ->``;
- ICL: the demonstrations followed by ``x ->``;
- TV replace: the zero-shot prompt with the last token's residual after layer L overwritten by θ;
- TV add: the zero-shot prompt plus ``scale`` times the mean ICL − zero-shot difference
  (measured on the dev extraction prompts) at layer L' (function-vector style).

Accuracy is first-token (greedy) accuracy; ``exact_*`` is the exact match of the full greedy
answer (continued from the patched run) for multi-token outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm import tqdm

from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.evaluation import answer_token_ids, predict
from icl_mech.prompts import ICLPrompt, PromptBatch, Task
from icl_mech.task_vectors.extract import draw_dummies, extract, mean_difference, sample_sets
from icl_mech.task_vectors.generate import exact_match, greedy
from icl_mech.task_vectors.results import TaskResult, TaskVectorResults
from icl_mech.task_vectors.settings import Settings
from icl_mech.task_vectors.sweep import LayerSweep, sweep_logits
from icl_mech.task_vectors.vector import TaskVector

DEFAULT_SETTINGS = Settings()
DEV_SEED, TEST_SEED = 11, 12  # added to the protocol's seed for each split's extraction


@dataclass
class SplitData:
    """The queries of one split with their zero-shot and ICL prompts and θ per query; the gold
    first answer token per query and the zero-shot prompts tokenised, each once."""

    zero_shot: list[ICLPrompt]
    icl: list[ICLPrompt]
    theta: TaskVector
    dummies: list[list]
    gold: Int[Tensor, " query"]  # the same for the zero-shot and the ICL prompts
    zero_shot_batches: list[tuple[list[int], PromptBatch]]  # (query indices, batch)


def splits(task: Task, protocol: Settings) -> tuple[Task, Task, Task]:
    """(train, dev, test), seeded and disjoint: no example, and no pair in either direction
    (x → y, y → x: ``Task.groups``), is in two of them. Small tasks get smaller dev/test sets
    (at most a third / a quarter of the examples) so that demonstrations still come from a
    varied pool."""
    size = len(task.examples)
    n_test = min(protocol.n_test, size // 3)
    n_dev = min(protocol.n_dev, size // 4)
    needed = protocol.n_demonstrations + protocol.n_dummies
    too_few = (
        f"task {task.name!r} has {size} examples: too few for dev and test sets plus "
        f"{protocol.n_demonstrations} demonstrations and {protocol.n_dummies} dummy queries"
    )
    if min(n_test, n_dev) < 1 or size - n_test - n_dev < needed:
        raise IclMechError(too_few)
    pool, test = task.split(n_test, protocol.seed)
    train, dev = pool.split(n_dev, protocol.seed + 1)
    if len(train.examples) < needed:  # whole pairs went with dev/test
        raise IclMechError(f"{too_few} ({len(train.examples)} left for training)")
    parts = {"train": train, "dev": dev, "test": test}
    seen: dict = {}
    for part, split in parts.items():
        for e in split.examples:
            for key in (e, frozenset((e.x, e.y))):
                if seen.setdefault(key, part) != part:
                    raise IclMechError(
                        f"task {task.name!r}: {e!r} is in both {seen[key]} and {part}"
                    )
    return train, dev, test


def prepare(model, task: Task, train: Task, queries: Sequence, protocol: Settings, seed: int):
    """Per query: its demonstration set, dummies, zero-shot and ICL prompts, and θ."""
    sets = sample_sets(train, len(queries), protocol.n_demonstrations, seed, queries=queries)
    dummies = draw_dummies(train, sets, protocol.n_dummies, seed, queries=queries)
    theta = extract(model, train, sets, dummies, seed=seed, batch_size=protocol.batch_size)
    zero_shot = [ICLPrompt.zero_shot(task, q) for q in queries]
    icl = [ICLPrompt.build(task, demos, q) for demos, q in zip(sets, queries)]
    gold = answer_token_ids(model, zero_shot)
    tokenised = list(batched(model, zero_shot, protocol.batch_size))
    return SplitData(zero_shot, icl, theta, dummies, gold, tokenised)


def layer_curve(
    model, data: SplitData, vectors, mode: str, protocol: Settings, split: str
) -> LayerSweep:
    """First-token accuracy of the zero-shot prompts with the vectors (``[layer, d_model]``, or
    ``[query, layer, d_model]``) patched in at every layer (cached sweep)."""
    correct = torch.zeros(model.cfg.n_layers)
    for index, batch in data.zero_shot_batches:
        rows = vectors if vectors.ndim == 2 else vectors[index]
        logits = sweep_logits(
            model, batch, rows, mode, scale=protocol.scale, groups=protocol.groups
        )
        correct += (logits.argmax(-1) == data.gold[index]).float().sum(1)
    n = len(data.zero_shot)
    accuracy = (correct / n).tolist()
    layers = list(range(model.cfg.n_layers))
    task = data.zero_shot[0].task.name
    return LayerSweep(task, mode, split, layers, model.cfg.n_layers, accuracy, n)


def evaluate_task(model, task: Task, protocol: Settings = DEFAULT_SETTINGS) -> TaskResult:
    train, dev, test = splits(task, protocol)
    dev_data = prepare(model, task, train, dev.examples, protocol, protocol.seed + DEV_SEED)
    test_data = prepare(model, task, train, test.examples, protocol, protocol.seed + TEST_SEED)
    delta = mean_difference(model, dev_data.theta, train, dev_data.dummies, protocol.batch_size)
    swept = (("dev", dev_data), ("test", test_data))[: 2 if protocol.test_curves else 1]
    curves = [
        layer_curve(model, data, vectors, mode, protocol, split)
        for split, data in swept
        for mode, vectors in (("replace", data.theta.values), ("add", delta.values[0]))
    ]
    layer_replace = curves[0].best_layer
    layer_add = curves[1].best_layer
    zero_shot = test_data.zero_shot_batches
    runs = {
        "baseline": (zero_shot, None, 0, "replace"),
        "icl": (list(batched(model, test_data.icl, protocol.batch_size)), None, 0, "replace"),
        "tv_replace": (zero_shot, test_data.theta, layer_replace, "replace"),
        "tv_add": (zero_shot, delta, layer_add, "add"),
    }
    accuracy, exact, correct = {}, {}, {}
    answers = {"query": [q.x for q in test.examples], "gold": [q.y for q in test.examples]}
    for condition, (tokenised, vector, layer, mode) in runs.items():
        first, matched, texts = _answers(
            model, tokenised, test_data.gold, protocol, vector, layer, mode
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
    model, tasks: Sequence[Task], protocol: Settings = DEFAULT_SETTINGS, progress: bool = True
) -> TaskVectorResults:
    results = []
    for task in tqdm(tasks, desc="task vectors", disable=not progress, leave=False):
        results.append(evaluate_task(model, task, protocol))
    return TaskVectorResults(results, protocol)


def _first_token_accuracy(model, data: SplitData) -> float:
    predicted = torch.cat([predict(model, batch) for _, batch in data.zero_shot_batches])
    return float((predicted == data.gold).float().mean())


def _answers(
    model,
    tokenised: list[tuple[list[int], PromptBatch]],
    gold: Int[Tensor, " query"],
    protocol: Settings,
    vector: TaskVector | None,
    layer: int,
    mode: str,
) -> tuple[list[bool], float, list[str]]:
    """First-token correctness per prompt (in query order), exact-match accuracy and the greedy
    answers of the tokenised prompts, with ``vector`` (one set per prompt, or one shared set)
    patched in at ``layer``."""
    first, matched, texts, n = [False] * len(gold), 0, [], len(gold)
    for index, batch in tokenised:
        items = []
        if vector is not None:
            rows = vector if len(vector) == 1 else vector.select(index)
            items.append(rows.intervention(layer, mode, scale=protocol.scale))
        out = greedy(model, batch, *items, max_new_tokens=max(1, protocol.max_new_tokens))
        for i, hit in zip(index, (out.first_tokens == gold[index]).tolist()):
            first[i] = bool(hit)
        matched += sum(exact_match(out, batch.prompts))
        texts += out.texts
    return first, matched / n, texts
