"""The query's positions after a (compressed) context cache: ``ContinuePositions`` puts the
query tokens at their full-prompt positions, rotating rotary queries and keys by the entries
missing from the cache (``rotate``) or overwriting learned position embeddings. See
:mod:`icl_mech.anchors.compression`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        if is_bridge(model):
            raise unsupported(
                "continue-positions",
                model,
                "the bridge runs the Hugging Face model's attention, which takes the query's "
                "positions as position_ids (answer() passes them); no hook moves them",
            )
        if model.cfg.positional_embedding_type == "standard":
            return [HookSpec("hook_pos_embed", lambda x, hook: self._embed(model, x))]
        names = points(model, "attn.hook_rot_q") + points(model, "attn.hook_rot_k")
        return [HookSpec(name, lambda x, hook: self._rotate(model, x, hook.name)) for name in names]

    def _embed(self, model, pos_embed: Float[Tensor, "batch q d_model"]) -> Tensor:
        mask = self.query_mask.to(pos_embed.device)
        true = self.start.to(mask.device)[:, None] + (mask.cumsum(1) - 1).clamp(min=0)
        if int(true.max()) >= model.cfg.n_ctx:
            raise IclMechError(f"query reaches position {int(true.max())} >= n_ctx")
        return model.pos_embed.W_pos[true] * mask[:, :, None]

    def _rotate(self, model, x: Float[Tensor, "batch pos head d_head"], name: str) -> Tensor:
        new = self.query_mask.shape[1]  # the keys also hold the cached entries, first
        steps = self.gap.to(x.device)[:, None].expand(-1, new)
        moved = rotate(model.blocks[int(name.split(".")[1])].attn, x[:, -new:], steps)
        return moved if new == x.shape[1] else torch.cat([x[:, :-new], moved], dim=1)
