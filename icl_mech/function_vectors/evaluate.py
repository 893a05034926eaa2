"""Side by side per task, on the same splits and queries: baseline, ICL, task vector, mean
difference and function vector, each vector at its layer chosen on dev.

Each task is split into train / dev / test (``icl_mech.task_vectors.evaluate.splits``: disjoint,
pairs kept together). From train: ``n_prompts`` clean ICL prompts and their shuffled-label
twins give the indirect effect of every head and the function vector (top ``k`` heads). Every
dev and test query gets its own demonstrations and dummy queries (θ per query, as in the
task-vector protocol); its shuffled-label prompt shows the same demonstrations with deranged
answers. Conditions, scored on test by the answer's first content token, reached greedily
(:mod:`icl_mech.scoring`):

- ``baseline``: the zero-shot prompt ``x ->``; ``icl``: the demonstrations, then ``x ->``;
- ``icl_shuffled``: the demonstrations with shuffled answers, then ``x ->``;
- ``tv_replace``: zero-shot, the last token's residual after layer L replaced by θ (Hendel);
- ``tv_add``: zero-shot plus the mean ICL − zero-shot difference after layer L;
- ``fv_add``: zero-shot plus the function vector after layer L (Todd);
- ``fv_shuffled``: the shuffled-label prompt plus the function vector after layer L.

Every vector's L is the earliest best layer of its own dev sweep (``fv_shuffled`` is swept on the
dev shuffled-label prompts); the test split is never used to choose anything.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import einops
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from icl_mech import scoring
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.evaluation import scored_hits
from icl_mech.function_vectors.indirect import (
    effect_prompts,
    indirect_effects,
    shuffle_labels,
)
from icl_mech.function_vectors.results import (
    CONDITIONS,
    FunctionVectorResult,
    FunctionVectorResults,
)
from icl_mech.function_vectors.settings import Settings
from icl_mech.function_vectors.vector import function_vector
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Demonstration, Task
from icl_mech.task_vectors import plan
from icl_mech.task_vectors.evaluate import prepare, splits
from icl_mech.task_vectors.extract import mean_difference
from icl_mech.task_vectors.scored import sweep_hits
from icl_mech.task_vectors.sweep import LayerSweep
from icl_mech.tasks import resolve

DEFAULT_SETTINGS = Settings()
Tokenised = list[tuple[list[int], PromptBatch]]  # (query indices, batch)


def demonstrations_of(prompt: ICLPrompt) -> list[Demonstration]:
    """The demonstrations an ICL prompt shows, read back from its typed segments."""
    inputs = {s.demo: s.text for s in prompt.segments if s.role == "input" and s.demo >= 0}
    prefix = len(prompt.task.answer_prefix)
    labels = {s.demo: s.text[prefix:] for s in prompt.segments if s.role == "label"}
    return [Demonstration(inputs[i], labels[i]) for i in range(prompt.n_demonstrations)]


def shuffled_twins(prompts: Sequence[ICLPrompt], seed: int) -> list[ICLPrompt]:
    """Each prompt with its demonstrations' answers deranged (same inputs, same query)."""
    rng = random.Random(seed)
    return [
        ICLPrompt.build(p.task, shuffle_labels(demonstrations_of(p), rng), _query(p))
        for p in prompts
    ]


def _query(prompt: ICLPrompt) -> Demonstration:
    text = "".join(s.text for s in prompt.segments if s.role == "query")
    before, after = prompt.task.template.split("{x}")
    return Demonstration(text[len(before) : len(text) - len(after)], prompt.answer)


def check_k(model, settings: Settings) -> None:
    total = model.cfg.n_layers * model.cfg.n_heads
    if settings.k > total:
        raise IclMechError(
            f"function-vectors settings: k={settings.k} heads, but {model.cfg.model_name} has "
            f"{total} ({model.cfg.n_layers} layers x {model.cfg.n_heads} heads); "
            f"choose k <= {total}"
        )


def check_prompt_pool(task: Task, settings: Settings) -> None:
    """The indirect-effect prompts' queries come from the training split; refuse before any
    forward when it is smaller than ``n_prompts``."""
    available = len(splits(task, settings)[0].examples)
    if settings.n_prompts > available:
        raise IclMechError(
            f"function-vectors settings: n_prompts={settings.n_prompts}, but task {task.name!r} "
            f"leaves {available} training examples after its dev and test splits; choose "
            f"n_prompts <= {available} or a larger task"
        )


