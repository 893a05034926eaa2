"""Notebook display through one hook: result and vector classes never import pictures.

A class's ``_repr_html_`` returns :func:`html` of itself; the picture modules
(:mod:`icl_mech.show`, each method's ``figures``) register the renderer of each class with
:func:`renders` when they are imported, and ``import icl_mech`` imports them, so every
renderer is registered before anything is displayed.
"""

from __future__ import annotations

import html as _html
from collections.abc import Callable

RENDERERS: dict[type, Callable[[object], str]] = {}


def renders(cls: type):
    """Decorator: the decorated function ``f(obj) -> str`` renders instances of ``cls``."""

    def register(render: Callable[[object], str]) -> Callable[[object], str]:
        RENDERERS[cls] = render
        return render

    return register


def html(obj) -> str:
    """The HTML of ``obj`` from the renderer of its class (or of the nearest base class); an
    escaped ``repr`` when no picture module has registered one."""
    for cls in type(obj).__mro__:
        render = RENDERERS.get(cls)
        if render is not None:
            return render(obj)
    return f"<pre>{_html.escape(repr(obj))}</pre>"
