"""Registry interventions that put a task vector into the residual stream.

- ``ReplaceResidual`` ("task-vector"): Hendel et al.'s patch — overwrite
  ``blocks.{layer}.hook_resid_post`` at the query's last token with θ (at ``strength`` s < 1,
  move it to ``(1 - s)·x + s·θ``; 0 changes nothing).
- ``AddToResidual`` ("task-vector-add"): the additive variant — add ``strength * v_l`` at one or
  several layers (θ itself, or the mean ICL − zero-shot difference, function-vector style).

A vector is ``[d_model]`` (same for every row) or ``[batch, d_model]`` (one per row).
Both touch only the positions given (default: the last token of the prompt), so under a
key/value cache they belong to the prompt's pass only (see ``generate.greedy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Intervention, points, register
from icl_mech.interventions import AddVector, Patch
from icl_mech.positions import Positions

SUFFIX = "hook_resid_post"


def resid_point(model, layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``, with a clear error for a layer out of range."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise IclMechError(f"layer must be an int, got {layer!r}")
    return points(model, SUFFIX, [layer])[0]


def check_rows(vector: Tensor, batch, what: str) -> None:
    if vector.ndim not in (1, 2):
        raise IclMechError(
            f"{what} must be [d_model] or [batch, d_model], got {tuple(vector.shape)}"
        )
    if vector.ndim == 2 and batch is not None and vector.shape[0] != len(batch):
        raise IclMechError(
            f"{what} has {vector.shape[0]} rows but the batch has {len(batch)} prompts"
        )


@register("task-vector")
@dataclass(repr=False)
class ReplaceResidual(Intervention):
    """Overwrite the residual stream after ``layer`` at ``positions`` with ``vector`` (θ);
    ``strength`` s interpolates, ``(1 - s)·x + s·θ`` (1: Hendel's replacement, 0: nothing)."""

    vector: Float[Tensor, "*batch d_model"]
    layer: int
    positions: Positions = "last"
    strength: float = 1.0

    def __post_init__(self):
        self.strength = validate.real(self.strength, "task-vector strength")

    def specs(self, model, batch):
        point = resid_point(model, self.layer)
        check_rows(self.vector, batch, f"task vector for {point!r}")
        if self.strength == 1.0:
            return Patch(point, self.vector, self.positions).specs(model, batch)
        (spec,) = Patch(point, self.vector, self.positions).specs(model, batch)

        def interpolate(activation, hook):  # untouched positions: patched - activation == 0
            return activation + self.strength * (spec.fn(activation, hook) - activation)

        return [HookSpec(point, interpolate)]


@register("task-vector-add")
@dataclass(repr=False)
class AddToResidual(Intervention):
    """Add ``strength * vectors[layer]`` to the residual stream after each given layer."""

    vectors: Mapping[int, Float[Tensor, "*batch d_model"]]
    strength: float = 1.0
    positions: Positions = "last"

    def specs(self, model, batch):
        if not self.vectors:
            raise IclMechError("AddToResidual needs at least one layer -> vector")
        specs = []
        for layer, vector in self.vectors.items():
            point = resid_point(model, layer)
            check_rows(vector, batch, f"vector for {point!r}")
            specs += AddVector(point, vector, self.positions, self.strength).specs(model, batch)
        return specs
