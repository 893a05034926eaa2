"""The task-vector protocol's settings: Hendel et al.'s protocol (5 demonstrations, separate dev
and test sets), the tasks, the conflicting pairs and the run sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from icl_mech import settings as base
from icl_mech import tasks as bundled
from icl_mech.errors import IclMechError


def default_tasks() -> tuple[str, ...]:
    """Every bundled input→output and city task (names are unique)."""
    return tuple(dict.fromkeys(bundled.names("io") + bundled.names("city")))


# (demonstrations of A, vector of B): the two tasks share their inputs
PAIRS = (
    ("country_continent", "country_capital"),
    ("english_spanish", "english_french"),
    ("last_letter", "first_letter"),
    ("previous_letter", "next_letter"),
    ("city_language", "city_country"),
)


@dataclass(frozen=True)
class Settings(base.Settings):
    """Per task: ``n_dev`` queries choose the layer, ``n_test`` score it; each query gets its own
    ``n_demonstrations`` and ``n_dummies`` dummy queries. ``groups`` splits the cached layer
    sweep (memory vs passes; same numbers); ``test_curves`` also sweeps every layer on test."""

    QUICK = dict(
        tasks=("country_capital", "uppercase", "city_country"),
        pairs=(("country_continent", "country_capital"),),
        n_dev=8, n_test=12, max_new_tokens=4, test_curves=False,
    )  # fmt: skip
    tasks: tuple[str, ...] = default_tasks()
    pairs: tuple[tuple[str, str], ...] = PAIRS
    n_demonstrations: int = 5
    n_dummies: int = 2
    n_dev: int = 16
    n_test: int = 32
    scale: float = 1.0  # of the additive variant
    max_new_tokens: int = 6  # greedy continuation for exact match of multi-token answers
    batch_size: int = 16
    groups: int = 3
    test_curves: bool = True

    def check(self) -> None:
        known = default_tasks()
        base.known(self, "tasks", known)
        unknown = [t for pair in self.pairs for t in pair if t not in known]
        if unknown or any(len(pair) != 2 for pair in self.pairs):
            raise IclMechError(
                f"task-vectors settings: pairs must be (demonstrations task, vector task) of "
                f"known tasks, got {list(self.pairs)}; unknown: {unknown}; "
                f"choose from {list(known)}"
            )
        base.positive(self, "n_demonstrations", "n_dummies", "n_dev", "n_test",
                        "max_new_tokens", "batch_size", "groups")  # fmt: skip
        if not math.isfinite(self.scale):
            raise IclMechError(f"task-vectors settings: scale must be finite, got {self.scale}")
