"""Norm-preserving steering of every layer's MLP output with in-context vectors.

At ``blocks.{l}.hook_mlp_out``, for ICVs i with strengths λ_i and layer-l directions icv_i::

    s_i = 1 + max(0, cos(x, −icv_i))
    y   = mean_i(λ_i · s_i · unit(icv_i))
    x'  = unit(unit(x) + y) · ‖x‖

computed in float32 and cast back to the model's dtype. Where the steering term y is exactly
zero (every λ = 0) the activation is returned unchanged, bit for bit (with every λ = 0 no hook is
attached at all). Unit directions and strengths are prepared once per attachment, not per step.

Positions under generation: ``"all"`` steers every position, ``"prompt"`` only the positions of
the prompt, ``"new"`` only generated tokens. With the key/value cache each generation step sees
one token, so every hook counts the positions it has already seen during the attachment: a
forward of one token after earlier positions continues the sequence; any other forward starts
at position 0 (the prompt, or an uncached re-run of the whole sequence). The prompt length is
the length of the first forward seen, unless ``prompt_length`` is given. Use one ``attach`` per
generation (``icl_mech.icv.generate`` does). Any other selector of :mod:`icl_mech.positions`
(``"last"``, a mask, ...) is applied as in the rest of the registry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Intervention, points, position_mask, register
from icl_mech.positions import BATCH_SELECTORS, Positions
from icl_mech.vectors import Vector

GENERATION_POSITIONS = ("all", "prompt", "new")
STEERED_POINT = "hook_mlp_out"
_EPS = 1e-12  # as torch.nn.functional.normalize


def unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def steer(
    x: Float[Tensor, "batch pos d_model"],
    directions: Float[Tensor, "n_icvs d_model"],
    strengths: Float[Tensor, " n_icvs"] | Float[Tensor, "batch n_icvs"],
) -> Float[Tensor, "batch pos d_model"]:
    """The ICV steering formula at one layer (float32 inside, cast back to ``x.dtype``)."""
    units = unit(directions.float().to(x.device))
    lam = strengths.float().to(x.device)
    lam = lam[:, None, :] if lam.ndim == 2 else lam  # per row: [batch, 1, n_icvs]
    return _steer(x, units, lam, untouched_rows=None)


def _steer(
    x: Float[Tensor, "batch pos d_model"],
    units: Float[Tensor, "n_icvs d_model"],
    lam: Float[Tensor, " n_icvs"] | Float[Tensor, "batch 1 n_icvs"],
    untouched_rows: Tensor | None | bool,
) -> Float[Tensor, "batch pos d_model"]:
    """``steer`` with unit directions and strengths ready. ``untouched_rows``: None to find the
    rows whose steering term is exactly zero (returned unchanged, bit for bit), False when no
    row's strengths are all zero, or a ``[batch, 1, 1]`` mask of the rows whose strengths are."""
    x32 = x.float()
    norm = torch.linalg.vector_norm(x32, dim=-1, keepdim=True)
    x_unit = x32 / norm.clamp_min(_EPS)
    # s_i = 1 + max(0, cos(x, −icv_i)) = 1 − min(0, cos(x, icv_i)): [batch, pos, n_icvs]
    similarity = 1.0 - (x_unit @ units.T).clamp_max(0.0)
    shift = (lam * similarity) @ units
    if units.shape[0] > 1:
        shift = shift / units.shape[0]  # mean over ICVs
    steered = unit(x_unit + shift) * norm
    if untouched_rows is None:
        untouched_rows = (shift == 0).all(dim=-1, keepdim=True)
    if untouched_rows is not False:
        steered = torch.where(untouched_rows, x32, steered)
    return steered.to(x.dtype)


