"""The recorder behind :mod:`icl_mech.show.sites`: it wraps every forward hook function of
the items so that each call records which (row, position) entries it changed, comparing the
function's output with its input. Under the key/value cache a one-token call after earlier ones
continues the positions that hook point has seen; any other call starts at 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.hook_points import position_dim
from icl_mech.hooks import HookSpec, collect_specs


class Recorder:
    """Wraps hook functions; keeps, per (item, hook point), the changed entries of each call."""

    def __init__(self):
        self.calls: dict[tuple[int, str], list[tuple[int, Tensor]]] = {}
        self.seen: dict[tuple[int, str], int] = {}

    def wrap_items(self, model, items, batch) -> list[HookSpec]:
        wrapped = []
        for index, item in enumerate(items):  # an item without hooks (λ = 0) records nothing
            wrapped += [self.wrap(index, spec) for spec in collect_specs(model, [item], batch)]
        return wrapped

    def wrap(self, index: int, spec: HookSpec) -> HookSpec:
        if spec.direction != "fwd":
            return spec

        def recorded(activation, hook):
            before = activation.detach().clone()
            out = spec.fn(activation, hook)
            self.note(index, hook.name, before, activation if out is None else out)
            return out

        return HookSpec(spec.point, recorded, spec.direction)

    def note(self, index: int, name: str, before: Tensor, after: Tensor) -> None:
        if after.shape != before.shape:
            raise IclMechError(
                f"the hook at {name!r} returned shape {tuple(after.shape)} for an activation of "
                f"shape {tuple(before.shape)}"
            )
        after = after.detach()
        changed = (after != before) & ~(after.isnan() & before.isnan())
        changed = changed if changed.ndim > 1 else changed[:, None]
        dim = min(position_dim(name), changed.ndim - 1)
        changed = changed.movedim(dim, 1).reshape(*changed.shape[:1], changed.shape[dim], -1)
        key, n = (index, name), changed.shape[1]
        seen = self.seen.get(key, 0)
        offset = seen if n == 1 and seen > 0 else 0
        self.seen[key] = offset + n
        self.calls.setdefault(key, []).append((offset, changed.any(-1).cpu()))

    def changed(self, size: int, length: int) -> dict[tuple[int, str], Tensor]:
        out = {}
        for key, calls in self.calls.items():
            total = max([length] + [offset + mask.shape[1] for offset, mask in calls])
            mask = torch.zeros(size, total, dtype=torch.bool)
            for offset, part in calls:
                mask[:, offset : offset + part.shape[1]] |= part
            out[key] = mask[:, :length]
        return out
