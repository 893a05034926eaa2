"""What a sweep cell runs: the reproductions of :mod:`icl_mech.runner`, or a ``Method`` of your
own (passed to ``Grid.load(..., methods={"name": Method(...)})``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icl_mech.runner import reproduce, reproduction_named
from icl_mech.settings import Settings

# the setting that holds a reproduction's tasks; None: it has none
TASK_FIELDS = {
    "anchors": "tasks",
    "anchor-applications": "tasks",
    "task-vectors": "tasks",
    "function-vectors": "tasks",
    "icv": "pair_sets",
    "icl-gd": None,
}


@dataclass(frozen=True)
class Method:
    """What a cell runs: ``compute(model, settings)`` returns a ``Report``, a dict of headline
    numbers or a DataFrame; ``task_field`` is the tuple setting a cell's task goes into."""

    settings_class: type[Settings]
    compute: Callable[[Any, Settings], Any]
    task_field: str | None = None
    needs_model: bool = True


def _reproduce(name: str, model, settings: Settings):
    return reproduce(name, model, settings, progress=False)


def builtin_method(name: str) -> Method:
    """The reproduction ``name`` as a sweep method (imports only its own module)."""
    reproduction = reproduction_named(name)
    return Method(
        reproduction.settings_class(),
        functools.partial(_reproduce, name),
        TASK_FIELDS.get(name, "tasks"),
        reproduction.needs_model,
    )
