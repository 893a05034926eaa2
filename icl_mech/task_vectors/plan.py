"""Whether a task is big enough for the task-vector protocol, checked without a model.

The splits (train / dev / test) and, for every dev and test query, its demonstrations and dummy
queries are drawn exactly as a run draws them (pure Python, same seeds). A task too small for
the settings is an ``IclMechError`` that names the setting(s) to lower and the largest value of
each that fits (``n_test``, ``n_dev``, ``n_demonstrations``, ``n_dummies``, and for function
vectors ``n_prompts``). Settings run this in ``check()``, so the error comes before any model
work; results are cached per (task, sizes, seed).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.prompts import Task
from icl_mech.task_vectors.extract import draw_dummies, sample_sets

DEV_SEED, TEST_SEED = 11, 12  # added to the protocol's seed for each split's extraction
PROMPTS_SEED = 21  # function vectors: the indirect-effect prompts
SIZES = ("n_test", "n_dev", "n_demonstrations", "n_dummies", "n_prompts")


def splits(
    task: Task, n_test: int, n_dev: int, n_demonstrations: int, n_dummies: int, seed: int
) -> tuple[Task, Task, Task]:
    """(train, dev, test), seeded and disjoint: no example, and no pair in either direction
    (x → y, y → x: ``Task.groups``), is in two of them. Small tasks get smaller dev/test sets
    (at most a third / a quarter of the examples) so that demonstrations still come from a
    varied pool."""
    size = len(task.examples)
    n_test, n_dev = min(n_test, size // 3), min(n_dev, size // 4)
    needed = n_demonstrations + n_dummies
    too_few = (
        f"task {task.name!r} has {size} examples: too few for dev and test sets plus "
        f"{n_demonstrations} demonstrations and {n_dummies} dummy queries"
    )
    if min(n_test, n_dev) < 1 or size - n_test - n_dev < needed:
        raise IclMechError(too_few)
    pool, test = task.split(n_test, seed)
    train, dev = pool.split(n_dev, (seed + 1) % validate.SEED_LIMIT)  # seed 2**32 - 1 too
    if len(train.examples) < needed:  # whole pairs went with dev/test
        raise IclMechError(f"{too_few} ({len(train.examples)} left for training)")
    parts = {"train": train, "dev": dev, "test": test}
    seen: dict = {}
    for part, split in parts.items():
        for e in split.examples:
            for key in (e, frozenset((e.x, e.y))):
                if seen.setdefault(key, part) != part:
                    raise IclMechError(
                        f"task {task.name!r}: {e!r} is in both {seen[key]} and {part}"
                    )
    return train, dev, test


def sizes_of(settings, names: tuple[str, ...] = SIZES) -> dict[str, int]:
    """The protocol's sizes read from a settings object (those it has)."""
    return {k: getattr(settings, k) for k in names if hasattr(settings, k)}


def check_fits(
    task: Task,
    sizes: Mapping[str, int],
    seed: int,
    where: str,
    rename: Mapping[str, str] | None = None,
    adjustable: tuple[str, ...] | None = None,
) -> None:
    """Draw everything a run draws; a task too small says which setting to lower, and to what
    (``rename`` maps a size to the setting's name where it differs, e.g. n_test -> tv_n_test;
    ``adjustable``: the sizes the caller's settings can change, default all)."""
    rename = rename or {}
    key = tuple(sorted(sizes.items()))
    problem = _problem(task, key, seed)
    if problem is None:
        return
    fixes = []
    for name, value in sizes.items():
        if adjustable is not None and name not in adjustable:
            continue
        for lower in range(value - 1, 0, -1):
            if _problem(task, tuple(sorted({**sizes, name: lower}.items())), seed) is None:
                fixes.append(f"{rename.get(name, name)} to {lower}")
                break
    names = [n for n in sizes if adjustable is None or n in adjustable]
    smallest = tuple(sorted({**sizes, **{n: 1 for n in names}}.items()))
    if fixes:
        advice = "lower " + ", or ".join(fixes)
    elif _problem(task, smallest, seed) is None:
        shown = ", ".join(rename.get(n, n) for n in names)
        advice = f"no single setting fits; lower several together (with {shown} all 1 it fits)"
    else:
        advice = "no settings fit; give a larger task (more examples)"
    raise IclMechError(
        f"{where}: task {task.name!r} ({len(task.examples)} examples) is too small for these "
        f"settings ({problem}); {advice}"
    )


@functools.lru_cache(maxsize=4096)
def _problem(task: Task, sizes: tuple, seed: int) -> str | None:
    s = dict(sizes)
    try:
        train, dev, test = splits(task, s["n_test"], s["n_dev"], s["n_demonstrations"],
                                  s["n_dummies"], seed)  # fmt: skip
        for part, offset in ((dev, DEV_SEED), (test, TEST_SEED)):
            queries = list(part.examples)
            sets = sample_sets(train, len(queries), s["n_demonstrations"], seed + offset,
                               queries=queries)  # fmt: skip
            draw_dummies(train, sets, s["n_dummies"], seed + offset, queries=queries)
        if "n_prompts" in s:
            if s["n_prompts"] > len(train.examples):
                return (
                    f"{s['n_prompts']} indirect-effect prompts asked, {len(train.examples)} "
                    "training examples left after the dev and test splits"
                )
            rng = random.Random(seed + PROMPTS_SEED)
            queries = rng.sample(list(train.examples), s["n_prompts"])
            sample_sets(train, len(queries), s["n_demonstrations"], seed + PROMPTS_SEED,
                        queries=queries)  # fmt: skip
    except IclMechError as error:
        return str(error)
    return None
