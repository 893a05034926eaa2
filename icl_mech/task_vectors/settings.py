"""The task-vector protocol's settings: Hendel et al.'s protocol (5 demonstrations, separate dev
and test sets), the tasks, the conflicting pairs and the run sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from icl_mech import settings as base
from icl_mech import tasks as bundled
from icl_mech.errors import IclMechError
from icl_mech.prompts import Task
from icl_mech.task_vectors import plan


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
    tasks: tuple[str | Task, ...] = default_tasks()  # names, task files or Tasks
    pairs: tuple[tuple[str | Task, str | Task], ...] = PAIRS
    n_demonstrations: int = 5
    n_dummies: int = 2
    n_dev: int = 16
    n_test: int = 32
    strength: float = 1.0  # of the additive variant
    max_new_tokens: int = 6  # greedy continuation for exact match of multi-token answers
    batch_size: int = 16
    groups: int = 3
    test_curves: bool = True

    def check(self) -> None:
        where = base.where(self)
        self._set("tasks", bundled.checked(self.tasks, where, "tasks", need="io"))
        if any(len(pair) != 2 for pair in self.pairs):
            raise IclMechError(
                f"{where}: pairs must be (demonstrations task, vector task), got "
                f"{[tuple(map(bundled.label, p)) for p in self.pairs]}"
            )
        pairs = [bundled.checked(pair, where, "pairs", need="io") for pair in self.pairs]
        self._set("pairs", tuple(pairs))
        base.positive(self, "n_demonstrations", "n_dummies", "n_dev", "n_test",
                        "max_new_tokens", "batch_size", "groups")  # fmt: skip
        for item in (*self.tasks, *(b for _, b in self.pairs)):
            plan.check_fits(bundled.resolve(item), plan.sizes_of(self), self.seed, where)
        if not math.isfinite(self.strength):
            raise IclMechError(
                f"task-vectors settings: strength must be finite, got {self.strength}"
            )
