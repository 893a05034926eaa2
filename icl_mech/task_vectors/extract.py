"""Extraction: θ(S) at every layer, batched over demonstration sets and dummy queries.

For each set S and each of its dummy queries x', the prompt ``S + "x' ->"`` runs once and
``hook_resid_post`` is read at its last token (``icl_mech.activations``); θ(S) is the mean over
the dummies. All prompts of all sets go through the model in left-padded batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import einops

from icl_mech import validate
from icl_mech.activations import last_token_states
from icl_mech.errors import IclMechError
from icl_mech.hooks import points
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompts import Demonstration, Task
from icl_mech.task_vectors.patching import SUFFIX
from icl_mech.task_vectors.vector import TaskVector, provenance

DemonstrationSets = Sequence[Sequence[Demonstration]]


def sample_sets(
    task: Task,
    n_sets: int,
    n_demonstrations: int = 5,
    seed: int = 0,
    queries: Sequence[Demonstration | str] | None = None,
) -> list[list[Demonstration]]:
    """``n_sets`` seeded demonstration sets of the task's examples.

    With ``queries`` (one per set), set ``i`` never holds an example that would give
    ``queries[i]`` away (``Task.leaks``: the query, its other direction, its input or answer).
    """
    validate.count(n_sets, "sample_sets n_sets")
    validate.count(
        n_demonstrations, "sample_sets n_demonstrations", hint=" (a set needs at least 1 example)"
    )
    if queries is not None and len(queries) != n_sets:
        raise IclMechError(f"sample_sets: {len(queries)} queries for {n_sets} sets; give one each")
    rng = random.Random(seed)
    targets = [None] * n_sets if queries is None else list(queries)
    return [task.sample_demonstrations(n_demonstrations, rng, exclude=q) for q in targets]


def draw_dummies(
    task: Task,
    demonstration_sets: DemonstrationSets,
    n_dummies: int = 2,
    seed: int = 0,
    queries: Sequence[Demonstration | str] | None = None,
) -> list[list[Demonstration]]:
    """Per set, ``n_dummies`` queries of the task that give none of the set's examples away
    (not among them, not their other direction, no shared input or answer: ``Task.leaks``) and,
    with ``queries`` (one per set), that give none away of the set's real query either."""
    validate.count(n_dummies, "draw_dummies n_dummies")
    if queries is not None and len(queries) != len(demonstration_sets):
        raise IclMechError(
            f"draw_dummies: {len(queries)} queries for {len(demonstration_sets)} sets; "
            "give one each"
        )
    rng = random.Random(seed)
    drawn = []
    for i, demos in enumerate(demonstration_sets):
        avoid = [*demos, *([] if queries is None else [queries[i]])]
        pool = [e for e in task.examples if not any(task.leaks(e, a) for a in avoid)]
        if len(pool) < n_dummies:
            raise IclMechError(
                f"task {task.name!r}: {n_dummies} dummy queries asked, {len(pool)} examples "
                "left that give away neither the demonstration set nor its query"
            )
        drawn.append(rng.sample(pool, n_dummies))
    return drawn


def extract(
    model,
    task: Task,
    demonstration_sets: DemonstrationSets,
    dummies: Sequence[Sequence[Demonstration | str]] | None = None,
    n_dummies: int = 2,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool | str = False,
) -> TaskVector:
    """θ(S) for every set S: ``values[s, i]`` at layer ``layers[i]`` (default: every layer).

    ``dummies[s]`` are set ``s``'s dummy queries (default: ``n_dummies`` drawn from the task's
    other examples with ``seed``); every set needs the same number of them.
    """
    _check_sets(task, demonstration_sets)
    layers = validate.layers(model, layers, "extract layers")
    validate.count(batch_size, "extract batch_size")
    points(model, SUFFIX, layers)
    if dummies is None:
        dummies = draw_dummies(task, demonstration_sets, n_dummies, seed)
    if len(dummies) != len(demonstration_sets) or len({len(d) for d in dummies}) != 1:
        raise IclMechError(
            f"dummies: need one list per demonstration set ({len(demonstration_sets)}), all of "
            f"the same length; got lengths {[len(d) for d in dummies]}"
        )
    per_set = len(dummies[0])
    if per_set < 1:
        raise IclMechError("dummies: every demonstration set needs at least one dummy query")
    prompts = [
        ICLPrompt.build(task, demos, query)
        for demos, queries in zip(demonstration_sets, dummies)
        for query in queries
    ]
    states = last_token_states(model, prompts, layers, batch_size, progress)
    values = einops.reduce(
        states, "(sets dummy) layer d_model -> sets layer d_model", "mean", dummy=per_set
    )
    meta = provenance(
        model,
        task,
        layers,
        seed,
        kind="theta",
        n_demonstrations=len(demonstration_sets[0]),
        n_dummies=per_set,
    )
    return TaskVector(values, tuple(layers), meta)


def mean_difference(
    model,
    theta: TaskVector,
    task: Task,
    dummies: Sequence[Sequence[Demonstration | str]],
    batch_size: int = 16,
) -> TaskVector:
    """The mean ICL state minus the mean zero-shot state of the same dummy queries.

    ``theta`` must come from ``extract`` with these ``dummies``; the result is one vector per
    layer (function-vector style), to be added rather than patched in.
    """
    queries = [q for per_set in dummies for q in per_set]
    if not queries:
        raise IclMechError("mean_difference: no dummy queries given")
    zero_shot = [ICLPrompt.zero_shot(task, q) for q in queries]
    zero = last_token_states(model, zero_shot, theta.layers, batch_size)
    values = (theta.values.mean(0) - zero.mean(0))[None]
    meta = {**theta.provenance, "kind": "mean-difference", "n_sets": len(theta)}
    return TaskVector(values, theta.layers, meta)


def _check_sets(task: Task, demonstration_sets: DemonstrationSets) -> None:
    if len(demonstration_sets) == 0:
        raise IclMechError(f"task {task.name!r}: no demonstration sets given")
    for index, demos in enumerate(demonstration_sets):
        if len(demos) == 0:
            raise IclMechError(
                f"task {task.name!r}: demonstration set {index} is empty; θ(S) needs at least "
                "one demonstration"
            )
