"""Attention heads in the registry: read (``CaptureHeads``) and overwrite (``PatchHeads``) the
output of chosen heads, and their mean output over a set of prompts (``mean_head_outputs``).

A head's output is its slice of ``blocks.{l}.attn.hook_z`` (``[batch, pos, head, d_head]``:
the attention-weighted values, before ``W_O``). The head axis counts *query* heads: on a
grouped-query model (SmolLM2: 9 query heads sharing 3 key/value heads) each query head has
its own slice, so every head can be read and patched alone. ``head_output_weights`` is a head's
slice of ``W_O``; ``z @ W_O[l][h]`` is what the head adds to the residual stream (``b_O`` is
the layer's, not a head's).

Heads are ``(layer, head)`` pairs, checked against the model before any forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import validate
from icl_mech.activations import read_activations
from icl_mech.errors import IclMechError
from icl_mech.hook_points import position_mask
from icl_mech.hooks import HookSpec, Intervention, Probe, model_name, register
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.positions import Positions, check, normalise, resolve

Head = tuple[int, int]  # (layer, head), the head counted among the layer's query heads
POINT = "attn.hook_z"


def head_point(layer: int) -> str:
    """``blocks.{layer}.attn.hook_z``."""
    return f"blocks.{layer}.{POINT}"


def check_heads(
    model, heads: Iterable, what: str = "heads", allow_empty: bool = False
) -> list[Head]:
    """``heads`` as a list of distinct ``(layer, head)`` int pairs inside the model."""
    n_layers, n_heads, name = model.cfg.n_layers, model.cfg.n_heads, model_name(model)
    expected = (
        f"expected (layer, head) pairs with layer in 0..{n_layers - 1} and head in "
        f"0..{n_heads - 1} ({name}: {n_layers} layers of {n_heads} query heads)"
    )
    if isinstance(heads, (str, bytes, Tensor)) or not isinstance(heads, Iterable):
        raise IclMechError(f"{what}={validate.shown(heads)} is not a list of heads; {expected}")
    chosen: list[Head] = []
    for item in heads:
        pair = tuple(item) if isinstance(item, (tuple, list)) else None
        if pair is None or len(pair) != 2 or not all(validate.is_integer(v) for v in pair):
            raise IclMechError(f"{what}: {item!r} is not a (layer, head) pair of ints; {expected}")
        layer, head = int(pair[0]), int(pair[1])
        if not 0 <= layer < n_layers:
            raise IclMechError(
                f"{what}: head {(layer, head)} names layer {layer}, outside {name}'s "
                f"{n_layers} layers; {expected}"
            )
        if not 0 <= head < n_heads:
            raise IclMechError(
                f"{what}: head {(layer, head)} names head {head}, but layer {layer} of {name} "
                f"has {n_heads} query heads (0..{n_heads - 1}); {expected}"
            )
        if (layer, head) in chosen:
            raise IclMechError(f"{what}: head {(layer, head)} is given twice; give each once")
        chosen.append((layer, head))
    if not chosen and not allow_empty:
        raise IclMechError(f"{what}=[] selects no head; {expected}")
    return chosen


def as_pairs(heads):
    """A list of heads with each pair as a tuple (anything else is left for ``check_heads``)."""
    if isinstance(heads, (str, bytes, Tensor)) or not isinstance(heads, Iterable):
        return heads
    return [tuple(h) if isinstance(h, (list, tuple)) else h for h in heads]


def by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    """``{layer: [index into heads, ...]}`` in the order given."""
    out: dict[int, list[int]] = {}
    for i, (layer, _) in enumerate(heads):
        out.setdefault(layer, []).append(i)
    return out


def head_output_weights(model, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """Layer ``layer``'s ``W_O``, one ``[d_head, d_model]`` slice per query head."""
    return model.blocks[validate.layer(model, layer)].attn.W_O


