"""Gradients of activations, never of parameters: the stream entering block 0 becomes a leaf
that requires grad (so a graph exists under frozen weights), and the weights stop requiring
grad for the pass (so autograd saves nothing that only a weight gradient would need)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def track_gradients(stream: Tensor, hook) -> Tensor | None:
    """A hook for ``blocks.0.hook_resid_pre``: the stream as a leaf requiring grad (when
    gradients are enabled at all)."""
    if not torch.is_grad_enabled():
        return None
    return stream.detach().requires_grad_(True)


@contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """Parameters do not require grad inside the block; their flags are restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
