"""Every way to put a task into a vector, side by side on one task's splits and queries.

Each task is split into train / dev / test (the task-vector protocol: disjoint, pairs kept
together). Every dev and test query has its own demonstrations and dummy queries; one pass
over those prompts gives θ and the state vectors. From train: the mean difference, the function
vector (indirect effect on ``n_prompts`` prompts), the ICV direction (input, output pairs) and
I2CL (``i2cl_shots`` demonstrations per class, calibrated). On test, scored by one rule (the
answer's first content token, reached greedily; classification tasks as input→output):

- ``zero_shot``, ``icl`` (the query's own demonstrations), ``icl_i2cl_demos`` (I2CL's);
- ``task_vector`` (θ replaces the last token's residual after layer L), ``mean_difference``,
  ``function_vector`` (added after L), ``state_inner``, ``state_momentum`` (replace at L);
- ``icv`` (every layer's MLP output steered, strength chosen on dev), ``i2cl``.

Each L is the earliest best layer of the vector's own dev sweep; test chooses nothing.
Classification tasks also get the label-word accuracy I2CL reports (argmax over the label
words' first tokens) for ``zero_shot``, ``icl_i2cl_demos`` and ``i2cl`` (``*:labels``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager

import einops
from tqdm import tqdm

from icl_mech import scoring, stats, validate
from icl_mech.context_vectors import calibrate, context_vectors, per_class
from icl_mech.evaluation import hits
from icl_mech.function_vectors.evaluate import layer_curve, patched_hits
from icl_mech.function_vectors.indirect import effect_prompts, indirect_effects
from icl_mech.function_vectors.vector import function_vector
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.icv.extract import extract_icv
from icl_mech.prompts import Task
from icl_mech.task_vectors import plan
from icl_mech.task_vectors.evaluate import splits
from icl_mech.task_vectors.extract import mean_difference
from icl_mech.tasks import resolve
from icl_mech.vector_atlas.geometry import lens
from icl_mech.vector_atlas.results import AtlasResults, AtlasTask, Used
from icl_mech.vector_atlas.settings import Settings
from icl_mech.vector_atlas.split import as_io, prepare, tokens_per_prompt

SWEPT = ("task_vector", "mean_difference", "function_vector", "state_inner", "state_momentum")


class Costs:
    """Seconds and sequences of each method's extraction, and its inference per query."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    @contextmanager
    def extraction(self, method: str, sequences: int):
        start = time.perf_counter()
        yield
        row = self.rows.setdefault(method, {"method": method})
        row["extraction_seconds"] = time.perf_counter() - start
        row["extraction_sequences"] = sequences

    def inference(self, method: str, tokens: float, seconds: float, n: int) -> None:
        row = self.rows.setdefault(method, {"method": method})
        row.update(tokens_per_query=tokens, forwards_per_query=1, seconds_per_query=seconds / n)


