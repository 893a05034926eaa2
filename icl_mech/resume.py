"""One way to run blocks ``start`` to ``stop`` of a model on a given residual stream, with or
without a key/value cache, on both backends: ``forward_from``.

``HookedTransformer`` has ``start_at_layer`` and ``stop_at_layer``. The bridge's forward is the
Hugging Face model's own loop over its decoder layers, which cannot start inside the stack
(TransformerLens 4.3's ``start_at_layer`` still runs every earlier block and discards it). Here
the bridge runs that same loop, so masks, positions and rotary tables are the model's own, with
three module forwards replaced for the duration of the call (stage ``n_layers`` is the final
norm):

- the blocks before ``start`` return their input (nothing is computed there);
- block ``start`` runs its own forward, hooks included, on ``residual`` instead of its input;
- with ``stop``, stage ``stop`` keeps its input and ends the forward before any of its hooks.

So every hook from block ``start`` to block ``stop - 1`` fires as under ``start_at_layer``, in
the order it was attached. The tokens handed to the embedding are placeholders of the
residual's shape (a lookup, discarded), and positions come from the attention mask as in a
token forward; hooks on the embedding see the placeholders (on the hooked backend they do not
run).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import transformers
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech import validate
from icl_mech.backends import is_bridge
from icl_mech.errors import IclMechError
from icl_mech.kv_cache import KVCache

# transformers 5 decoder layers return the hidden states alone (earlier ones a tuple); where a
# passed-over layer cannot return the same thing, the bridge runs it and discards its output
_LAYERS_RETURN_TENSORS = int(transformers.__version__.split(".")[0]) >= 5


class _Stopped(Exception):
    """Raised by stage ``stop`` once it holds the stream it was handed."""


def forward_from(
    model,
    residual: Float[Tensor, "batch pos d_model"] | Int[Tensor, "batch pos"],
    *,
    start: int,
    attention_mask: Int[Tensor, "batch pos"],
    stop: int | None = None,
    cache: KVCache | None = None,
) -> Tensor:
    """Blocks ``start`` to ``stop - 1`` on ``residual`` (the stream entering block ``start``).

    ``residual`` may be token ids with ``start=0`` (the embedding runs as usual). Returns the
    stream entering block ``stop`` (``stop = n_layers``: before the final norm), or, without
    ``stop``, the logits. ``attention_mask`` covers the positions of ``residual``; a frozen
    ``cache`` holds the earlier positions, which they attend to. Gradients flow when enabled."""
    n_layers = model.cfg.n_layers
    start = validate.count(start, "forward_from start", minimum=0, maximum=n_layers)
    if stop is not None:
        stop = validate.count(stop, "forward_from stop", minimum=start, maximum=n_layers)
    tokens = not torch.is_floating_point(residual)
    if tokens and (residual.ndim != 2 or start != 0):
        raise IclMechError(
            f"forward_from: token ids of shape {tuple(residual.shape)} with start={start}; "
            "tokens are [batch, pos] and start at block 0 (start=0)"
        )
    if not tokens and (residual.ndim != 3 or residual.shape[-1] != model.cfg.d_model):
        raise IclMechError(
            f"forward_from: the residual has shape {tuple(residual.shape)}; expected [batch, "
            f"pos, {model.cfg.d_model}] (d_model of {model.cfg.model_name})"
        )
    if tuple(attention_mask.shape) != tuple(residual.shape[:2]):
        raise IclMechError(
            f"forward_from: the attention mask has shape {tuple(attention_mask.shape)}, the "
            f"residual's positions {tuple(residual.shape[:2])}; the mask covers the new "
            "positions only (the cache holds its own)"
        )
    if cache is not None and not cache.frozen:
        raise IclMechError("forward_from: freeze the cache first (cache.freeze()); it is shared")
    if stop == start and not tokens:
        return residual
    if is_bridge(model):
        return _bridge(model, residual, start, stop, attention_mask, cache, tokens)
    forward = (
        {"stop_at_layer": stop} if tokens else {"start_at_layer": start, "stop_at_layer": stop}
    )
    mask = attention_mask
    if cache is not None:
        forward["past_kv_cache"] = cache.hooked_entries
        if not tokens:  # TransformerLens prepends the cached mask to a token forward's own
            mask = torch.cat([cache.entries()[2].to(mask), mask], dim=1)
    return model(residual, attention_mask=mask, **forward)


def _bridge(model, residual, start, stop, mask, cache, tokens) -> Tensor:
    stage = list(model.blocks) + [model.ln_final]  # stage n_layers: the final norm
    taken: list[Tensor] = []
    overrides = {}
    if _LAYERS_RETURN_TENSORS:
        overrides |= {layer: _identity for layer in range(start)}
    if tokens:
        placeholders = residual.to(model.cfg.device)
    else:
        placeholders = torch.zeros(residual.shape[:2], dtype=torch.long, device=model.cfg.device)
        overrides[start] = partial(_fed, _own_forward(stage[start]), residual)
    if stop is not None:  # the stream reaching stage stop ends the forward
        overrides[stop] = partial(_take, taken)
    try:
        with _overridden({stage[i]: fn for i, fn in overrides.items()}):
            if cache is None:
                out = model(placeholders, attention_mask=mask)
            else:
                out = cache.forward(model, placeholders, mask)
    except _Stopped:
        return taken[0]
    if stop is not None:
        raise IclMechError(
            f"forward_from: block {stop} was never reached on {model.cfg.model_name}"
        )
    return out


@contextmanager
def _overridden(forwards: dict) -> Iterator[None]:
    """Each module's forward replaced for the block's duration (through ``__dict__``: the
    bridge's components forward attribute writes to the module they wrap)."""
    for module, forward in forwards.items():
        module.__dict__["forward"] = forward
    try:
        yield
    finally:
        for module in forwards:
            module.__dict__.pop("forward", None)  # back to the class's forward


def _own_forward(module):
    return type(module).forward.__get__(module)


def _identity(hidden_states, *args, **kwargs):
    return hidden_states


def _fed(forward, residual, hidden_states, *args, **kwargs):
    """The module's own forward, on ``residual`` instead of the stream it was handed."""
    return forward(residual.to(hidden_states.device, hidden_states.dtype), *args, **kwargs)


def _take(taken: list, hidden_states, *args, **kwargs):
    taken.append(hidden_states)
    raise _Stopped


__all__ = ["forward_from"]


def unembed(model, residual: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch vocab"]:
    """Final norm, unembedding and logit soft-cap, as the model's own forward applies them."""
    x = residual[:, None, :]
    if getattr(model.cfg, "normalization_type", None) is not None:
        x = model.ln_final(x)
    # x @ W_U directly: the unembed module copies the transposed [d_model, vocab] matrix per call
    logits = x[:, 0] @ model.W_U + model.b_U
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits
