"""I2CL's context vectors as data: per layer and module the mean output at the demonstrations'
last token, with the coefficients ``(a, b)`` that inject them (``icl_mech.vectors``).

``values[i, m]`` is module m's output (``MODULES``: attention, MLP) at layer ``layers[i]``,
averaged over demonstrations each run alone; ``coefficients[i, m] = (a, b)``, I2CL's initial
``(1.0, 0.1)`` until :func:`icl_mech.context_vectors.calibrate.calibrate` learns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech.context_vectors.injection import MODULES, POINTS, InjectContext
from icl_mech.errors import IclMechError
from icl_mech.positions import Positions
from icl_mech.vectors import Vector

INITIAL = (1.0, 0.1)  # (a, b): I2CL's initial coefficients


@dataclass(repr=False)
class ContextVectors(Vector):
    """I2CL context vectors [layer, module, d_model] and their coefficients [layer, module, 2];
    ``provenance`` says where they came from (and how they were calibrated)."""

    KINDS = ("i2cl",)
    TENSORS = ("values", "coefficients")

    values: Float[Tensor, "layer module d_model"]
    coefficients: Float[Tensor, "layer module 2"]
    layers: tuple[int, ...]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        self.layers = tuple(int(layer) for layer in self.layers)
        shape = (len(self.layers), len(MODULES))
        if self.values.ndim != 3 or tuple(self.values.shape[:2]) != shape:
            raise IclMechError(
                f"ContextVectors values must be [{shape[0]} layers, {shape[1]} modules, "
                f"d_model], got {tuple(self.values.shape)}"
            )
        if tuple(self.coefficients.shape) != (*shape, 2):
            raise IclMechError(
                f"ContextVectors coefficients must be [{shape[0]} layers, {shape[1]} modules, "
                f"2 (a, b)], got {tuple(self.coefficients.shape)}"
            )
        saved = self.provenance.get("d_model")
        if saved is not None and int(saved) != self.d_model:
            raise IclMechError(
                f"ContextVectors values have d_model {self.d_model} but the provenance says {saved}"
            )
        super().__post_init__()

    @property
    def d_model(self) -> int:
        return self.values.shape[-1]

    @property
    def calibrated(self) -> bool:
        return "calibration" in self.provenance

    def with_coefficients(self, coefficients: Tensor, **calibration) -> ContextVectors:
        """The same context vectors with other coefficients (detached), and how they came."""
        provenance = (
            {**self.provenance, "calibration": calibration}
            if calibration
            else dict(self.provenance)
        )
        return replace(self, coefficients=coefficients.detach().clone(), provenance=provenance)

    def residual_change(self) -> Float[Tensor, "layer d_model"]:
        """What the injection writes into the residual at a layer beyond scaling the outputs:
        ``b_attn·cv_attn + b_mlp·cv_mlp`` (the part comparable with other vectors)."""
        return (self.coefficients[..., 1:] * self.values).sum(1)

    def build(
        self, *, layers: tuple[int, ...] | None, strength: float = 1.0, positions: Positions = "all"
    ) -> InjectContext:
        """``InjectContext`` at every (or the given) layer, at every position by default."""
        chosen = self.layers if layers is None else layers
        missing = [layer for layer in chosen if layer not in self.layers]
        if missing:
            raise IclMechError(
                f"ContextVectors hold layers {self.layers[0]}..{self.layers[-1]}, not {missing}"
            )
        index = [self.layers.index(layer) for layer in chosen]
        return InjectContext(
            self.values[index], self.coefficients[index], tuple(chosen), strength, positions
        )

    def tensors(self) -> dict[str, Tensor]:
        return {"values": self.values, "coefficients": self.coefficients}

    def metadata(self) -> dict:
        hook_points = [f"blocks.{layer}.{POINTS[m]}" for layer in self.layers for m in MODULES]
        return {
            "hook_points": hook_points,
            "positions": "last",
            **self.provenance,
            "layers": list(self.layers),
            "modules": list(MODULES),
            "d_model": self.d_model,
        }

    @classmethod
    def from_data(cls, tensors: dict[str, Tensor], provenance: dict) -> ContextVectors:
        return cls(
            tensors["values"], tensors["coefficients"], tuple(provenance["layers"]), provenance
        )

    def to_frame(self) -> pd.DataFrame:
        """Per layer and module: the context vector's norm and the coefficients a, b."""
        rows = []
        for i, layer in enumerate(self.layers):
            for m, module in enumerate(MODULES):
                a, b = self.coefficients[i, m].tolist()
                norm = float(self.values[i, m].norm())
                rows.append({"layer": layer, "module": module, "norm": norm, "a": a, "b": b})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        task = self.provenance.get("task", "?")
        state = "calibrated" if self.calibrated else "initial coefficients"
        n = self.provenance.get("n_demonstrations", "?")
        return (
            f"ContextVectors(task={task!r}, layers={self.layers[0]}..{self.layers[-1]}, "
            f"d_model={self.d_model}, demonstrations={n}, {state})"
        )


def initial_coefficients(n_layers: int) -> Tensor:
    """``(a, b) = (1.0, 0.1)`` at every layer and module."""
    return torch.tensor(INITIAL).expand(n_layers, len(MODULES), 2).clone()
