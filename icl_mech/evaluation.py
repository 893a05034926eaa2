"""Batched few-shot evaluation of a task: prompts → batches → one forward each → accuracy."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from icl_mech import stats, validate
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.hooks import run
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Task


def build_prompts(
    task: Task, n_demonstrations: int, queries: Sequence, seed: int = 0
) -> list[ICLPrompt]:
    """One prompt per query; ``n_demonstrations`` per class (or in all, for io tasks),
    drawn from the task's examples that do not give the query away (``Task.leaks``: not the
    query, not its other direction, no example showing its input or, where answers do not
    repeat, its answer). ``n_demonstrations=0`` gives zero-shot prompts."""
    n_demonstrations = validate.count(n_demonstrations, "n_demonstrations", minimum=0)
    rng = random.Random(seed)
    if n_demonstrations == 0:
        return [ICLPrompt.zero_shot(task, q) for q in queries]
    return [
        ICLPrompt.build(task, task.sample_demonstrations(n_demonstrations, rng, exclude=q), q)
        for q in queries
    ]


def batches(
    model, prompts: Sequence[ICLPrompt], batch_size: int = 16, progress: bool | str = False
) -> Iterator[PromptBatch]:
    """Consecutive PromptBatches in input order (``icl_mech.batching.batched``)."""
    for _, batch in batched(model, prompts, batch_size, progress=progress):
        yield batch


def answer_token_ids(model, prompts: Sequence[ICLPrompt]) -> torch.Tensor:
    """First token of each prompt's gold answer (io tasks)."""
    ids = []
    for p in prompts:
        if p.answer is None:
            raise IclMechError("scoring needs every prompt's query to carry its answer")
        ids.append(
            model.tokenizer.encode(p.task.answer_prefix + p.answer, add_special_tokens=False)[0]
        )
    return torch.tensor(ids)


def predict(model, batch: PromptBatch, *items) -> torch.Tensor:
    """Predicted class index (classification) or first answer token id (io tasks) per row."""
    with torch.no_grad():
        logits = run(model, batch, *items)
    if batch.class_token_ids is not None:
        return batch.class_logits(logits).argmax(-1)
    return logits[:, -1].argmax(-1)


@dataclass
class AccuracyResult:
    task: str
    n_demonstrations: int
    seed: int
    queries: list[str]
    gold: list[int]  # class index, or first answer token id
    predicted: list[int]
    n_classes: int = 0  # 0 for io tasks

    @property
    def accuracy(self) -> float:
        return sum(g == p for g, p in zip(self.gold, self.predicted)) / len(self.gold)

    def estimate(self) -> stats.Estimate:
        """Accuracy with a 95% bootstrap interval over the queries (``str`` gives
        ``0.75 [0.64, 0.86]``)."""
        return stats.bootstrap([float(g == p) for g, p in zip(self.gold, self.predicted)])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "task": self.task,
                "n_demonstrations": self.n_demonstrations,
                "seed": self.seed,
                "query": self.queries,
                "gold": self.gold,
                "predicted": self.predicted,
                "correct": [g == p for g, p in zip(self.gold, self.predicted)],
            }
        )


def icl_accuracy(
    model,
    task: Task,
    n_demonstrations: int = 1,
    n_test: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> AccuracyResult:
    """Few-shot accuracy on ``n_test`` held-out examples of a task.

    The test queries are a seeded, class-balanced split; demonstrations come from the rest.
    """
    n_demonstrations = validate.count(n_demonstrations, "icl_accuracy n_demonstrations", minimum=0)
    n_test = validate.count(n_test, "icl_accuracy n_test", maximum=len(task.examples))
    validate.count(batch_size, "icl_accuracy batch_size")
    pool, test = task.split(n_test, seed)
    prompts = build_prompts(pool, n_demonstrations, test.examples, seed)
    if task.is_classification:
        gold = [task.class_index(p.answer) for p in prompts]
    else:
        gold = answer_token_ids(model, prompts).tolist()
    predicted: list[int] = []
    label = progress and f"{task.name} {n_demonstrations}-shot"
    for batch in batches(model, prompts, batch_size, progress=label):
        predicted += predict(model, batch).tolist()
    queries = [q.x for q in test.examples]
    n_classes = len(task.classes) if task.classes else 0
    return AccuracyResult(task.name, n_demonstrations, seed, queries, gold, predicted, n_classes)
