"""ICL state vectors (Li et al., NeurIPS 2024), adapted to this package's task-vector protocol.

Our adaptation: the paper reads attention-head outputs; we read the residual stream
``blocks.{l}.hook_resid_post``, as task vectors do, so every product is a ``TaskVector``
(kind ``"state-vector"``) that saves, loads and patches like θ (replacement at one layer).

A prompt is ``ICLPrompt.build(task, demonstrations, dummy_query)``: n demonstrations, then a
query. The **state after demonstration i** (i = 1..n) is the residual at the token just before
the first token of demonstration i's answer, where the model predicts that answer (found from
the batch's label positions, so left padding and multi-token answers change nothing). The
**final state** (step n + 1) is at the query's last token: Hendel's θ for that prompt. So a
prompt has n + 1 states at every layer, all read in one forward (``CaptureStates``).

- ``inner(last)``: the mean of the last ``last`` states (the final one included);
- ``momentum(beta, lr, last)``: the successive differences ``g_i = s_{i+1} - s_i`` are
  gradients; ``m = Σ_i β^(steps-1-i) g_i / Σ_i β^(steps-1-i)`` (the newest weighs most; β = 0.5
  gives the paper's weights 1, 2, 4, 8, 16) and the result is ``inner(last) + lr · m``.

Divide-and-conquer aggregation is :mod:`icl_mech.context_vectors.aggregation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech import validate
from icl_mech.activations import stop_layer
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Probe, attach, points, register
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Demonstration, Task
from icl_mech.task_vectors.extract import draw_dummies
from icl_mech.task_vectors.vector import POINT_SUFFIX, TaskVector, provenance

KIND = "state-vector"
STATE_POSITIONS = "the token before each demonstration's answer, then the query's last token"


def before_answers(batch: PromptBatch, n: int) -> Int[Tensor, "batch n"]:
    """Per row, the position just before the first answer token of its first ``n``
    demonstrations (indices into the padded sequence)."""
    out = []
    for b, row in enumerate(batch.rows):
        if len(row.labels) < n:
            raise IclMechError(
                f"row {b} of the batch has {len(row.labels)} demonstrations, {n} state "
                "positions asked; give prompts with at least that many demonstrations"
            )
        for d, tokens in enumerate(row.labels[:n]):
            if not tokens:
                raise IclMechError(f"row {b}: demonstration {d} has no answer token")
        out.append([tokens[0] - 1 for tokens in row.labels[:n]])
    return torch.tensor(out, dtype=torch.long).reshape(len(batch), n)


def state_positions(batch: PromptBatch) -> Int[Tensor, "batch steps"]:
    """Per row, the n + 1 state positions: before each demonstration's answer, then the last
    token. Every row must hold the same number of demonstrations."""
    counts = sorted({len(row.labels) for row in batch.rows})
    if len(counts) != 1:
        raise IclMechError(
            f"state positions: the batch's rows hold {counts} demonstrations; every prompt "
            "needs the same number (n demonstrations give n + 1 states)"
        )
    return torch.cat([before_answers(batch, counts[0]), batch.targets[:, None]], dim=1)


@register("capture-states")
@dataclass(repr=False)
class CaptureStates(Probe):
    """Record the residual stream after each of ``layers`` at every state position of each row;
    ``states[layer]`` is ``[batch, steps, d_model]`` (detached)."""

    layers: tuple[int, ...]
    states: dict[int, Tensor] = field(default_factory=dict, init=False)

    def specs(self, model, batch):
        if batch is None:
            raise IclMechError(
                "CaptureStates needs a PromptBatch to find the state positions: "
                "attach(model, probe, batch=batch)"
            )
        where = state_positions(batch)
        rows = torch.arange(len(batch))[:, None]

        def recorder(layer: int):
            def record(activation, hook):
                picked = activation[rows.to(activation.device), where.to(activation.device)]
                self.states[layer] = picked.detach().clone()

            return record

        names = points(model, POINT_SUFFIX, self.layers)
        return [HookSpec(name, recorder(layer)) for name, layer in zip(names, self.layers)]


def read_states(
    model,
    prompts: Sequence[ICLPrompt],
    layers: Sequence[int],
    batch_size: int = 16,
    progress: bool | str = False,
    interventions: Sequence = (),
) -> Float[Tensor, "prompts steps layer d_model"]:
    """Every prompt's states at ``layers``, one forward per batch (no gradients), in input
    order on the CPU; ``interventions`` are attached before the probe (it sees their values)."""
    names = [f"blocks.{layer}.{POINT_SUFFIX}" for layer in layers]
    forward = {"stop_at_layer": stop_layer(names)}
    out = None
    for index, batch in batched(model, prompts, batch_size, progress=progress):
        probe = CaptureStates(tuple(layers))
        with torch.no_grad(), attach(model, *interventions, probe, batch=batch):
            model(batch.tokens, attention_mask=batch.attention_mask, **forward)
        stacked = torch.stack([probe.states[layer] for layer in layers], dim=2).cpu()
        if out is None:
            out = stacked.new_empty((len(prompts), *stacked.shape[1:]))
        out[torch.tensor(index)] = stacked
    return out


@dataclass(repr=False)
class StateVectors:
    """``values[s, t, i]``: set ``s``'s state after step ``t`` (the last step is the final
    state, θ) at layer ``layers[i]``, averaged over the set's dummy queries."""

    values: Float[Tensor, "sets steps layer d_model"]
    layers: tuple[int, ...]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        self.layers = tuple(int(layer) for layer in self.layers)
        self.values = validate.tensor(self.values, "StateVectors values")
        if self.values.ndim != 4 or self.values.shape[2] != len(self.layers):
            raise IclMechError(
                f"StateVectors values must have shape [sets, steps, {len(self.layers)} layers, "
                f"d_model], got {tuple(self.values.shape)}"
            )

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def steps(self) -> int:
        return self.values.shape[1]

    @property
    def d_model(self) -> int:
        return self.values.shape[-1]

    def __repr__(self) -> str:
        task = self.provenance.get("task", "?")
        return (
            f"StateVectors(task={task!r}, sets={len(self)}, steps={self.steps}, "
            f"layers={self.layers[0]}..{self.layers[-1]}, d_model={self.d_model})"
        )

    def inner(self, last: int | None = None) -> TaskVector:
        """Inner optimisation: the mean of the last ``last`` states (default: every state);
        ``last=1`` is the final state, θ."""
        last = self._last(last, "inner")
        return self._vector(self.values[:, -last:].mean(1), method="inner", last=last)

    def momentum(self, beta: float = 0.5, lr: float = 1.0, last: int | None = None) -> TaskVector:
        """Momentum optimisation: ``inner(last) + lr · m``, ``m`` the β-weighted mean of the
        successive differences (the newest weighs 1, the one before β, then β², ...)."""
        beta = validate.real(beta, "momentum beta")
        if not 0 <= beta < 1:
            raise IclMechError(f"momentum beta={beta} is out of range; expected 0 <= beta < 1")
        lr = validate.real(lr, "momentum lr")
        if self.steps < 2:
            raise IclMechError(
                f"momentum needs at least 2 steps (1 demonstration), these state vectors "
                f"hold {self.steps}"
            )
        last = self._last(last, "momentum")
        n = self.steps - 1
        weights = torch.tensor([beta ** (n - 1 - i) for i in range(n)], dtype=self.values.dtype)
        differences = self.values[:, 1:] - self.values[:, :-1]
        step = einops.einsum(differences, weights, "s t l d, t -> s l d") / weights.sum()
        base = self.values[:, -last:].mean(1)
        return self._vector(base + lr * step, method="momentum", beta=beta, lr=lr, last=last)

    def to_frame(self) -> pd.DataFrame:
        """One row per set, step (1..steps; the last is the final state) and layer: the state's
        norm and its cosine to the final state."""
        final = self.values[:, -1:].expand_as(self.values)
        norms = self.values.norm(dim=-1)
        cosines = torch.nn.functional.cosine_similarity(self.values, final, dim=-1)
        sets, steps, n_layers = norms.shape
        index = pd.MultiIndex.from_product(
            [range(sets), range(1, steps + 1), self.layers], names=["set", "step", "layer"]
        )
        frame = pd.DataFrame(
            {"norm": norms.reshape(-1).numpy(), "cosine_to_final": cosines.reshape(-1).numpy()},
            index=index,
        )
        return frame.reset_index()

    def _last(self, last: int | None, method: str) -> int:
        if last is None:
            return self.steps
        return validate.count(
            last,
            f"{method} last",
            maximum=self.steps,
            hint=f" (these state vectors hold {self.steps} steps)",
        )

    def _vector(self, values: Tensor, method: str, **parameters) -> TaskVector:
        meta = {**self.provenance, "kind": KIND, "method": method, **parameters}
        return TaskVector(values, self.layers, meta)


