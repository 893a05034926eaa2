"""The built-in kinds: ``Capture`` (probe), ``Patch``, ``AddVector`` and ``Ablate``.

Values are checked when an item is built (lists and numpy arrays become tensors; 0-d, NaN,
inf, bool and ``meta`` tensors are refused, see :func:`icl_mech.validate.tensor`), and against
the model and the batch when its specs are built, so every bad shape, width or position is an
``IclMechError`` before the forward pass. The shapes at hook points are
:mod:`icl_mech.hook_points`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.hook_points import (
    broadcast_value,
    check_value,
    point_name,
    position_dim,
    position_mask,
)
from icl_mech.hooks import HookSpec, Intervention, Probe, register
from icl_mech.positions import Positions, check, normalise, resolve


@register("capture")
@dataclass(repr=False)
class Capture(Probe):
    """Record activations at hook points into ``activations[name]`` (detached).

    ``positions="all"`` keeps ``[batch, seq, ...]``; a selector choosing one position per row
    (``"last"``, ``"target"``, an int, a ``[batch]`` tensor) keeps ``[batch, ...]``.
    """

    points: str | list[str] | Callable[[str], bool]
    positions: Positions = "all"
    activations: dict[str, Tensor] = field(default_factory=dict, init=False)

    def __post_init__(self):
        if isinstance(self.points, (list, tuple)):
            if not self.points:
                raise IclMechError("Capture: points=[] names no hook point")
            for name in self.points:
                point_name(name, "Capture")
        elif not callable(self.points):
            point_name(self.points, "Capture")
        self.positions = normalise(self.positions, "Capture positions")

    def _one_per_row(self, mask: Tensor, where: str) -> None:
        if not bool((mask.sum(dim=1) == 1).all()):
            raise IclMechError(
                f"Capture at {where}: positions={self.positions!r} selects several positions "
                "(or none) in a row, but Capture keeps one per row; use positions='all'"
            )

    def specs(self, model, batch):
        positions = check(self.positions, batch, "Capture positions")
        keep_all = isinstance(positions, str) and positions == "all"
        if batch is not None and not keep_all:
            self._one_per_row(
                resolve(positions, len(batch), batch.seq_len, batch), str(self.points)
            )

        def record(activation, hook):
            if keep_all:
                self.activations[hook.name] = activation.detach().clone()
                return None
            dim = position_dim(hook.name)
            mask = resolve(positions, activation.shape[0], activation.shape[dim], batch)
            self._one_per_row(mask, repr(hook.name))
            index = mask.float().argmax(dim=1).to(activation.device)
            picked = activation.movedim(dim, 1)
            rows = torch.arange(len(index), device=activation.device)
            self.activations[hook.name] = picked[rows, index].detach().clone()
            return None

        names = (
            [self.points]
            if isinstance(self.points, str) or callable(self.points)
            else list(self.points)
        )
        return [HookSpec(name, record) for name in names]


@register("patch")
@dataclass(repr=False)
class Patch(Intervention):
    """Overwrite the activation at ``positions`` with ``value``."""

    point: str
    value: Float[Tensor, "*batch d"]
    positions: Positions = "last"

    def __post_init__(self):
        self.point = point_name(self.point, "Patch")
        self.value = validate.tensor(self.value, f"Patch value for {self.point!r}")
        self.positions = normalise(self.positions, "Patch positions")

    def specs(self, model, batch):
        check_value(model, self.point, self.value, batch, "patch value")
        positions = check(self.positions, batch, "Patch positions")

        def overwrite(activation, hook):
            mask = position_mask(hook.name, activation, positions, batch)
            return torch.where(mask, broadcast_value(self.value, activation, hook.name), activation)

        return [HookSpec(self.point, overwrite)]


@register("add")
@dataclass(repr=False)
class AddVector(Intervention):
    """Add ``strength * vector`` to the activation at ``positions``."""

    point: str
    vector: Float[Tensor, "*batch d"]
    positions: Positions = "all"
    strength: float = 1.0

    def __post_init__(self):
        self.point = point_name(self.point, "AddVector")
        self.vector = validate.tensor(self.vector, f"AddVector vector for {self.point!r}")
        self.positions = normalise(self.positions, "AddVector positions")
        self.strength = validate.real(self.strength, "AddVector strength")

    def specs(self, model, batch):
        check_value(model, self.point, self.vector, batch, "vector")
        positions = check(self.positions, batch, "AddVector positions")

        def add(activation, hook):
            mask = position_mask(hook.name, activation, positions, batch)
            delta = broadcast_value(self.vector, activation, hook.name) * self.strength
            return activation + mask * delta

        return [HookSpec(self.point, add)]


@register("ablate")
@dataclass(repr=False)
class Ablate(Intervention):
    """Zero- or mean-ablate the activation at ``positions``.

    ``mode="mean"`` replaces with ``mean`` if given, else with the mean over the batch's
    selected positions in this very run.
    """

    point: str
    positions: Positions = "all"
    mode: Literal["zero", "mean"] = "zero"
    mean: Float[Tensor, "*batch d"] | None = None

    def __post_init__(self):
        self.point = point_name(self.point, "Ablate")
        self.positions = normalise(self.positions, "Ablate positions")
        validate.choice(self.mode, "Ablate mode", ("zero", "mean"))
        if self.mean is not None:
            if self.mode != "mean":
                raise IclMechError(
                    f"Ablate at {self.point!r}: mean= is given but mode={self.mode!r}; "
                    "use mode='mean' to replace with it"
                )
            self.mean = validate.tensor(self.mean, f"Ablate mean for {self.point!r}")

    def specs(self, model, batch):
        if self.mean is not None:
            check_value(model, self.point, self.mean, batch, "mean")
        positions = check(self.positions, batch, "Ablate positions")

        def ablate(activation, hook):
            mask = position_mask(hook.name, activation, positions, batch)
            if self.mode == "zero":
                return activation.masked_fill(mask, 0.0)
            return torch.where(mask, self._mean_of(activation, mask, hook.name), activation)

        return [HookSpec(self.point, ablate)]

    def _mean_of(self, activation, mask, point):
        if self.mean is not None:
            return broadcast_value(self.mean, activation, point)
        weights = mask.expand_as(activation).to(activation.dtype)
        dims = (0, position_dim(point))
        mean = (activation * weights).sum(dims, keepdim=True) / weights.sum(dims, keepdim=True)
        return mean.expand_as(activation)
