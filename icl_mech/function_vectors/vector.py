"""A function vector is data: the sum of the top heads' mean outputs in the residual stream.

``contributions[i] = mean_z[l, h] @ W_O[l][h]`` for head ``heads[i] = (l, h)`` (its mean output
over clean ICL prompts at the last token, pushed through its slice of ``W_O``; the layer's
output bias ``b_O`` belongs to no head and is left out), and ``values`` is their sum
(``[d_model]``; zero for no heads). Todd et al. 2024 add it to the hidden state a layer
outputs; here that is ``blocks.{layer}.hook_resid_post``, at the prompt's last token, the point
the task vectors are patched at, so the two compare at the same layer index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.function_vectors.heads import Head, check_heads, head_output_weights, head_point
from icl_mech.positions import Positions
from icl_mech.task_vectors.patching import AddToResidual
from icl_mech.vectors import Vector, model_name, package_version

TARGET = "hook_resid_post"


@dataclass(repr=False)
class FunctionVector(Vector):
    """Σ over ``heads`` of each head's mean output through its slice of ``W_O``."""

    KINDS = ("function-vector",)
    TENSORS = ("values", "contributions")

    values: Float[Tensor, " d_model"]
    contributions: Float[Tensor, "head d_model"]  # one row per head of ``heads``
    heads: tuple[Head, ...]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        self.heads = tuple((int(layer), int(head)) for layer, head in self.heads)
        d_model = self.values.shape[-1] if self.values.ndim == 1 else None
        if d_model is None or tuple(self.contributions.shape) != (len(self.heads), d_model):
            raise IclMechError(
                f"FunctionVector: values {tuple(self.values.shape)} must be [d_model] and "
                f"contributions {tuple(self.contributions.shape)} [{len(self.heads)} heads, "
                "d_model]"
            )
        super().__post_init__()

    def __repr__(self) -> str:
        task = self.provenance.get("task", "?")
        shown = ", ".join(f"L{layer}H{head}" for layer, head in self.heads[:4])
        more = f", ... ({len(self.heads)} heads)" if len(self.heads) > 4 else ""
        return (
            f"FunctionVector(task={task!r}, heads=[{shown}{more}], d_model={self.d_model}, "
            f"norm={float(self.values.norm()):.3g})"
        )

    @property
    def d_model(self) -> int:
        return self.values.shape[-1]

    def build(
        self,
        *,
        layers: tuple[int, ...] | None,
        strength: float = 1.0,
        positions: Positions = "last",
    ) -> AddToResidual:
        """Add ``strength * values`` to ``blocks.{layer}.hook_resid_post`` at ``positions``
        after each given layer (the registry's additive residual kind, ``"task-vector-add"``)."""
        if not layers:
            raise TypeError(
                "FunctionVector needs layer= (the layer it is added after, e.g. the one chosen "
                "on dev), or layers= for several"
            )
        strength = validate.real(strength, "FunctionVector strength")
        return AddToResidual(dict.fromkeys(layers, self.values), strength, positions)

    def tensors(self) -> dict[str, Tensor]:
        return {"values": self.values, "contributions": self.contributions}

    def metadata(self) -> dict:
        layers = sorted({layer for layer, _ in self.heads})
        return {
            "positions": "last",
            **self.provenance,
            "heads": [list(h) for h in self.heads],
            "layers": layers,
            "source_hook_points": [head_point(layer) for layer in layers],
            "target_hook_point": f"blocks.{{layer}}.{TARGET}",
            "d_model": self.d_model,
        }

    @classmethod
    def from_data(cls, tensors: dict[str, Tensor], provenance: dict) -> FunctionVector:
        heads = tuple(tuple(h) for h in provenance["heads"])
        return cls(tensors["values"], tensors["contributions"], heads, provenance)


def head_contributions(
    model, mean_outputs: Float[Tensor, "head d_head"], heads: Sequence[Head]
) -> Float[Tensor, "head d_model"]:
    """Each head's mean output through its own slice of ``W_O`` (no bias)."""
    heads = check_heads(model, heads, "head_contributions heads", allow_empty=True)
    if tuple(mean_outputs.shape) != (len(heads), model.cfg.d_head):
        raise IclMechError(
            f"head_contributions: mean outputs of shape {tuple(mean_outputs.shape)}; expected "
            f"[{len(heads)} heads, d_head={model.cfg.d_head}]"
        )
    if not heads:
        return torch.zeros(0, model.cfg.d_model)
    with torch.no_grad():
        rows = [
            mean_outputs[i].to(model.cfg.device, model.cfg.dtype)
            @ head_output_weights(model, layer)[head]
            for i, (layer, head) in enumerate(heads)
        ]
    return torch.stack(rows).detach().cpu()


def function_vector(
    model,
    effect: IndirectEffect,
    k: int = 10,
    heads: Sequence[Head] | None = None,
) -> FunctionVector:
    """The function vector of the ``k`` heads with the largest indirect effect (or of the given
    ``heads``): Σ of their mean outputs through ``W_O``. ``k=0`` (or ``heads=[]``) gives zero."""
    total = len(effect.layers) * effect.n_heads
    if heads is None:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total:
            raise IclMechError(
                f"function_vector k={k!r}: the indirect effect of {effect.task!r} covers {total} "
                f"heads ({len(effect.layers)} layers x {effect.n_heads} heads of "
                f"{model_name(model)}); choose k in 0..{total}"
            )
        heads = effect.top(k)
    heads = check_heads(model, heads, "function_vector heads", allow_empty=True)
    if effect.n_heads != model.cfg.n_heads or effect.mean_outputs.shape[-1] != model.cfg.d_head:
        raise IclMechError(
            f"function_vector: the indirect effect has {effect.n_heads} heads of width "
            f"{effect.mean_outputs.shape[-1]}, {model_name(model)} has {model.cfg.n_heads} of "
            f"width {model.cfg.d_head}: compute it on this model"
        )
    outputs = (
        torch.stack([effect.output_of(h) for h in heads])
        if heads
        else torch.zeros(0, model.cfg.d_head)
    )
    contributions = head_contributions(model, outputs, heads)
    values = contributions.sum(0) if heads else torch.zeros(model.cfg.d_model)
    mean = effect.mean
    meta = {
        "model": model_name(model),
        "d_model": model.cfg.d_model,
        "n_layers": model.cfg.n_layers,
        "n_heads": model.cfg.n_heads,
        "task": effect.task,
        "k": len(heads),
        "indirect_effects": [float(mean[effect.layers.index(layer), h]) for layer, h in heads],
        "n_clean_prompts": effect.n_clean,
        "n_shuffled_prompts": effect.n_prompts,
        "icl_mech_version": package_version(),
    }
    return FunctionVector(values, contributions, tuple(heads), meta)
