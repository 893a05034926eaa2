"""One split of one task for the atlas: per query its demonstrations and dummies, the zero-shot
and ICL prompts, and the states after every demonstration, read in one batched pass; θ is the
final state (Hendel's task vector, the same numbers as ``task_vectors.extract``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from icl_mech import scoring
from icl_mech.batching import batched, encode_text
from icl_mech.context_vectors.states import StateVectors, extract_states
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompts import Task
from icl_mech.task_vectors.evaluate import SplitData
from icl_mech.task_vectors.extract import draw_dummies, sample_sets
from icl_mech.task_vectors.vector import TaskVector


def as_io(task: Task) -> Task:
    """A classification task scored like every input→output task (its label word's first
    content token, reached greedily over the whole vocabulary), so every vector of the atlas
    is scored by one rule; input→output tasks come back unchanged."""
    return dataclasses.replace(task, classes=None) if task.is_classification else task


def prepare(
    model, task: Task, train: Task, queries: Sequence, settings, seed: int
) -> tuple[SplitData, StateVectors]:
    """The split's prompts and θ per query (``SplitData``, as the task-vector protocol holds
    them) and its state vectors, from one pass over the demonstrations + dummy prompts."""
    sets = sample_sets(train, len(queries), settings.n_demonstrations, seed, queries=queries)
    dummies = draw_dummies(train, sets, settings.n_dummies, seed, queries=queries)
    states = extract_states(model, train, sets, dummies, seed=seed, batch_size=settings.batch_size)
    meta = {**states.provenance, "kind": "theta"}
    theta = TaskVector(states.values[:, -1].clone(), states.layers, meta)
    zero_shot = [ICLPrompt.zero_shot(task, q) for q in queries]
    icl = [ICLPrompt.build(task, demos, q) for demos, q in zip(sets, queries)]
    gold = scoring.golds(model, zero_shot)
    tokenised = list(batched(model, zero_shot, settings.batch_size))
    return SplitData(zero_shot, icl, theta, dummies, gold, tokenised), states


def tokens_per_prompt(model, prompts: Sequence[ICLPrompt]) -> float:
    """The mean number of tokens a prompt puts through the model (BOS included)."""
    return sum(len(encode_text(model, p.text)) for p in prompts) / len(prompts)
