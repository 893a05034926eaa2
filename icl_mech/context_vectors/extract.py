"""I2CL's context vectors: each demonstration runs alone, batched; at its last token every
layer's attention and MLP outputs are read (``icl_mech.activations``) and averaged over the
demonstrations (Li et al. 2025, their "split demonstrations", last token, mean fusion)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import einops

from icl_mech import validate
from icl_mech.activations import read_activations
from icl_mech.context_vectors.i2cl import INITIAL, ContextVectors, initial_coefficients
from icl_mech.context_vectors.injection import MODULES, module_points
from icl_mech.errors import IclMechError
from icl_mech.prompts import Demonstration, Task
from icl_mech.vectors import model_name, package_version


def demonstration_text(task: Task, demonstration: Demonstration) -> str:
    """One demonstration as the prompt renders it, alone: ``template(x) + prefix + y``."""
    return task.template.replace("{x}", demonstration.x) + task.answer_prefix + demonstration.y


def per_class(task: Task, n: int, seed: int = 0) -> list[Demonstration]:
    """``n`` demonstrations per class (classification; I2CL's 5 shots per class), or ``n`` in
    all (input→output tasks), drawn with ``seed`` from the task's examples."""
    validate.count(n, "demonstrations per class")
    rng = random.Random(seed)
    if not task.is_classification:
        if len(task.examples) < n:
            raise IclMechError(
                f"task {task.name!r}: {n} demonstrations asked, it has {len(task.examples)}"
            )
        return rng.sample(list(task.examples), n)
    chosen = []
    for label, examples in task.by_class().items():
        if len(examples) < n:
            raise IclMechError(
                f"task {task.name!r}: {n} demonstrations per class asked, class {label!r} has "
                f"{len(examples)}; ask for fewer or give more examples"
            )
        chosen += rng.sample(examples, n)
    rng.shuffle(chosen)
    return chosen


def context_vectors(
    model,
    task: Task,
    demonstrations: Sequence[Demonstration],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool | str = False,
) -> ContextVectors:
    """The mean attention and MLP outputs at the demonstrations' last tokens, at every (or the
    given) layer; one forward per batch of demonstrations. Coefficients start at I2CL's
    ``(a, b) = (1.0, 0.1)``."""
    if len(demonstrations) == 0:
        raise IclMechError(f"task {task.name!r}: no demonstrations given for context vectors")
    for index, demo in enumerate(demonstrations):
        if not isinstance(demo, Demonstration):
            raise IclMechError(
                f"context_vectors: demonstration {index} is a {type(demo).__name__} ({demo!r}); "
                "give Demonstration(x, y) items, e.g. from task.examples"
            )
    layers = validate.layers(model, layers, "context_vectors layers")
    validate.count(batch_size, "context_vectors batch_size")
    texts = [demonstration_text(task, demo) for demo in demonstrations]
    names = module_points(model, layers)
    read = read_activations(model, texts, names, "last", batch_size, progress)
    values = einops.rearrange(
        read.mean(0), "(layer module) d_model -> layer module d_model", module=len(MODULES)
    )
    provenance = {
        "kind": "i2cl",
        "model": model_name(model),
        "d_model": model.cfg.d_model,
        "n_layers": model.cfg.n_layers,
        "task": task.name,
        "template": task.template,
        "answer_prefix": task.answer_prefix,
        "n_demonstrations": len(demonstrations),
        "demonstrations": [[d.x, d.y] for d in demonstrations],
        "initial_coefficients": list(INITIAL),
        "icl_mech_version": package_version(),
    }
    coefficients = initial_coefficients(len(layers))
    return ContextVectors(values.float(), coefficients, tuple(layers), provenance)
