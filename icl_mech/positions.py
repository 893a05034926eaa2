"""Position selectors: which tokens an intervention or probe touches.

A selector is resolved against the activation's sequence length and the ``PromptBatch`` (if
any) into a boolean mask ``[batch, seq]``:

- ``"all"``: every position;  ``"last"``: the last position (the target q under left padding);
- a role of the batch: ``"target"``, ``"labels"``, ``"label-first"``, ``"input"``,
  ``"template"``, ``"separator"``, ``"query"``;
- an int or a non-empty list of ints (negative counts from the end), the same for every row;
- a bool tensor ``[batch, seq]``, or an integer tensor ``[batch]`` (one position per row).

Bools, floats and float tensors are refused (``True`` would select position 1, ``1.7`` would
be truncated). Items check their selector with :func:`check` when their specs are built, so
with a batch every range and shape error comes before the forward pass.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.icl_prompt import ROLES
from icl_mech.prompt_batch import PromptBatch

Positions = str | int | Sequence[int] | Tensor
BATCH_SELECTORS = ("target", "labels", "label-first") + tuple(r for r in ROLES if r != "pad")
NAMED = ("all", "last") + BATCH_SELECTORS


def check(positions: Positions, batch: PromptBatch | None, what: str) -> Positions:
    """The selector normalised; resolved against ``batch`` when there is one (else only its
    type is known: ranges are then checked when the hook runs)."""
    positions = normalise(positions, what, warn_empty=False)
    if batch is not None:
        resolve(positions, len(batch), batch.seq_len, batch, what)
    elif isinstance(positions, str) and positions in BATCH_SELECTORS:
        raise IclMechError(_needs_batch(positions, what))
    return positions


def normalise(selector, name: str = "positions", warn_empty: bool = True) -> Positions:
    """The selector as a str, an int, a list of ints or a tensor, or an error (numpy arrays
    become tensors); an all-False mask is a warning, it changes nothing."""
    if isinstance(selector, (bool, np.bool_)):
        raise IclMechError(
            f"{name}={selector!r} is a bool, not a position; use 'all' for every position, "
            "an int index, or a bool mask tensor [batch, seq]"
        )
    if isinstance(selector, str):
        if selector not in NAMED:
            close = difflib.get_close_matches(selector, NAMED, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise IclMechError(
                f"unknown position selector {name}={selector!r}; choose an int, a tensor, "
                f"or one of {list(NAMED)}{hint}"
            )
        return selector
    if validate.is_integer(selector):
        return int(selector)
    if isinstance(selector, np.ndarray):
        selector = torch.from_numpy(selector)
    if isinstance(selector, Tensor):
        return _position_tensor(selector, name, warn_empty)
    if isinstance(selector, numbers.Number):
        raise IclMechError(
            f"{name}={selector!r} is not a whole number; positions are token indices (ints)"
        )
    if isinstance(selector, Sequence):
        bad = [p for p in selector if not validate.is_integer(p)]
        if bad:
            raise IclMechError(
                f"{name}={validate.shown(selector)} holds {bad[:3]}, which are not int positions"
            )
        if len(selector) == 0:
            raise IclMechError(f"{name}=[] selects no position; give at least one index")
        return [int(p) for p in selector]
    raise IclMechError(
        f"{name}={validate.shown(selector)} is not a position selector; expected a name such as "
        "'all' or 'last', an int, a list of ints, a bool mask [batch, seq] or a tensor [batch]"
    )


def _position_tensor(selector: Tensor, name: str, warn_empty: bool) -> Tensor | int:
    if selector.device.type == "meta":
        raise IclMechError(f"{name} is a meta tensor (no values); build it on 'cpu'")
    if selector.dtype == torch.bool:
        if selector.ndim != 2:
            raise IclMechError(
                f"{name}: a bool position mask must be [batch, seq], got shape "
                f"{list(selector.shape)}"
            )
        if warn_empty and not bool(selector.any()):
            validate.warn(f"{name}: the position mask selects no position; nothing will change")
        return selector
    if selector.is_floating_point() or selector.is_complex():
        raise IclMechError(
            f"{name} is {validate.shown(selector)}; positions must be an integer tensor "
            "(floats would be truncated). Use .round().long() if you meant whole numbers"
        )
    if selector.ndim == 0:
        return int(selector)
    if selector.ndim != 1:
        raise IclMechError(
            f"{name}: per-row positions must be a 1-d integer tensor [batch], got shape "
            f"{list(selector.shape)}; use a bool mask [batch, seq] to select several"
        )
    return selector.long()


def resolve(
    positions: Positions,
    batch_size: int,
    seq_len: int,
    batch: PromptBatch | None = None,
    what: str = "positions",
) -> Bool[Tensor, "batch seq"]:
    positions = normalise(positions, what, warn_empty=False)
    if isinstance(positions, str):
        return _resolve_name(positions, batch_size, seq_len, batch, what)
    if isinstance(positions, Tensor):
        return _resolve_tensor(positions, batch_size, seq_len, what)
    indices = [positions] if isinstance(positions, int) else positions
    out = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    for i in indices:
        if not -seq_len <= i < seq_len:
            raise IclMechError(
                f"{what}: position {i} is outside a sequence of {seq_len} tokens "
                f"(valid: {-seq_len}..{seq_len - 1})"
            )
        out[:, i] = True
    return out


def _needs_batch(name: str, what: str) -> str:
    return (
        f"{what}: position selector {name!r} needs a PromptBatch: "
        "attach(model, ..., batch=batch) or run(model, batch, ...)"
    )


def _resolve_name(
    name: str, batch_size: int, seq_len: int, batch: PromptBatch | None, what: str
) -> Bool[Tensor, "batch seq"]:
    if name == "all":
        return torch.ones(batch_size, seq_len, dtype=torch.bool)
    if name == "last":
        return resolve(-1, batch_size, seq_len)
    if batch is None:
        raise IclMechError(_needs_batch(name, what))
    if (batch_size, seq_len) != tuple(batch.tokens.shape):
        raise IclMechError(
            f"{what}: position selector {name!r} was resolved for a batch of shape "
            f"{tuple(batch.tokens.shape)} but the activation has batch "
            f"{batch_size} and {seq_len} positions (generation with a cache?)"
        )
    if name == "labels":
        return batch.label_mask()
    if name == "label-first":
        return batch.label_mask(first_token_only=True)
    return batch.mask(name)


def _resolve_tensor(
    positions: Tensor, batch_size: int, seq_len: int, what: str
) -> Bool[Tensor, "batch seq"]:
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch_size, seq_len):
            raise IclMechError(
                f"{what}: position mask has shape {tuple(positions.shape)}, expected "
                f"[batch, seq] = {(batch_size, seq_len)}"
            )
        return positions.cpu()
    if tuple(positions.shape) != (batch_size,):
        raise IclMechError(
            f"{what}: per-row positions must have shape [batch] = [{batch_size}], got "
            f"{tuple(positions.shape)}"
        )
    positions = positions.cpu().long()
    outside = (positions < -seq_len) | (positions >= seq_len)
    if bool(outside.any()):
        rows = outside.nonzero().flatten().tolist()
        raise IclMechError(
            f"{what}: per-row positions {positions[rows].tolist()} (rows {rows}) are outside "
            f"a sequence of {seq_len} tokens (valid: {-seq_len}..{seq_len - 1})"
        )
    out = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    out[torch.arange(batch_size), positions] = True
    return out