def extract_states(
    model,
    task: Task,
    demonstration_sets: Sequence[Sequence[Demonstration]],
    dummies: Sequence[Sequence[Demonstration | str]] | None = None,
    n_dummies: int = 2,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool | str = False,
) -> StateVectors:
    """Every set's n + 1 states at every (or the given) layer, averaged over its dummy queries.

    Arguments as in ``task_vectors.extract``: ``dummies[s]`` are set ``s``'s dummy queries
    (default: ``n_dummies`` drawn with ``seed``); every set holds the same number of
    demonstrations and of dummies.
    """
    check_sets(task, demonstration_sets)
    layers = validate.layers(model, layers, "extract_states layers")
    validate.count(batch_size, "extract_states batch_size")
    points(model, POINT_SUFFIX, layers)
    if dummies is None:
        dummies = draw_dummies(task, demonstration_sets, n_dummies, seed)
    lengths = [len(d) for d in dummies]
    if len(dummies) != len(demonstration_sets) or len(set(lengths)) != 1 or lengths[0] < 1:
        raise IclMechError(
            f"extract_states dummies: need one non-empty list per demonstration set "
            f"({len(demonstration_sets)}), all of the same length; got lengths {lengths}"
        )
    prompts = [
        ICLPrompt.build(task, demos, query)
        for demos, queries in zip(demonstration_sets, dummies)
        for query in queries
    ]
    states = read_states(model, prompts, layers, batch_size, progress)
    values = einops.reduce(states, "(sets dummy) t l d -> sets t l d", "mean", dummy=lengths[0])
    n = len(demonstration_sets[0])
    meta = provenance(model, task, layers, seed, kind=KIND, n_demonstrations=n)
    meta.update(n_dummies=lengths[0], steps=n + 1, state_positions=STATE_POSITIONS)
    return StateVectors(values, tuple(layers), meta)


def check_sets(task: Task, demonstration_sets: Sequence[Sequence[Demonstration]]) -> None:
    """At least one set, none empty, all of the same size."""
    if len(demonstration_sets) == 0:
        raise IclMechError(f"task {task.name!r}: no demonstration sets given (got [])")
    sizes = [len(demos) for demos in demonstration_sets]
    if 0 in sizes:
        raise IclMechError(
            f"task {task.name!r}: demonstration set {sizes.index(0)} is empty (set sizes "
            f"{sizes}); a state vector needs at least one demonstration"
        )
    if len(set(sizes)) != 1:
        raise IclMechError(
            f"task {task.name!r}: demonstration sets of sizes {sizes}; state vectors need every "
            "set to hold the same number of demonstrations (the same number of steps)"
        )
