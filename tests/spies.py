"""Test helpers that watch a model: a forward pass where none may run fails the test."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def no_forward(model) -> Iterator[None]:
    """Any forward pass inside the block (the model's, or one resumed at a block) fails the
    test: a PyTorch pre-hook on the model and on every block, which both backends run through
    ``Module.__call__``. (Not by patching ``forward``: a bridge block writes attributes through
    to the Hugging Face layer it wraps, so the patch could not be undone.)"""

    def fail(module, args):
        pytest.fail("a forward pass ran")

    handles = [module.register_forward_pre_hook(fail) for module in (model, *model.blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
