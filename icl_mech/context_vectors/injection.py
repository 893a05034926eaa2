"""I2CL's injection as a registry Intervention: every layer's attention and MLP outputs, at
every position, become a linear combination of themselves and the context vector.

At layer l and module m (``attn``: ``blocks.{l}.hook_attn_out``, ``mlp``:
``blocks.{l}.hook_mlp_out``) the output ``out`` becomes ``a·out + b·cv`` (Li et al. 2025), with
``(a, b) = coefficients[l, m]``. ``strength`` s scales the change, ``out + s·((a − 1)·out + b·cv)``:
1 is I2CL as calibrated, 0 changes nothing. The coefficients may require grad (calibration);
the context vectors never do. ``noise`` > 0 adds I2CL's calibration noise after the
combination: Gaussian, per token scaled by the output's norm (``noise · ‖out'‖ · N(0, 1)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.hook_points import position_mask
from icl_mech.hooks import HookSpec, Intervention, points, register
from icl_mech.positions import Positions, check, normalise

MODULES = ("attn", "mlp")
POINTS = {"attn": "hook_attn_out", "mlp": "hook_mlp_out"}


def module_points(model, layers: Sequence[int]) -> list[str]:
    """``[blocks.l.hook_attn_out, blocks.l.hook_mlp_out for l in layers]`` (checked)."""
    attn = points(model, POINTS["attn"], layers)
    mlp = points(model, POINTS["mlp"], layers)
    return [name for pair in zip(attn, mlp) for name in pair]


@register("i2cl")
@dataclass(repr=False)
class InjectContext(Intervention):
    """I2CL: ``out ← a·out + b·cv`` at every layer's attention and MLP output (strength scales
    the change; 0 changes nothing)."""

    vectors: Float[Tensor, "layer module d_model"]
    coefficients: Float[Tensor, "layer module 2"]
    layers: tuple[int, ...]
    strength: float = 1.0
    positions: Positions = "all"
    noise: float = 0.0
    generator: torch.Generator | None = None

    def __post_init__(self):
        self.layers = tuple(self.layers)
        self.strength = validate.real(self.strength, "i2cl strength")
        self.noise = validate.real(self.noise, "i2cl noise")
        if self.noise < 0:
            raise IclMechError(f"i2cl noise must be >= 0 (a scale), got {self.noise}")
        self.positions = normalise(self.positions, "i2cl positions")
        n = len(self.layers)
        if self.vectors.ndim != 3 or tuple(self.vectors.shape[:2]) != (n, len(MODULES)):
            raise IclMechError(
                f"i2cl vectors must be [{n} layers, {len(MODULES)} modules, d_model], got "
                f"{tuple(self.vectors.shape)}"
            )
        if tuple(self.coefficients.shape) != (n, len(MODULES), 2):
            raise IclMechError(
                f"i2cl coefficients must be [{n} layers, {len(MODULES)} modules, 2 (a, b)], got "
                f"{tuple(self.coefficients.shape)}"
            )

    def specs(self, model, batch):
        names = module_points(model, self.layers)
        if self.vectors.shape[-1] != model.cfg.d_model:
            raise IclMechError(
                f"i2cl vectors have d_model {self.vectors.shape[-1]}, the model {model.cfg.d_model}"
            )
        positions = check(self.positions, batch, "i2cl positions")
        specs = []
        for index, name in enumerate(names):
            layer, module = divmod(index, len(MODULES))
            specs.append(HookSpec(name, self._combine(layer, module, positions, batch)))
        return specs

    def _combine(self, layer: int, module: int, positions, batch):
        def combine(activation, hook):
            a, b = self.coefficients[layer, module].to(activation.device, activation.dtype)
            vector = self.vectors[layer, module].to(activation.device, activation.dtype)
            change = (a - 1) * activation + b * vector
            mask = position_mask(hook.name, activation, positions, batch)
            out = activation + self.strength * mask * change
            if self.noise > 0:
                scale = out.detach().norm(dim=-1, keepdim=True) * self.noise
                draw = torch.randn(out.shape, generator=self.generator, dtype=out.dtype)
                out = out + draw.to(out.device) * scale
            return out

        return combine
