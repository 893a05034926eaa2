"""The hook registry: every method is an Intervention or a Probe, attached by ``attach``.

An item yields ``HookSpec``s (hook point name or filter, function, "fwd" | "bwd") computed
from the model and the ``PromptBatch``. ``attach`` is the only place hooks are added; it
validates every spec before any forward pass and removes all hooks on every exit path
(exceptions and KeyboardInterrupt included): :func:`icl_mech.backends.hooks_added`.

Composition order: items run in the order given to ``attach``. On the same hook point a
later item sees the activation as the earlier items left it; on different hook points the
model's own order decides. So ``attach(model, steer, capture)`` captures the steered values.

The catalogue names kinds so an experiment can be written as data: ``make("patch", ...)``.
Register your own with ``@register("my-kind")``. A kind is in the catalogue once the module
defining it is imported: ``import icl_mech`` imports the built-in kinds
(:mod:`icl_mech.interventions`) and every method package's. Hook point names and the shapes at
them are :mod:`icl_mech.hook_points`.

Checks before the forward: every spec (point name, function, direction), every item's values
and positions against the model and the batch (see :mod:`icl_mech.interventions`), and the
batch against the model (:func:`icl_mech.validate.batch`: a batch tokenised for another model
is refused).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

from torch import Tensor

from icl_mech import backends, validate
from icl_mech.errors import IclMechError
from icl_mech.hook_points import check_point, model_name, points, position_mask
from icl_mech.prompt_batch import PromptBatch

Direction = Literal["fwd", "bwd"]


@dataclass(frozen=True)
class HookSpec:
    point: str | Callable[[str], bool]  # a hook point name, or a filter on names
    fn: Callable  # fn(activation, hook) -> new activation or None
    direction: Direction = "fwd"

    def __post_init__(self):
        if not ((isinstance(self.point, str) and self.point) or callable(self.point)):
            raise IclMechError(
                f"HookSpec(point={self.point!r}, ...): point must be a hook point name such as "
                "'blocks.0.hook_resid_post', or a filter function name -> bool"
            )
        if not callable(self.fn):
            raise IclMechError(
                f"HookSpec({self.point!r}, fn={self.fn!r}): fn must be a function "
                "(activation, hook) -> new activation or None"
            )
        validate.choice(self.direction, "HookSpec direction", ("fwd", "bwd"))


class Hooked(ABC):
    """Something that yields hook specs for a model and (optionally) a batch."""

    kind: ClassVar[str] = ""

    @abstractmethod
    def specs(self, model, batch: PromptBatch | None) -> Iterable[HookSpec]: ...

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={_short(getattr(self, f.name))}" for f in fields(self) if f.repr
        )
        return f"{type(self).__name__}({shown})"


class Intervention(Hooked):
    """Changes activations."""


class Probe(Hooked):
    """Records activations (or their gradients); never changes them."""


CATALOGUE: dict[str, type[Hooked]] = {}


def register(kind: str):
    """Class decorator: name an Intervention or Probe kind in the catalogue."""

    def decorate(cls: type[Hooked]) -> type[Hooked]:
        if not (isinstance(cls, type) and issubclass(cls, Hooked)):
            raise IclMechError(f"register({kind!r}): {cls!r} is not an Intervention or Probe")
        if kind in CATALOGUE and _origin(CATALOGUE[kind]) != _origin(cls):
            raise IclMechError(f"kind {kind!r} is already registered to {CATALOGUE[kind].__name__}")
        cls.kind = kind
        CATALOGUE[kind] = cls
        return cls

    return decorate


def _origin(cls: type) -> tuple[str, str]:
    # a class redefined by re-running a notebook cell keeps its kind
    return cls.__module__, cls.__qualname__


def make(kind: str, **params) -> Hooked:
    """Build a catalogued kind from data, e.g. ``make("add", point=..., vector=...)``."""
    if kind not in CATALOGUE:
        close = difflib.get_close_matches(str(kind), list(CATALOGUE), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise IclMechError(f"unknown kind {kind!r}; registered kinds: {sorted(CATALOGUE)}{hint}")
    return CATALOGUE[kind](**params)


def kinds() -> dict[str, str]:
    """Registered kinds with the first line of their description."""
    return {k: (cls.__doc__ or "").strip().splitlines()[0] for k, cls in sorted(CATALOGUE.items())}


@contextmanager
def attach(model, *items: Hooked | HookSpec, batch: PromptBatch | None = None) -> Iterator:
    """Attach the items' hooks for the duration of the block; yields the model.

    Everything is checked before the first hook is added: the batch against the model, then
    every item's specs."""
    if batch is not None:
        validate.batch(model, batch)
    specs = collect_specs(model, items, batch)
    # filters resolved to names; each function sees the name it asked for (on the bridge too)
    fwd = backends.hook_pairs(model, [(s.point, s.fn) for s in specs if s.direction == "fwd"])
    fwd += backends.finite_padding_rows(model)  # the bridge only: finite gradients, see there
    bwd = backends.hook_pairs(model, [(s.point, s.fn) for s in specs if s.direction == "bwd"])
    with backends.hooks_added(model, fwd, bwd):
        yield model


def run(model, batch: PromptBatch, *items: Hooked | HookSpec, **forward_kwargs) -> Tensor:
    """One forward pass of the batch with the items attached; returns the logits."""
    with attach(model, *items, batch=batch):
        return model(batch.tokens, attention_mask=batch.attention_mask, **forward_kwargs)


def collect_specs(model, items, batch) -> list[HookSpec]:
    specs: list[HookSpec] = []
    for item in items:
        if isinstance(item, HookSpec):
            specs.append(item)
        elif isinstance(item, Hooked):
            specs.extend(item.specs(model, batch))
        else:
            raise IclMechError(
                f"attach: {item!r} is neither an Intervention, a Probe nor a HookSpec"
            )
    for spec in specs:
        if not isinstance(spec, HookSpec):
            raise IclMechError(f"{spec!r} is not a HookSpec (from the specs of an item)")
        if isinstance(spec.point, str):
            check_point(model, spec.point)
    return specs


def _short(value) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{list(value.shape)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in value.items()) + "}"
    return repr(value)


__all__ = [
    "CATALOGUE",
    "Direction",
    "HookSpec",
    "Hooked",
    "Intervention",
    "Probe",
    "attach",
    "check_point",
    "collect_specs",
    "kinds",
    "make",
    "model_name",
    "points",
    "position_mask",
    "register",
    "run",
]
