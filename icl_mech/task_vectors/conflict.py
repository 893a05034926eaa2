"""Conflicting tasks (Hendel et al. §5): demonstrations of task A, task vector of task B.

For queries x that both tasks answer differently (their answers' scored tokens differ,
:mod:`icl_mech.scoring`),
the prompt is 5 demonstrations of A followed by ``x ->``; the last token's residual is then
replaced by θ_B(S) (S: demonstrations of B) at B's chosen layer, or the mean difference of B is
added at its chosen layer. The answer follows A (the demonstrations) or B (the vector).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from icl_mech import scoring, stats
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.hooks import run
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompts import Demonstration, Task
from icl_mech.task_vectors.evaluate import DEFAULT_SETTINGS
from icl_mech.task_vectors.extract import draw_dummies, extract, mean_difference
from icl_mech.task_vectors.generate import greedy
from icl_mech.task_vectors.settings import Settings
from icl_mech.task_vectors.vector import TaskVector


@dataclass
class ConflictResult:
    task_a: str  # the demonstrations' task
    task_b: str  # the patched vector's task
    n_queries: int
    layer_replace: int
    layer_add: int
    follows_a: dict[str, float]  # per condition: share answering as task A
    follows_b: dict[str, float]  # ... as task B
    # per condition and query: the answer is task A's / task B's (by icl_mech.scoring)
    hits_a: dict[str, list[bool]] = field(default_factory=dict, repr=False)
    hits_b: dict[str, list[bool]] = field(default_factory=dict, repr=False)

    def estimate(self, condition: str, task: str = "a") -> stats.Estimate:
        """The share following task ``"a"`` (demonstrations) or ``"b"`` (vector) with a 95%
        bootstrap interval over the queries."""
        hits = self.hits_a if task == "a" else self.hits_b
        return stats.bootstrap(np.asarray(hits[condition], dtype=float))

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "demonstrations": self.task_a,
                "vector": self.task_b,
                "condition": list(self.follows_a),
                "follows_demonstrations": list(self.follows_a.values()),
                "follows_vector": list(self.follows_b.values()),
                "n_queries": self.n_queries,
            }
        )
        if self.hits_a:
            for column, task in (("follows_demonstrations", "a"), ("follows_vector", "b")):
                estimates = [self.estimate(c, task) for c in frame["condition"]]
                frame[f"{column}_low"] = [e.low for e in estimates]
                frame[f"{column}_high"] = [e.high for e in estimates]
        return frame


def shared_queries(model, task_a: Task, task_b: Task) -> list[tuple[str, str, str]]:
    """(x, answer of A, answer of B) for inputs of both tasks whose answers differ at once."""
    answers_b = {e.x: e.y for e in task_b.examples}
    shared = []
    for example in task_a.examples:
        if example.x not in answers_b:
            continue
        y_b = answers_b[example.x]
        if _scored(model, task_a, example.y) != _scored(model, task_b, y_b):
            shared.append((example.x, example.y, y_b))
    return shared


def conflicting_tasks(
    model,
    task_a: Task,
    task_b: Task,
    layer_replace: int,
    layer_add: int,
    settings: Settings = DEFAULT_SETTINGS,
    mean_difference_b: TaskVector | None = None,
) -> ConflictResult:
    """Which task the answer follows: without patch, with θ_B replaced, with B's difference added.

    ``layer_*`` are task B's chosen layers (from ``evaluate_task``); ``mean_difference_b`` is
    B's additive vector (measured here on B's demonstrations if not given).
    """
    shared = shared_queries(model, task_a, task_b)
    if len(shared) < 2:
        raise IclMechError(
            f"tasks {task_a.name!r} and {task_b.name!r} share {len(shared)} inputs with different "
            "answers; conflicting tasks need inputs both tasks answer"
        )
    rng = random.Random(settings.seed)
    chosen = rng.sample(shared, min(settings.n_test, len(shared)))
    inputs = {x for x, _, _ in chosen}
    train_a = task_a.with_examples([e for e in task_a.examples if e.x not in inputs])
    train_b = task_b.with_examples([e for e in task_b.examples if e.x not in inputs])
    k = settings.n_demonstrations
    sets_a = [train_a.sample_demonstrations(k, rng) for _ in chosen]
    sets_b = [train_b.sample_demonstrations(k, rng) for _ in chosen]
    dummies_b = draw_dummies(train_b, sets_b, settings.n_dummies, settings.seed)
    theta_b = extract(model, train_b, sets_b, dummies_b, seed=settings.seed)
    if mean_difference_b is None:
        mean_difference_b = mean_difference(model, theta_b, train_b, dummies_b)
    prompts = [
        ICLPrompt.build(task_a, demos, Demonstration(x, y_a))
        for demos, (x, y_a, _) in zip(sets_a, chosen)
    ]
    gold_a = [scoring.gold(model.tokenizer, task_a, y_a) for _, y_a, _ in chosen]
    gold_b = [scoring.gold(model.tokenizer, task_b, y_b) for _, _, y_b in chosen]
    conditions = {
        "demonstrations only": lambda rows: (),
        "TV replace (B)": lambda rows: (theta_b.select(rows).intervention(layer=layer_replace),),
        "TV add (B)": lambda rows: (
            mean_difference_b.intervention(layer=layer_add, mode="add", strength=settings.strength),
        ),
    }
    follows_a, follows_b, hits_a, hits_b = {}, {}, {}, {}
    for name, items in conditions.items():
        hits_a[name], hits_b[name] = _hits(model, prompts, items, settings.batch_size, gold_a,
                                           gold_b)  # fmt: skip
        follows_a[name] = float(torch.tensor(hits_a[name], dtype=torch.float).mean())
        follows_b[name] = float(torch.tensor(hits_b[name], dtype=torch.float).mean())
    return ConflictResult(
        task_a.name, task_b.name, len(chosen), layer_replace, layer_add, follows_a, follows_b,
        hits_a, hits_b,
    )  # fmt: skip


def _hits(model, prompts, items, batch_size: int, gold_a, gold_b) -> tuple[list, list]:
    """Per query: the answer is task A's / task B's (``icl_mech.scoring``): the patched prompt's
    argmax, continued greedily in batches where an answer needs more than one step."""
    hits_a, hits_b = [], []
    for index, batch in batched(model, prompts, batch_size):
        rows = slice(index[0], index[-1] + 1)
        a, b = gold_a[rows], gold_b[rows]
        steps = scoring.steps(a + b)
        if steps > 1:
            tokens = greedy(model, batch, *items(rows), max_new_tokens=steps).tokens.cpu()
        else:
            with torch.no_grad():
                tokens = run(model, batch, *items(rows))[:, -1:].argmax(-1).cpu()
        hits_a += scoring.token_hits(tokens, a)
        hits_b += scoring.token_hits(tokens, b)
    return hits_a, hits_b


def _scored(model, task: Task, answer: str) -> tuple[int, ...]:
    return scoring.gold(model.tokenizer, task, answer).tokens