@register("capture-heads")
@dataclass(repr=False)
class CaptureHeads(Probe):
    """Record chosen heads' outputs (``hook_z``) at one position per row into ``outputs``.

    ``outputs`` is ``[batch, len(heads), d_head]`` after the run (heads in the order given);
    ``positions`` must pick one position per row (``"last"``, ``"target"``, an int, ...).
    """

    heads: Sequence[Head]
    positions: Positions = "last"
    outputs: Tensor | None = field(default=None, init=False)

    def __post_init__(self):
        self.heads = as_pairs(self.heads)
        self.positions = normalise(self.positions, "CaptureHeads positions")

    def specs(self, model, batch):
        heads = check_heads(model, self.heads, "CaptureHeads heads")
        positions = check(self.positions, batch, "CaptureHeads positions")
        if batch is not None:
            self._one_per_row(resolve(positions, len(batch), batch.seq_len, batch))
        self.outputs = None
        parts: dict[int, Tensor] = {}

        def record(indices: list[int]):
            def read(z, hook):  # z: [batch, pos, head, d_head]
                mask = resolve(positions, z.shape[0], z.shape[1], batch, "CaptureHeads positions")
                self._one_per_row(mask)
                rows = torch.arange(z.shape[0], device=z.device)
                at = z[rows, mask.float().argmax(1).to(z.device)]
                for i in indices:
                    parts[i] = at[:, heads[i][1]].detach().clone()
                if len(parts) == len(heads):
                    self.outputs = torch.stack([parts[i] for i in range(len(heads))], dim=1)

            return read

        groups = by_layer(heads).items()
        return [HookSpec(head_point(layer), record(indices)) for layer, indices in groups]

    def _one_per_row(self, mask: Tensor) -> None:
        if not bool((mask.sum(1) == 1).all()):
            raise IclMechError(
                f"CaptureHeads positions={self.positions!r} selects several positions (or none) "
                "in a row, but CaptureHeads keeps one per row; use 'last', 'target' or an int"
            )


@register("patch-heads")
@dataclass(repr=False)
class PatchHeads(Intervention):
    """Overwrite chosen heads' outputs (``hook_z``) at ``positions`` with ``values``.

    ``values`` is ``[len(heads), d_head]`` (every row) or ``[batch, len(heads), d_head]``; head
    ``heads[i]`` gets ``values[..., i, :]``. Zeros zero-ablate the heads.
    """

    heads: Sequence[Head]
    values: Float[Tensor, "*batch n_chosen d_head"]
    positions: Positions = "last"

    def __post_init__(self):
        self.heads = as_pairs(self.heads)
        self.values = validate.tensor(self.values, "PatchHeads values", min_ndim=2)
        self.positions = normalise(self.positions, "PatchHeads positions")

    def specs(self, model, batch):
        heads = check_heads(model, self.heads, "PatchHeads heads")
        values = self.values
        expected = f"[{len(heads)} heads, d_head={model.cfg.d_head}]"
        rows = values.shape[0] if values.ndim == 3 else None
        if values.ndim not in (2, 3) or tuple(values.shape[-2:]) != (len(heads), model.cfg.d_head):
            raise IclMechError(
                f"PatchHeads values have shape {list(values.shape)}; expected {expected} or "
                f"[batch, {len(heads)}, {model.cfg.d_head}] for heads {heads} of "
                f"{model_name(model)}"
            )
        if rows is not None and batch is not None and rows != len(batch):
            raise IclMechError(
                f"PatchHeads values have {rows} rows but the batch has {len(batch)} prompts"
            )
        positions = check(self.positions, batch, "PatchHeads positions")

        def overwrite(indices: list[int]):
            chosen = torch.tensor([heads[i][1] for i in indices])

            def patch(z, hook):  # z: [batch, pos, head, d_head]
                if rows is not None and rows != z.shape[0]:
                    raise IclMechError(
                        f"PatchHeads values have {rows} rows but {hook.name} has {z.shape[0]}"
                    )
                where = position_mask(hook.name, z, positions, batch)  # [batch, pos, 1, 1]
                new = z.clone()
                picked = values[..., indices, :].to(z.device, z.dtype)
                if picked.ndim == 2:
                    picked = einops.repeat(picked, "n d -> batch n d", batch=z.shape[0])
                current = new[:, :, chosen.to(z.device)]  # [batch, pos, n, d_head]
                new[:, :, chosen.to(z.device)] = torch.where(where, picked[:, None], current)
                return new

            return patch

        groups = by_layer(heads).items()
        return [HookSpec(head_point(layer), overwrite(indices)) for layer, indices in groups]


def mean_head_outputs(
    model,
    prompts: Sequence[ICLPrompt],
    layers: Sequence[int] | None = None,
    positions: str | int = "last",
    batch_size: int = 16,
    progress: bool | str = False,
) -> Float[Tensor, "layer head d_head"]:
    """Every head's output (``hook_z``) at one position per prompt (default the last token),
    averaged over the prompts: ``out[i, h]`` is head ``h`` of layer ``layers[i]``. One forward
    per batch, stopped after the deepest layer asked for."""
    layers = validate.layers(model, layers, "mean_head_outputs layers")
    validate.count(batch_size, "mean_head_outputs batch_size")
    if len(prompts) == 0:
        raise IclMechError("mean_head_outputs: no prompts given")
    names = [head_point(layer) for layer in layers]
    outputs = read_activations(model, prompts, names, positions, batch_size, progress)
    return outputs.mean(0)  # [prompt, layer, head, d_head] -> [layer, head, d_head]