def evaluate_task(model, task: Task, settings: Settings, progress: bool = False) -> AtlasTask:
    kind = "classification" if task.is_classification else "io"
    scored = as_io(task)
    scoring.check_answers(model, scored)
    train, dev, test = splits(scored, settings)
    seed, costs = settings.seed, Costs()
    n_states = (len(dev.examples) + len(test.examples)) * settings.n_dummies
    with costs.extraction("task_vector", n_states):  # θ and every state, in one pass
        dev_data, dev_states = prepare(model, scored, train, dev.examples, settings, seed + 11)
        test_data, test_states = prepare(model, scored, train, test.examples, settings, seed + 12)
    with costs.extraction("mean_difference", len(dev.examples) * settings.n_dummies):
        delta = mean_difference(model, dev_data.theta, train, dev_data.dummies, settings.batch_size)
    with costs.extraction("function_vector", 2 * settings.n_prompts):
        clean, shuffled = effect_prompts(train, settings.n_prompts, settings.n_demonstrations,
                                         seed + 21)  # fmt: skip
        effect = indirect_effects(model, clean, shuffled, batch_size=settings.effect_batch_size,
                                  method=settings.fv_method)  # fmt: skip
        fv = function_vector(model, effect, settings.k)
    dev_opt, test_opt = _optimised(dev_states, settings), _optimised(test_states, settings)
    fv_rows = einops.repeat(fv.values, "d -> layer d", layer=model.cfg.n_layers)
    swept = {  # (dev vectors, test vectors, mode)
        "task_vector": (dev_data.theta.values, test_data.theta.values, "replace"),
        "mean_difference": (delta.values[0], delta.values[0], "add"),
        "function_vector": (fv_rows, fv_rows, "add"),
        "state_inner": (dev_opt[0].values, test_opt[0].values, "replace"),
        "state_momentum": (dev_opt[1].values, test_opt[1].values, "replace"),
    }
    curves, layers, correct, used = [], {}, {}, {}
    zero_tokens = tokens_per_prompt(model, test_data.zero_shot)
    for condition, (dev_vectors, test_vectors, mode) in swept.items():
        curve = layer_curve(model, dev_data.zero_shot_batches, dev_data.gold, dev_vectors, mode,
                            settings, task.name, condition)  # fmt: skip
        curves.append(curve)
        layers[condition] = curve.best_layer
        start = time.perf_counter()
        test_batches, gold = test_data.zero_shot_batches, test_data.gold
        correct[condition] = patched_hits(model, test_batches, gold, test_vectors, mode,
                                          curve.best_layer, settings)  # fmt: skip
        costs.inference(condition, zero_tokens, time.perf_counter() - start, len(test.examples))
        used[condition] = Used(test_data.zero_shot, test_vectors, mode, curve.best_layer)
    shared = {k: v for k, v in costs.rows["task_vector"].items() if k.startswith("extraction")}
    for state in ("state_inner", "state_momentum"):  # read in θ's pass: the same extraction
        costs.rows[state].update(shared)
    with costs.extraction("icv", 2 * min(settings.icv_pairs, len(train.examples))):
        icv = extract_icv(model, train.examples[: settings.icv_pairs],
                          batch_size=settings.batch_size)  # fmt: skip
    strengths = {s: _score(model, dev_data.zero_shot, [icv.intervention(strength=s)], settings)
                 for s in settings.icv_strengths}  # fmt: skip
    icv_strength = max(strengths, key=lambda s: (sum(strengths[s]), -abs(s)))
    demos = per_class(task.with_examples(train.examples), settings.i2cl_shots, seed + 41)
    with costs.extraction("i2cl", len(demos) * (1 + settings.epochs)):
        vectors = context_vectors(model, scored, demos, batch_size=settings.batch_size)
        i2cl = calibrate(model, vectors, scored, demos, epochs=settings.epochs, lr=settings.lr,
                         weight_decay=settings.weight_decay, noise=settings.noise,
                         batch_size=settings.calibration_batch, seed=seed + 42)  # fmt: skip
    same = [ICLPrompt.build(scored, demos, q) for q in test.examples]
    plain = {  # (prompts, items)
        "zero_shot": (test_data.zero_shot, []),
        "icl": (test_data.icl, []),
        "icl_i2cl_demos": (same, []),
        "icv": (test_data.zero_shot, [icv.intervention(strength=icv_strength)]),
        "i2cl": (test_data.zero_shot, [i2cl.intervention()]),
    }
    for condition, (prompts, items) in plain.items():
        used[condition] = Used(prompts, items=items)
        start = time.perf_counter()
        correct[condition] = _score(model, prompts, items, settings)
        seconds = time.perf_counter() - start
        costs.inference(condition, tokens_per_prompt(model, prompts), seconds, len(prompts))
    if task.is_classification:
        correct |= _label_words(model, task, test.examples, demos, i2cl, settings)
    geometry = {
        "task_vector": dev_data.theta.values.mean(0),
        "mean_difference": delta.values[0],
        "function_vector": fv_rows,
        "state_inner": dev_opt[0].values.mean(0),
        "state_momentum": dev_opt[1].values.mean(0),
        "icv": icv.vector,
        "i2cl": i2cl.residual_change(),
    }
    at = {name: layers.get(name, layers["task_vector"]) for name in geometry}
    _warn_without_icl_gain(task.name, correct)
    return AtlasTask(
        task.name, kind, model.cfg.n_layers, len(dev.examples), len(test.examples), layers,
        icv_strength, correct, curves, list(costs.rows.values()), geometry,
        lens(model, geometry, at, settings.lens_top), i2cl.provenance["calibration"]["losses"],
        used, {"function_vector": fv, "mean_difference": delta, "icv": icv, "i2cl": i2cl},
    )  # fmt: skip


def evaluate(
    model, tasks: Sequence[Task], settings: Settings, progress: bool = True
) -> AtlasResults:
    """``evaluate_task`` for every task; every task's size and answers are checked first."""
    tasks = [resolve(t) for t in tasks]
    for task in tasks:
        scoring.check_answers(model, as_io(task))
        plan.check_fits(task, plan.sizes_of(settings), settings.seed, "vector-atlas")
    results = [
        evaluate_task(model, task, settings, progress)
        for task in tqdm(tasks, desc="vector atlas", disable=not progress, leave=False)
    ]
    return AtlasResults(results, settings)


def _warn_without_icl_gain(task: str, correct: dict[str, list[bool]]) -> None:
    """The atlas measures how much of ICL's gain a vector recovers: say so when there is none."""
    gain = stats.paired(correct["icl"], correct["zero_shot"])
    if gain.low <= 0:
        validate.warn(
            f"vector atlas, task {task!r}: ICL's gain over zero-shot is {gain} "
            f"(n = {gain.n}), an interval that includes zero; no vector on this task can be "
            "judged by the share of a gain that is not shown (more test queries or another "
            "model may show one)"
        )


def _optimised(states, settings: Settings) -> tuple:
    """(inner, momentum) state vectors of a split."""
    inner = states.inner(last=settings.inner_last)
    momentum = states.momentum(settings.momentum_beta, settings.momentum_lr, settings.inner_last)
    return inner, momentum


def _score(model, prompts, items, settings: Settings) -> list[bool]:
    return hits(model, prompts, items, settings.batch_size)


def _label_words(model, task: Task, queries, demos, i2cl, settings: Settings) -> dict:
    """Label-word accuracy (argmax over the classes' first tokens), as I2CL reports it."""
    zero = [ICLPrompt.zero_shot(task, q) for q in queries]
    same = [ICLPrompt.build(task, demos, q) for q in queries]
    return {
        "zero_shot:labels": _score(model, zero, [], settings),
        "icl_i2cl_demos:labels": _score(model, same, [], settings),
        "i2cl:labels": _score(model, zero, [i2cl.intervention()], settings),
    }
