"""The hook registry: every method is an Intervention or a Probe, attached by ``attach``.

An item yields ``HookSpec``s (hook point name or filter, function, "fwd" | "bwd") computed
from the model and the ``PromptBatch``. ``attach`` is the only place hooks are added; it
validates every spec before any forward pass and removes all hooks on every exit path
(exceptions and KeyboardInterrupt included) through ``model.hooks``.

Composition order: items run in the order given to ``attach``. On the same hook point a
later item sees the activation as the earlier items left it; on different hook points the
model's own order decides. So ``attach(model, steer, capture)`` captures the steered values.

The catalogue names kinds so an experiment can be written as data: ``make("patch", ...)``.
Register your own with ``@register("my-kind")``.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

import torch
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.positions import Positions, resolve
from icl_mech.prompts import PromptBatch

Direction = Literal["fwd", "bwd"]


@dataclass(frozen=True)
class HookSpec:
    point: str | Callable[[str], bool]  # a hook point name, or a filter on names
    fn: Callable  # fn(activation, hook) -> new activation or None
    direction: Direction = "fwd"


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
        raise IclMechError(f"unknown kind {kind!r}; registered kinds: {sorted(CATALOGUE)}")
    return CATALOGUE[kind](**params)


def kinds() -> dict[str, str]:
    """Registered kinds with the first line of their description."""
    return {k: (cls.__doc__ or "").strip().splitlines()[0] for k, cls in sorted(CATALOGUE.items())}


@contextmanager
def attach(model, *items: Hooked | HookSpec, batch: PromptBatch | None = None) -> Iterator:
    """Attach the items' hooks for the duration of the block; yields the model."""
    specs = collect_specs(model, items, batch)
    fwd = [(s.point, s.fn) for s in specs if s.direction == "fwd"]
    bwd = [(s.point, s.fn) for s in specs if s.direction == "bwd"]
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=True):
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
        if spec.direction not in ("fwd", "bwd"):
            raise IclMechError(f"hook direction must be 'fwd' or 'bwd', got {spec.direction!r}")
        if isinstance(spec.point, str):
            check_point(model, spec.point)
    return specs


def check_point(model, name: str) -> None:
    if name not in model.hook_dict:
        close = difflib.get_close_matches(name, list(model.hook_dict), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise IclMechError(f"unknown hook point {name!r} on {_model_name(model)}{hint}")


def points(model, suffix: str, layers: Iterable[int] | None = None) -> list[str]:
    """Hook point names ``blocks.{l}.{suffix}`` for the given layers (default: all)."""
    layers = range(model.cfg.n_layers) if layers is None else list(layers)
    names = []
    for layer in layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise IclMechError(
                f"layer {layer} out of range for {_model_name(model)} ({model.cfg.n_layers} layers)"
            )
        names.append(f"blocks.{layer}.{suffix}")
        check_point(model, names[-1])
    return names


def position_dim(point: str) -> int:
    """Which dimension of this hook point's activation indexes (query) positions."""
    return 2 if point.endswith(("hook_pattern", "hook_attn_scores")) else 1


def width(model, point: str) -> int | None:
    """Size of the last dimension at a hook point, where it is known from the config."""
    d_model = (
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_attn_out",
        "hook_mlp_out",
        "hook_embed",
        "hook_pos_embed",
    )
    if point.endswith(d_model):
        return model.cfg.d_model
    if point.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return model.cfg.d_mlp
    if point.endswith(("hook_q", "hook_k", "hook_v", "hook_z")):
        return model.cfg.d_head
    return None


def position_mask(
    point: str, activation: Tensor, positions: Positions, batch: PromptBatch | None
) -> Tensor:
    """The positions selector as a mask broadcastable against the activation."""
    dim = position_dim(point)
    mask = resolve(positions, activation.shape[0], activation.shape[dim], batch)
    shape = [activation.shape[0]] + [1] * (activation.ndim - 1)
    shape[dim] = activation.shape[dim]
    return mask.to(activation.device).view(shape)


def broadcast_value(value: Tensor, activation: Tensor, point: str) -> Tensor:
    """Expand a value of shape [*trailing], [batch, *trailing] or the activation's own shape."""
    value = value.to(activation.device, activation.dtype)
    trailing = activation.shape[position_dim(point) + 1 :]
    if value.shape == activation.shape:
        return value
    if value.shape == trailing:
        return value.expand_as(activation)
    if value.shape == (activation.shape[0], *trailing):
        view = [activation.shape[0]] + [1] * (activation.ndim - 1 - len(trailing)) + list(trailing)
        return value.view(view).expand_as(activation)
    raise IclMechError(
        f"value of shape {tuple(value.shape)} does not fit hook point {point!r} "
        f"with activation {tuple(activation.shape)}: expected {tuple(trailing)}, "
        f"[batch, *{tuple(trailing)}] or the full shape"
    )


def check_width(model, point: str, value: Tensor, what: str) -> None:
    expected = width(model, point)
    if expected is not None and value.shape[-1] != expected:
        raise IclMechError(
            f"{what} has width {value.shape[-1]} but {point!r} of "
            f"{_model_name(model)} has width {expected}"
        )


def _model_name(model) -> str:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "model_name", type(model).__name__)


def _short(value) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{list(value.shape)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in value.items()) + "}"
    return repr(value)


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

    def specs(self, model, batch):
        def record(activation, hook):
            if isinstance(self.positions, str) and self.positions == "all":
                self.activations[hook.name] = activation.detach().clone()
                return None
            mask = resolve(
                self.positions,
                activation.shape[0],
                activation.shape[position_dim(hook.name)],
                batch,
            )
            if not bool((mask.sum(dim=1) == 1).all()):
                raise IclMechError(
                    f"Capture at {hook.name!r}: positions={self.positions!r} "
                    "selects several positions in a row; use positions='all'"
                )
            index = mask.float().argmax(dim=1).to(activation.device)
            picked = activation.movedim(position_dim(hook.name), 1)
            self.activations[hook.name] = picked[torch.arange(len(index)), index].detach().clone()
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
    value: Tensor
    positions: Positions = "last"

    def specs(self, model, batch):
        check_width(model, self.point, self.value, "patch value")

        def overwrite(activation, hook):
            mask = position_mask(hook.name, activation, self.positions, batch)
            return torch.where(mask, broadcast_value(self.value, activation, hook.name), activation)

        return [HookSpec(self.point, overwrite)]


@register("add")
@dataclass(repr=False)
class AddVector(Intervention):
    """Add ``scale * vector`` to the activation at ``positions``."""

    point: str
    vector: Tensor
    positions: Positions = "all"
    scale: float = 1.0

    def specs(self, model, batch):
        check_width(model, self.point, self.vector, "vector")

        def add(activation, hook):
            mask = position_mask(hook.name, activation, self.positions, batch)
            delta = broadcast_value(self.vector, activation, hook.name) * self.scale
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
    mean: Tensor | None = None

    def specs(self, model, batch):
        if self.mode not in ("zero", "mean"):
            raise IclMechError(f"Ablate mode must be 'zero' or 'mean', got {self.mode!r}")
        if self.mean is not None:
            check_width(model, self.point, self.mean, "mean")

        def ablate(activation, hook):
            mask = position_mask(hook.name, activation, self.positions, batch)
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
