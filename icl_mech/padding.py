"""The one padding rule of every batched run: rows are left-padded (every row's last real token
sits at the last position) with the tokenizer's pad token, else its end-of-sequence token,
else 0; the attention mask hides the padding, so padding changes no number."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from icl_mech.errors import IclMechError


def pad_token_id(tokenizer) -> int:
    """The one pad rule: the pad token, else the end-of-sequence token, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def left_pad_rows(rows: Sequence[Sequence[int]], fill: int) -> Int[Tensor, "batch seq"]:
    """Integer rows right-aligned in a ``[batch, longest]`` tensor, ``fill`` on the left."""
    longest = max((len(row) for row in rows), default=0)
    out = torch.full((len(rows), longest), fill, dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            out[b, longest - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
    return out


def pad_tokens(
    model, ids: Sequence[Sequence[int]], what: str = "input"
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
    """(tokens, attention mask) of token-id lists, left-padded by the pad rule."""
    if len(ids) == 0:
        raise IclMechError(f"nothing to pad: no {what} given")
    longest = max(len(row) for row in ids)
    if longest > model.cfg.n_ctx:
        raise IclMechError(
            f"{what} of {longest} tokens is longer than the context of "
            f"{model.cfg.model_name} ({model.cfg.n_ctx} tokens)"
        )
    tokens = left_pad_rows(ids, pad_token_id(model.tokenizer))
    mask = left_pad_rows([[1] * len(row) for row in ids], 0)
    return tokens, mask
