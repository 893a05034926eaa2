"""Divide-and-conquer aggregation of state vectors (Li et al., NeurIPS 2024), for more
demonstrations than fit in one prompt.

The demonstrations are split into consecutive groups of ``group_size`` (a shorter last group is
allowed); each group's vector is the final state of ``group + dummy query``, averaged over the
dummies. An aggregation prompt then holds one placeholder demonstration (a *slot*) per group
and a dummy query: at each slot's state position (the token before its answer, as in
:mod:`icl_mech.context_vectors.states`) the residual after every extracted layer is replaced by
that group's vector at that layer (``PatchStates``), and the final state read at the query's
last token is the aggregated vector, averaged over the dummies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import validate
from icl_mech.activations import last_token_states
from icl_mech.context_vectors.states import KIND, before_answers, read_states
from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Intervention, points, register
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompts import Demonstration, Task
from icl_mech.task_vectors.vector import POINT_SUFFIX, TaskVector, provenance


@register("patch-states")
@dataclass(repr=False)
class PatchStates(Intervention):
    """Overwrite the residual after each of ``layers`` at the state positions of each row's
    first ``slots`` demonstrations: ``values[..., j, i]`` goes to demonstration ``j``'s position
    after layer ``layers[i]``. ``values`` is ``[slots, layer, d_model]`` (every row) or
    ``[batch, slots, layer, d_model]`` (one per row)."""

    values: Float[Tensor, "*batch slots layer d_model"]
    layers: tuple[int, ...]

    def __post_init__(self):
        self.layers = tuple(int(layer) for layer in self.layers)
        self.values = validate.tensor(self.values, "PatchStates values", min_ndim=3)
        if self.values.ndim > 4 or self.values.shape[-2] != len(self.layers):
            raise IclMechError(
                f"PatchStates values must be [slots, {len(self.layers)} layers, d_model] or "
                f"[batch, slots, {len(self.layers)} layers, d_model], got "
                f"{tuple(self.values.shape)}"
            )

    def specs(self, model, batch):
        names = points(model, POINT_SUFFIX, self.layers)
        if batch is None:
            raise IclMechError(
                "PatchStates needs a PromptBatch to find the state positions: "
                "attach(model, patch, batch=batch)"
            )
        if self.values.shape[-1] != model.cfg.d_model:
            raise IclMechError(
                f"PatchStates values have d_model {self.values.shape[-1]}, the model "
                f"{model.cfg.model_name!r} has {model.cfg.d_model}"
            )
        if self.values.ndim == 4 and self.values.shape[0] != len(batch):
            raise IclMechError(
                f"PatchStates values hold {self.values.shape[0]} rows, the batch {len(batch)}"
            )
        where = before_answers(batch, self.values.shape[-3])
        values = self.values.expand(len(batch), *self.values.shape[-3:])
        rows = torch.arange(len(batch))[:, None]

        def patcher(i: int):
            def patch(activation, hook):
                out = activation.clone()
                device = activation.device
                new = values[:, :, i].to(device, activation.dtype)
                out[rows.to(device), where.to(device)] = new
                return out

            return patch

        return [HookSpec(name, patcher(i)) for i, name in enumerate(names)]


def split_groups(
    demonstrations: Sequence[Demonstration], group_size: int
) -> list[list[Demonstration]]:
    """Consecutive groups of ``group_size``; the last may be shorter; at least two groups."""
    group_size = validate.count(group_size, "divide_and_conquer group_size")
    groups = [
        list(demonstrations[start : start + group_size])
        for start in range(0, len(demonstrations), group_size)
    ]
    if len(groups) < 2:
        raise IclMechError(
            f"divide_and_conquer: group_size={group_size} splits {len(demonstrations)} "
            f"demonstrations into {len(groups)} group(s); aggregation needs at least 2, so use "
            f"group_size < {len(demonstrations)}"
        )
    return groups


def aggregate(
    model,
    task: Task,
    group_vectors: Float[Tensor, "groups layer d_model"],
    layers: Sequence[int],
    slots: Sequence[Demonstration],
    dummies: Sequence[Demonstration | str],
    batch_size: int = 16,
) -> Float[Tensor, "layer d_model"]:
    """The final state of ``slots[:groups] + dummy`` with slot ``j``'s state replaced by
    ``group_vectors[j]`` after every layer, averaged over the dummies."""
    n_groups = group_vectors.shape[0]
    if len(slots) < n_groups:
        raise IclMechError(
            f"aggregation: {len(slots)} slots given for {n_groups} groups; give at least "
            f"{n_groups} placeholder demonstrations"
        )
    patch = PatchStates(group_vectors, tuple(layers))
    prompts = [ICLPrompt.build(task, slots[:n_groups], dummy) for dummy in dummies]
    states = read_states(model, prompts, layers, batch_size, interventions=(patch,))
    return states[:, -1].mean(0)


def divide_and_conquer(
    model,
    task: Task,
    demonstrations: Sequence[Demonstration],
    group_size: int,
    dummies: Sequence[Demonstration | str],
    slots: Sequence[Demonstration],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
) -> TaskVector:
    """One state vector for many demonstrations: each group's final state (averaged over
    ``dummies``) is patched into a slot of an aggregation prompt, whose final state at every
    (or the given) layer is the result (one set)."""
    groups = split_groups(demonstrations, group_size)
    if len(dummies) == 0:
        raise IclMechError("divide_and_conquer: no dummy queries given (dummies=[])")
    if len(slots) < len(groups):
        raise IclMechError(
            f"divide_and_conquer: {len(slots)} slots given for {len(groups)} groups "
            f"({len(demonstrations)} demonstrations, group_size={group_size}); give at least "
            f"{len(groups)} placeholder demonstrations"
        )
    layers = validate.layers(model, layers, "divide_and_conquer layers")
    validate.count(batch_size, "divide_and_conquer batch_size")
    points(model, POINT_SUFFIX, layers)
    prompts = [ICLPrompt.build(task, group, dummy) for group in groups for dummy in dummies]
    ICLPrompt.build(task, slots[: len(groups)], dummies[0])  # bad slots fail before any forward
    finals = last_token_states(model, prompts, layers, batch_size)
    group_vectors = einops.reduce(finals, "(g dummy) l d -> g l d", "mean", dummy=len(dummies))
    values = aggregate(model, task, group_vectors, layers, slots, dummies, batch_size)
    meta = provenance(model, task, layers, None, kind=KIND, n_demonstrations=len(demonstrations))
    meta.update(
        method="divide-and-conquer",
        group_size=group_size,
        n_groups=len(groups),
        last_group_size=len(groups[-1]),
        short_last_group=len(groups[-1]) < group_size,
        n_dummies=len(dummies),
    )
    return TaskVector(values[None], tuple(layers), meta)
