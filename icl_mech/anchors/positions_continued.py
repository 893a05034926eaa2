"""The query's positions after a (compressed) context cache: ``ContinuePositions`` puts the
query tokens at their full-prompt positions, rotating rotary queries and keys by the entries
missing from the cache (``rotate``) or overwriting learned position embeddings. See
:mod:`icl_mech.anchors.compression`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech.backends import is_bridge, unsupported
from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Intervention, points, register


def rotate(
    attn, x: Float[Tensor, "batch pos head d_head"], steps: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos head d_head"]:
    """Advance rotary-embedded vectors by ``steps`` positions, with the layer's own tables."""
    table = attn.rotary_cos.shape[0]
    if steps.numel() and (int(steps.max()) >= table or int(steps.min()) < 0):
        raise IclMechError(f"rotary shift outside 0..{table - 1} positions")
    dim = attn.cfg.rotary_dim
    x_rot, x_pass = x[..., :dim], x[..., dim:]
    cos = attn.rotary_cos[steps][:, :, None, :].to(x.dtype)
    sin = attn.rotary_sin[steps][:, :, None, :].to(x.dtype)
    return torch.cat([x_rot * cos + attn.rotate_every_two(x_rot) * sin, x_pass], dim=-1)


def check_positions_supported(model) -> None:
    cfg, kind = model.cfg, model.cfg.positional_embedding_type
    scaled = getattr(cfg, "use_dynamic_ntk_rope", False) or getattr(cfg, "use_logn_attn", False)
    if kind not in ("rotary", "standard") or scaled:
        supported = "rotary or learned absolute positions, without length-dependent scaling"
        raise IclMechError(f"context caching needs {supported}; {cfg.model_name} uses {kind!r}")


@register("continue-positions")
@dataclass(repr=False)
class ContinuePositions(Intervention):
    """Put the query tokens run against a (compressed) cache at their full-prompt positions.

    ``start[b]``: full context length of row b, where its query begins; ``gap[b]``: entries
    missing from the cache (start - kept). Rotary: the query's queries and keys are rotated by
    the gap. Learned positions: its ``hook_pos_embed`` becomes ``W_pos`` at the true positions.
    """

    start: Int[Tensor, " batch"]
    gap: Int[Tensor, " batch"]
    query_mask: Int[Tensor, "batch q_len"]

    def specs(self, model, batch):
        check_positions_supported(model)
        if is_bridge(model) and model.cfg.positional_embedding_type == "rotary":
            return self._bridge_tables(model)
        if model.cfg.positional_embedding_type == "standard":
            return [HookSpec("hook_pos_embed", lambda x, hook: self._embed(model, x))]
        names = points(model, "attn.hook_rot_q") + points(model, "attn.hook_rot_k")
        return [HookSpec(name, lambda x, hook: self._rotate(model, x, hook.name)) for name in names]

    def _true_positions(self, device) -> Int[Tensor, "batch q_len"]:
        mask = self.query_mask.to(device)
        return self.start.to(device)[:, None] + (mask.cumsum(1) - 1).clamp(min=0)

    def _bridge_tables(self, model) -> list[HookSpec]:
        """The bridge's attention takes the rotary tables it is handed (``hook_cos``,
        ``hook_sin``): hand every layer the tables of the query's true positions, made by the
        model's own rotary embedding (per layer type where layers differ, as in Gemma 3)."""
        base = model.original_model.get_decoder()
        rotary = getattr(base, "rotary_emb", None)
        if rotary is None:
            raise unsupported("continue-positions", model, "no rotary_emb module was found")
        rotary = getattr(rotary, "original_component", None) or rotary
        layer_types = getattr(base.config, "layer_types", None)
        typed = "layer_type" in inspect.signature(rotary.forward).parameters
        tables: dict = {}

        def table(layer: int, which: int, x: Tensor, hook) -> Tensor:
            kind = layer_types[layer] if typed and layer_types else None
            if kind not in tables:
                true = self._true_positions(x.device)
                probe = torch.zeros(1, dtype=x.dtype, device=x.device)
                extra = (kind,) if typed else ()
                tables[kind] = rotary(probe, true, *extra)
            return tables[kind][which].to(x.dtype)

        specs = []
        for which, suffix in enumerate(("attn.hook_cos", "attn.hook_sin")):
            for layer, name in enumerate(points(model, suffix)):
                specs.append(HookSpec(name, partial(table, layer, which)))
        return specs

    def _embed(self, model, pos_embed: Float[Tensor, "batch q d_model"]) -> Tensor:
        mask = self.query_mask.to(pos_embed.device)
        true = self._true_positions(mask.device)
        if int(true.max()) >= model.cfg.n_ctx:
            raise IclMechError(f"query reaches position {int(true.max())} >= n_ctx")
        return model.pos_embed.W_pos[true] * mask[:, :, None]

    def _rotate(self, model, x: Float[Tensor, "batch pos head d_head"], name: str) -> Tensor:
        new = self.query_mask.shape[1]  # the keys also hold the cached entries, first
        steps = self.gap.to(x.device)[:, None].expand(-1, new)
        moved = rotate(model.blocks[int(name.split(".")[1])].attn, x[:, -new:], steps)
        return moved if new == x.shape[1] else torch.cat([x[:, :-new], moved], dim=1)