@register("icv")
@dataclass(repr=False)
class ICVSteering(Intervention):
    """Steer ``blocks.{l}.hook_mlp_out`` towards in-context vectors, preserving the norm.

    ``strength``: one λ per ICV (a float for a single ICV), or a ``[batch, n_icvs]`` tensor
    for a different λ per row. ``layers`` defaults to every layer of the ICVs.
    """

    icvs: Vector | Sequence[Vector]  # ICVs (icl_mech.icv.ICV)
    strength: float | Sequence[float] | Tensor = 0.1
    layers: Sequence[int] | None = None
    positions: Positions = "all"
    prompt_length: int | None = None

    def __post_init__(self):
        self.icvs = [self.icvs] if isinstance(self.icvs, Vector) else list(self.icvs)
        if not self.icvs:
            raise IclMechError("ICVSteering: no ICVs given")
        for i, icv in enumerate(self.icvs):
            if getattr(icv, "kind", None) != "icv":
                raise IclMechError(f"ICVSteering: item {i} is a {type(icv).__name__}, not an ICV")
        self._lambdas = _strength_tensor(self.strength, len(self.icvs))
        known = (*GENERATION_POSITIONS, "last", *BATCH_SELECTORS)
        if isinstance(self.positions, str) and self.positions not in known:
            raise IclMechError(
                f"ICVSteering: unknown positions {self.positions!r}; choose 'all', 'prompt', "
                f"'new', or a selector of icl_mech.positions ({', '.join(known[3:])})"
            )
        if self.prompt_length is not None and self.prompt_length < 0:
            raise IclMechError(f"prompt_length must be >= 0, got {self.prompt_length}")

    def select_rows(self, start: int, stop: int) -> ICVSteering:
        """The same steering for rows ``start:stop`` of a batch (per-row strengths sliced)."""
        if self._lambdas.ndim == 1:
            return self
        if stop > len(self._lambdas):
            raise IclMechError(
                f"ICVSteering: rows {start}:{stop} asked, strengths cover {len(self._lambdas)}"
            )
        return replace(self, strength=self._lambdas[start:stop])

    def steered_layers(self, model) -> list[int]:
        for icv in self.icvs:
            icv.check_model(model)
        common = set.intersection(*(set(icv.layers) for icv in self.icvs))
        if self.layers is None:
            return sorted(common)
        missing = sorted(set(self.layers) - common)
        if missing:
            raise IclMechError(
                f"ICVSteering: layers {missing} are not covered by every ICV "
                f"(common layers: {sorted(common)})"
            )
        return sorted(set(self.layers))

    def specs(self, model, batch):
        layers = self.steered_layers(model)
        names = points(model, STEERED_POINT, layers)
        if self._lambdas.ndim == 2 and batch is not None and len(batch) != len(self._lambdas):
            raise IclMechError(
                f"ICVSteering: strengths for {len(self._lambdas)} rows, batch has {len(batch)}"
            )
        hooks = [
            (name, self._hook(layer, batch, model.cfg.device)) for layer, name in zip(layers, names)
        ]
        return [HookSpec(name, hook) for name, hook in hooks if hook is not None]

    def _hook(self, layer: int, batch, device):
        directions = torch.stack([icv.direction(layer) for icv in self.icvs]).float().to(device)
        units = unit(directions)  # once per attachment, not per forward
        lambdas = self._lambdas.to(device)
        lam = lambdas[:, None, :] if lambdas.ndim == 2 else lambdas
        zero = (lambdas == 0).all(dim=-1)  # rows whose steering term is exactly zero
        if not bool(zero.any()):
            untouched = False
        elif lambdas.ndim == 1:
            return None  # every λ is zero: nothing to do at all
        else:
            untouched = zero.view(-1, 1, 1)
        seen = {"positions": 0, "prompt": self.prompt_length}
        all_positions = isinstance(self.positions, str) and self.positions == "all"

        def steer_mlp_out(activation, hook):
            if lambdas.ndim == 2 and activation.shape[0] != lambdas.shape[0]:
                raise IclMechError(
                    f"ICVSteering at {hook.name!r}: strengths for {lambdas.shape[0]} rows, "
                    f"activation has batch {activation.shape[0]}"
                )
            mask = None if all_positions else self._mask(hook.name, activation, batch, seen)
            if mask is not None and not bool(mask.any()):
                return None
            # a model split over devices runs its layers on other devices than cfg.device
            here = activation.device
            keep = untouched if untouched is False else untouched.to(here)
            steered = _steer(activation, units.to(here), lam.to(here), keep)
            return steered if mask is None else torch.where(mask, steered, activation)

        return steer_mlp_out

    def _mask(self, name: str, activation: Tensor, batch, seen: dict) -> Tensor | None:
        n = activation.shape[1]
        continues = n == 1 and seen["positions"] > 0
        start = seen["positions"] if continues else 0
        seen["positions"] = start + n
        if seen["prompt"] is None:
            seen["prompt"] = n
        if isinstance(self.positions, str) and self.positions in GENERATION_POSITIONS:
            if self.positions == "all":
                return None
            absolute = torch.arange(start, start + n, device=activation.device)
            chosen = absolute < seen["prompt"]
            chosen = chosen if self.positions == "prompt" else ~chosen
            return chosen.view(1, n, 1)
        return position_mask(name, activation, self.positions, batch)

    def __repr__(self) -> str:
        lam = self._lambdas
        shown = lam.tolist() if lam.ndim == 1 else f"Tensor{list(lam.shape)}"
        return (
            f"ICVSteering(icvs={self.icvs!r}, strength={shown}, layers="
            f"{'all' if self.layers is None else list(self.layers)}, positions={self.positions!r})"
        )


def _strength_tensor(strengths, n_icvs: int) -> Tensor:
    if isinstance(strengths, Tensor):
        lam = strengths.detach().float().cpu()
    else:
        try:
            lam = torch.tensor(strengths, dtype=torch.float32)
        except (TypeError, ValueError) as error:
            raise IclMechError(
                f"ICVSteering: strengths must be numbers, got {strengths!r} ({error})"
            ) from None
    if lam.ndim == 0:
        lam = lam.view(1)
    shape_ok = (lam.ndim == 1 and lam.shape[0] == n_icvs) or (
        lam.ndim == 2 and lam.shape[1] == n_icvs
    )
    if not shape_ok:
        raise IclMechError(
            f"ICVSteering: {n_icvs} ICVs need {n_icvs} strengths (or a [batch, {n_icvs}] "
            f"tensor), got shape {tuple(lam.shape)}"
        )
    if not bool(torch.isfinite(lam).all()):
        bad = [v for v in lam.flatten().tolist() if not math.isfinite(v)]
        raise IclMechError(f"ICVSteering: strengths must be finite, got {bad}")
    return lam
