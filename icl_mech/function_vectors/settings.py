"""The function-vector protocol's settings: Todd et al.'s indirect effect and top-k heads, and the
task-vector protocol's splits (5 demonstrations, separate dev and test sets) so that every
condition is scored on the same queries."""

from __future__ import annotations

import math
from dataclasses import dataclass

from icl_mech import settings as base
from icl_mech import tasks as bundled
from icl_mech.errors import IclMechError
from icl_mech.prompts import Task
from icl_mech.task_vectors import plan

# a spread of the bundled tasks (lexical, translation, formatting, letters, facts about cities),
# sized so the full run takes about 20 minutes on one CPU thread for the embedded model
FULL_TASKS = (
    "antonym",
    "country_capital",
    "english_french",
    "past_tense",
    "plural",
    "uppercase",
    "first_letter",
    "country_continent",
    "city_country",
    "city_language",
)


@dataclass(frozen=True)
class Settings(base.Settings):
    """Per task: ``n_prompts`` clean ICL prompts from the training split give every head's mean
    output, the same prompts with shuffled answers its indirect effect; the function vector sums
    the top ``k`` heads. ``n_dev`` queries choose each vector's layer, ``n_test`` score baseline,
    ICL, task vector (replace), mean difference (add) and function vector (add; on zero-shot and
    on shuffled-label prompts). ``strength`` multiplies both additive vectors; ``groups`` splits the
    cached layer sweep (memory vs passes; same numbers)."""

    QUICK = dict(
        tasks=("country_capital", "antonym", "uppercase"), n_prompts=8, n_dev=8, n_test=12,
    )  # fmt: skip
    tasks: tuple[str | Task, ...] = FULL_TASKS  # names, task files or Tasks
    k: int = 10
    n_prompts: int = 24
    n_demonstrations: int = 5
    n_dummies: int = 2
    n_dev: int = 16
    n_test: int = 32
    strength: float = 1.0
    batch_size: int = 16
    effect_batch_size: int = 8
    groups: int = 3

    def check(self) -> None:
        where = base.where(self)
        self._set("tasks", bundled.checked(self.tasks, where, "tasks", need="io"))
        base.positive(self, "n_prompts", "n_demonstrations", "n_dummies", "n_dev", "n_test",
                      "batch_size", "effect_batch_size", "groups")  # fmt: skip
        base.positive(self, "k", allow_zero=True)
        for item in self.tasks:
            plan.check_fits(bundled.resolve(item), plan.sizes_of(self), self.seed, where)
        if not math.isfinite(self.strength):
            raise IclMechError(
                f"function-vectors settings: strength must be finite, got {self.strength}"
            )