def evaluate_task(
    model, task: Task, settings: Settings = DEFAULT_SETTINGS, progress: bool = False
) -> FunctionVectorResult:
    scoring.check_answers(model, task)
    check_prompt_pool(task, settings)
    check_k(model, settings)
    train, dev, test = splits(task, settings)
    seed = settings.seed
    clean, shuffled = effect_prompts(
        train, settings.n_prompts, settings.n_demonstrations, seed + 21
    )
    label = progress and f"indirect effect {task.name}"
    effect = indirect_effects(model, clean, shuffled, batch_size=settings.effect_batch_size,
                              progress=label)  # fmt: skip
    vector = function_vector(model, effect, settings.k)
    vector.provenance["seed"] = seed  # drew the prompts of the indirect effect
    dev_data = prepare(model, task, train, dev.examples, settings, seed + 11)
    test_data = prepare(model, task, train, test.examples, settings, seed + 12)
    delta = mean_difference(model, dev_data.theta, train, dev_data.dummies, settings.batch_size)
    size = settings.batch_size
    dev_shuffled = list(batched(model, shuffled_twins(dev_data.icl, seed + 31), size))
    test_shuffled = list(batched(model, shuffled_twins(test_data.icl, seed + 32), size))
    n_layers = model.cfg.n_layers
    fv_rows = einops.repeat(vector.values, "d_model -> layer d_model", layer=n_layers)
    dev_zero, test_zero = dev_data.zero_shot_batches, test_data.zero_shot_batches
    dev_theta, test_theta = dev_data.theta.values, test_data.theta.values  # one θ per query
    # condition: (dev batches, test batches, dev vectors, test vectors, mode)
    swept = {
        "tv_replace": (dev_zero, test_zero, dev_theta, test_theta, "replace"),
        "tv_add": (dev_zero, test_zero, delta.values[0], delta.values[0], "add"),
        "fv_add": (dev_zero, test_zero, fv_rows, fv_rows, "add"),
        "fv_shuffled": (dev_shuffled, test_shuffled, fv_rows, fv_rows, "add"),
    }
    curves, layers, correct = [], {}, {}
    for condition, (dev_batches, test_batches, dev_vectors, test_vectors, mode) in swept.items():
        curve = layer_curve(model, dev_batches, dev_data.gold, dev_vectors, mode, settings,
                            task.name, condition)  # fmt: skip
        curves.append(curve)
        layers[condition] = curve.best_layer
        correct[condition] = patched_hits(
            model, test_batches, test_data.gold, test_vectors, mode, curve.best_layer, settings
        )
    plain = {
        "baseline": test_data.zero_shot_batches,
        "icl": list(batched(model, test_data.icl, size)),
        "icl_shuffled": test_shuffled,
    }
    for condition, tokenised in plain.items():
        correct[condition] = _hits(model, tokenised, test_data.gold)
    queries = {"query": [q.x for q in test.examples], "gold": [q.y for q in test.examples]}
    answers = pd.DataFrame(queries | {c: correct[c] for c in CONDITIONS})
    return FunctionVectorResult(
        task.name, n_layers, len(dev.examples), len(test.examples), layers, correct, curves,
        effect, vector, delta, answers,
    )  # fmt: skip


def layer_curve(
    model,
    tokenised: Tokenised,
    gold: list[scoring.Gold],
    vectors: Tensor,
    mode: str,
    settings: Settings,
    task: str,
    condition: str,
    split: str = "dev",
) -> LayerSweep:
    """Accuracy (:mod:`icl_mech.scoring`) with the vectors (``[layer, d_model]`` or ``[query,
    layer, d_model]``) patched in at every layer: the task vectors' cached sweep, per batch."""
    correct = torch.zeros(model.cfg.n_layers)
    for index, batch in tokenised:
        rows = vectors if vectors.ndim == 2 else vectors[index]
        hits = sweep_hits(model, batch, [gold[i] for i in index], rows, mode,
                          strength=settings.strength, groups=settings.groups)  # fmt: skip
        correct += hits.float().sum(1)
    n = sum(len(index) for index, _ in tokenised)
    layers = list(range(model.cfg.n_layers))
    return LayerSweep(task, condition, split, layers, model.cfg.n_layers, (correct / n).tolist(), n)


def patched_hits(model, tokenised, gold, vectors, mode, layer, settings) -> list[bool]:
    """Per query (in query order): the answer is right with the vector at ``layer``."""
    hits = [False] * len(gold)
    for index, batch in tokenised:
        rows = vectors[[layer]] if vectors.ndim == 2 else vectors[index][:, [layer]]
        right = sweep_hits(model, batch, [gold[i] for i in index], rows, mode, layers=[layer],
                           strength=settings.strength)  # fmt: skip
        for i, hit in zip(index, right[0].tolist()):
            hits[i] = bool(hit)
    return hits


def _hits(model, tokenised, gold) -> list[bool]:
    hits = [False] * len(gold)
    for index, batch in tokenised:
        for i, hit in zip(index, scored_hits(model, batch, [gold[i] for i in index])):
            hits[i] = hit
    return hits


def evaluate(
    model, tasks: Sequence[Task], settings: Settings = DEFAULT_SETTINGS, progress: bool = True
) -> FunctionVectorResults:
    """``evaluate_task`` for every task (names, task files or ``Task``s); every task's size and
    answers are checked before any forward."""
    tasks = [resolve(t) for t in tasks]
    for task in tasks:
        scoring.check_answers(model, task)
        plan.check_fits(task, plan.sizes_of(settings), settings.seed, "function-vectors")
        check_prompt_pool(task, settings)
    check_k(model, settings)
    results = []
    for task in tqdm(tasks, desc="function vectors", disable=not progress, leave=False):
        results.append(evaluate_task(model, task, settings, progress=progress))
    return FunctionVectorResults(results, settings)
