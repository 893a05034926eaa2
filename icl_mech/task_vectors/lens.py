"""The logit lens of θ per task, for the reproduction: θ of the dev queries' demonstration sets
exactly as ``evaluate_task`` extracts it (same splits, sets, dummies, seed and batches), averaged
over the sets, read through the final norm and unembedding at every layer
(:func:`icl_mech.show.logit_lens`)."""

from __future__ import annotations

from collections.abc import Sequence

from icl_mech.prompts import Task
from icl_mech.show.logit_lens import LogitLens, logit_lens
from icl_mech.task_vectors.evaluate import DEV_SEED, prepare, splits
from icl_mech.task_vectors.settings import Settings

# drawn in the reproduction's figure when run (one panel each); the table holds every task
SHOWN = ("country_capital", "antonym", "uppercase", "city_country")


def theta_lens(model, task: Task, protocol: Settings, top: int = 5) -> LogitLens:
    """Top tokens of the task's mean dev θ at every layer."""
    train, dev, _ = splits(task, protocol)
    data = prepare(model, task, train, dev.examples, protocol, protocol.seed + DEV_SEED)
    return logit_lens(model, data.theta, top=top, name=task.name)


def shown(lenses: Sequence[LogitLens], most: int = 4) -> list[LogitLens]:
    """The lenses of the ``SHOWN`` tasks that were run, else the first ``most``."""
    chosen = [lens for lens in lenses if lens.name in SHOWN]
    return chosen or list(lenses[:most])
