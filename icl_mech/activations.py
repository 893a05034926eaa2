"""One activation reader: activations at hook points, one position per input, batched.

``read_activations(model, inputs, points)`` runs ICL prompts or plain texts through the model
in left-padded batches (``icl_mech.batching``), records each point at one position per input
(default: the last token), and returns them in input order as ``[n_inputs, n_points, ...]``.
No gradients; the forward stops after the deepest block needed. Padding changes no number, so
``batch_size`` and ``sort`` change the grouping, not the result (up to float rounding).
``last_token_states`` is the residual stream at the last token, the reader every vector uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import validate
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.hook_points import check_point
from icl_mech.hooks import attach
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.interventions import Capture
from icl_mech.prompt_batch import PromptBatch

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


def read_activations(
    model,
    inputs: Sequence[ICLPrompt] | Sequence[str],
    points: str | Sequence[str],
    positions: str | int = "last",
    batch_size: int = 16,
    progress: bool | str = False,
    stop_early: bool = True,
    sort: bool = True,
) -> Float[Tensor, "n_inputs n_points *shape"]:
    """Activations at ``points`` and one position per input, in input order, on the CPU.

    ``positions``: ``"last"``, a negative int (from the end), or a role selector with one token
    per row (``"target"``) for ICL prompts. ``sort`` groups inputs of similar length (keep it
    off for bit-for-bit the same numbers as an unsorted run). ``stop_early``: stop the forward
    after the deepest block holding a point.
    """
    if len(inputs) == 0:
        raise IclMechError("read_activations: no inputs given")
    names = [points] if isinstance(points, str) else list(points)
    if not names:
        raise IclMechError("read_activations: no hook points given")
    for name in names:
        check_point(model, name)
    _check_positions(positions)
    stop = stop_layer(names) if stop_early else None
    forward = {} if stop is None else {"stop_at_layer": stop}
    out = None
    for index, batch in batched(model, inputs, batch_size, sort=sort, progress=progress):
        capture = Capture(names, positions=positions)
        typed = batch if isinstance(batch, PromptBatch) else None
        with torch.no_grad(), attach(model, capture, batch=typed):
            model(batch.tokens, attention_mask=batch.attention_mask, **forward)
        stacked = torch.stack([capture.activations[name] for name in names], dim=1).cpu()
        if out is None:
            out = stacked.new_empty((len(inputs), *stacked.shape[1:]))
        if stacked.shape[1:] != out.shape[1:]:
            raise IclMechError(
                f"read_activations: the activations at {names} have shape "
                f"{tuple(stacked.shape[2:])} in one batch and {tuple(out.shape[2:])} in another; "
                "points whose shape depends on the sequence length cannot be stacked"
            )
        out[torch.tensor(index)] = stacked
    return out


def last_token_states(
    model,
    inputs: Sequence[ICLPrompt] | Sequence[str],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool | str = False,
    sort: bool = False,
) -> Float[Tensor, "n_inputs layer d_model"]:
    """The residual stream (``blocks.{l}.hook_resid_post``) at each input's last token, for the
    given layers (default: all), in input order. ``sort`` groups inputs of similar length (less
    padding; the same numbers up to float rounding)."""
    layers = validate.layers(model, layers, "last_token_states layers")
    validate.count(batch_size, "last_token_states batch_size")
    if len(inputs) == 0:
        raise IclMechError("last_token_states: no inputs given")
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    return read_activations(model, inputs, names, "last", batch_size, progress, sort=sort)


def stop_layer(points: Sequence[str]) -> int | None:
    """The ``stop_at_layer`` that still computes every point (None: the whole model)."""
    deepest = -1
    for name in points:
        match = _BLOCK.match(name)
        if match:
            deepest = max(deepest, int(match.group(1)))
        elif name not in _BEFORE_BLOCKS:
            return None
    return deepest + 1


def _check_positions(positions) -> None:
    if isinstance(positions, bool) or not isinstance(positions, (str, int)):
        raise IclMechError(
            f"read_activations: positions must be 'last', a negative int or a role selector "
            f"with one token per row, got {positions!r}"
        )
    if positions == "all":
        raise IclMechError(
            "read_activations reads one position per input; positions='all' gives rows of "
            "different lengths (use a Capture probe with attach for whole sequences)"
        )
    if isinstance(positions, int) and positions >= 0:
        raise IclMechError(
            f"read_activations: position {positions} counts from the start of a left-padded "
            "row and would land on padding; count from the end (e.g. -1)"
        )
