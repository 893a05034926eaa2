"""Position selectors: which tokens an intervention or probe touches.

A selector is resolved, at hook time, against the activation's sequence length and the
``PromptBatch`` (if any) into a boolean mask ``[batch, seq]``:

- ``"all"``: every position;  ``"last"``: the last position (the target q under left padding);
- a role of the batch: ``"target"``, ``"labels"``, ``"label-first"``, ``"input"``,
  ``"template"``, ``"separator"``, ``"query"``;
- an int or a list of ints (negative counts from the end), the same for every row;
- a bool tensor ``[batch, seq]``, or a long tensor ``[batch]`` (one position per row).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.prompts import ROLES, PromptBatch

Positions = str | int | Sequence[int] | Tensor
BATCH_SELECTORS = ("target", "labels", "label-first") + tuple(r for r in ROLES if r != "pad")


def resolve(
    positions: Positions, batch_size: int, seq_len: int, batch: PromptBatch | None = None
) -> Bool[Tensor, "batch seq"]:
    if isinstance(positions, str):
        return _resolve_name(positions, batch_size, seq_len, batch)
    if isinstance(positions, Tensor):
        return _resolve_tensor(positions, batch_size, seq_len)
    indices = [positions] if isinstance(positions, int) else list(positions)
    out = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    for i in indices:
        if not -seq_len <= i < seq_len:
            raise IclMechError(f"position {i} is outside a sequence of {seq_len} tokens")
        out[:, i] = True
    return out


def _resolve_name(name: str, batch_size: int, seq_len: int, batch: PromptBatch | None):
    if name == "all":
        return torch.ones(batch_size, seq_len, dtype=torch.bool)
    if name == "last":
        return resolve(-1, batch_size, seq_len)
    if name not in BATCH_SELECTORS:
        raise IclMechError(
            f"unknown position selector {name!r}; choose 'all', 'last', an int, "
            f"a tensor, or one of {BATCH_SELECTORS}"
        )
    if batch is None:
        raise IclMechError(
            f"position selector {name!r} needs a PromptBatch: attach(model, ..., batch=batch)"
        )
    if (batch_size, seq_len) != tuple(batch.tokens.shape):
        raise IclMechError(
            f"position selector {name!r} was resolved for a batch of shape "
            f"{tuple(batch.tokens.shape)} but the activation has batch "
            f"{batch_size} and {seq_len} positions (generation with a cache?)"
        )
    if name == "labels":
        return batch.label_mask()
    if name == "label-first":
        return batch.label_mask(first_token_only=True)
    return batch.mask(name)


def _resolve_tensor(positions: Tensor, batch_size: int, seq_len: int):
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch_size, seq_len):
            raise IclMechError(
                f"position mask has shape {tuple(positions.shape)}, expected "
                f"[batch, seq] = {(batch_size, seq_len)}"
            )
        return positions
    if positions.ndim != 1 or positions.shape[0] != batch_size:
        raise IclMechError(
            f"per-row positions must have shape [batch] = [{batch_size}], got "
            f"{tuple(positions.shape)}"
        )
    out = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    out[torch.arange(batch_size), positions.long()] = True
    return out
