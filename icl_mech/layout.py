"""Weights laid out the way ``F.linear`` reads them, for the duration of a block.

TransformerLens 3.x's ``HookedTransformer`` stores its weights input-major (``W_in`` is
``[d_model, d_mlp]``, ``W_Q`` is ``[head, d_model, d_head]``) and copies them into the
output-major layout ``F.linear`` takes on every forward: ``W_gate.T.contiguous()``,
``W_in.T.contiguous()`` and ``W_out.T.contiguous()`` in the gated MLP, ``rearrange(W_Q, "h m d ->
(h d) m")`` (and K, V) per attention, ``rearrange(W_O, ...).contiguous()`` and
``W_U.T.contiguous()`` in the unembedding. For a forward of one token (a generation step) these
copies are most of the time: the model's weights are copied once per step. Under autograd the
copies are also saved for the backward pass (on SmolLM2-135M, 0.5 GB of all-layer saliency's
graph).

``linear_layout(model)`` gives each of these parameters the same shape and values but a storage
order in which TransformerLens's rearrangement is a view, so ``.contiguous()`` returns the
weight itself: ``F.linear`` receives the same contiguous matrix as before, and every number is
unchanged, bit for bit. On exit the original layout is back (an in-place change of a parameter
made meanwhile is kept; one made through ``.data`` is kept only with ``in_place=True``).
Entering costs one copy of those weights (leaving another with ``in_place=True``), so it pays
for a block that runs more than one forward, or a forward and a backward. ``load_model`` lays
the weights out for good at load time (``lay_out``; ``linear_layout=False`` keeps
TransformerLens's order), so for its models the block is free. Other models (the bridge's
Hugging Face modules, which keep ``nn.Linear`` weights) are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from icl_mech.backends import is_bridge

# parameter name -> the storage order (a permutation of its axes) in which the rearrangement
# TransformerLens applies before F.linear is a view
_ATTENTION = {"W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "W_O": (2, 0, 1)}
_ATTENTION.update({"_W_K": (0, 2, 1), "_W_V": (0, 2, 1)})  # grouped-query attention
_GATED_MLP = {"W_gate": (1, 0), "W_in": (1, 0), "W_out": (1, 0)}
_UNEMBED = {"W_U": (1, 0)}


def _targets(model) -> Iterator[tuple[nn.Module, dict]]:
    for block in getattr(model, "blocks", ()):
        attention = getattr(block, "attn", None)
        if attention is not None:
            yield attention, _ATTENTION
        mlp = getattr(block, "mlp", None)
        if mlp is not None and "W_gate" in mlp._parameters:  # the plain MLP uses W_in as it is
            yield mlp, _GATED_MLP
    unembed = getattr(model, "unembed", None)
    if unembed is not None:
        yield unembed, _UNEMBED


def _relaid(data: Tensor, order: tuple[int, ...]) -> Tensor:
    """``data``'s values and shape, stored in ``order``."""
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return data.permute(*order).contiguous().permute(*inverse)


_Changed = list[tuple[nn.Parameter, "Tensor | None", tuple, int]]


def _relayout(model, in_place: bool, changed: _Changed) -> _Changed:
    """Lay the weights out, recording each change in ``changed`` as it is made."""
    if is_bridge(model):
        return changed
    for module, layouts in _targets(model):
        for name, order in layouts.items():
            parameter = module._parameters.get(name)
            if parameter is None or parameter.ndim != len(order):
                continue
            if parameter.data.permute(*order).is_contiguous():
                continue  # already laid out (a nested block, or a model stored so)
            original = parameter.data
            stride = original.stride()
            parameter.data = _relaid(original, order)
            changed.append((parameter, None if in_place else original, stride, parameter._version))
            del original
    return changed


def _restore(changed: _Changed) -> None:
    for parameter, original, stride, version in reversed(changed):
        if original is None:
            restored = parameter.data.new_empty_strided(parameter.shape, stride)
            parameter.data = restored.copy_(parameter.data)
        else:
            if parameter._version != version:  # changed in place inside the block: keep it
                original.copy_(parameter.data)
            parameter.data = original


@contextmanager
def linear_layout(model, *, in_place: bool = False) -> Iterator:
    """Inside the block, TransformerLens's per-forward weight copies are views (see the module
    doc); the same numbers, less time and memory. Re-entrant; does nothing on the bridge.

    ``in_place=False`` keeps the original tensors and puts them back on exit (one copy of the
    weights, held until then); ``in_place=True`` replaces them one at a time and copies them
    back on exit (two copies' time, no more memory than one weight matrix)."""
    changed: _Changed = []
    try:
        _relayout(model, in_place, changed)
        yield model
    finally:
        _restore(changed)


def lay_out(model):
    """Lay the weights out for ``F.linear`` for good (in place, the same values), as
    ``load_model`` does: no forward copies them and ``linear_layout`` costs nothing.
    Returns the model. (``safetensors`` refuses to save the non-contiguous tensors this leaves;
    ``.contiguous()`` them first.)"""
    _relayout(model, True, [])
    return model
