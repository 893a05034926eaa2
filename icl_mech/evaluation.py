"""Batched few-shot evaluation of a task: prompts → batches → one forward each → accuracy."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from icl_mech import scoring, stats, validate
from icl_mech.batching import batched
from icl_mech.hooks import attach, run
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
    """The scored token of each prompt's gold answer (io tasks): its first content token
    (:mod:`icl_mech.scoring`)."""
    return torch.tensor([g.content for g in scoring.golds(model, prompts)])


def predict(model, batch: PromptBatch, *items) -> torch.Tensor:
    """Predicted class index (classification) or first answer token id (io tasks) per row."""
    with torch.no_grad():
        logits = run(model, batch, *items)
    if batch.class_token_ids is not None:
        return batch.class_logits(logits).argmax(-1)
    return logits[:, -1].argmax(-1)


def scored_hits(
    model,
    batch: PromptBatch,
    golds: Sequence[scoring.Gold],
    first: list[int] | None = None,
    items: Sequence = (),
) -> list[bool]:
    """Correct rows of a batch by the scoring rule, with ``items`` attached (registry kinds;
    none: unpatched): one forward (as ``predict``; its argmax appended to ``first`` if given),
    then the rows that start with bare tokens once more, teacher-forced
    (:mod:`icl_mech.scoring`)."""
    bare = scoring.bare_rows(golds)
    predicted = predict(model, batch, *items).cpu()
    if first is not None:
        first += predicted.tolist()
    hits = (predicted == torch.tensor([g.content for g in golds])).tolist()
    if bare:
        chosen = [golds[i] for i in bare]
        sub = scoring.subset(batch, bare)
        forced = scoring.forced_tokens(chosen).to(sub.tokens.device)
        tokens = torch.cat([sub.tokens, forced], dim=1)
        mask = torch.cat([sub.attention_mask, torch.ones_like(forced)], dim=1)
        with torch.no_grad(), attach(model, *items, batch=sub):
            logits = model(tokens, attention_mask=mask)[:, sub.seq_len - 1 :]
        for i, hit in zip(bare, scoring.logit_hits(logits, chosen).tolist()):
            hits[i] = hit
    return [bool(h) for h in hits]


def hits(
    model, prompts: Sequence[ICLPrompt], items: Sequence = (), batch_size: int = 16
) -> list[bool]:
    """Per prompt, in input order: right or not with ``items`` attached. Classification: the
    predicted class (argmax over the label words' first tokens) is the gold class; input→output:
    :mod:`icl_mech.scoring`'s rule (``scored_hits``)."""
    if len(prompts) == 0:
        return []
    classification = prompts[0].task.is_classification
    golds = None if classification else scoring.golds(model, prompts)
    out = [False] * len(prompts)
    for index, batch in batched(model, prompts, batch_size):
        if golds is None:
            classes = torch.tensor([p.task.class_index(p.answer) for p in batch.prompts])
            right = (predict(model, batch, *items).cpu() == classes).tolist()
        else:
            right = scored_hits(model, batch, [golds[i] for i in index], items=items)
        for i, hit in zip(index, right):
            out[i] = bool(hit)
    return out


@dataclass
class AccuracyResult:
    task: str
    n_demonstrations: int
    seed: int
    queries: list[str]
    gold: list[int]  # class index, or the scored (first content) answer token id
    predicted: list[int]  # class index, or the first greedy token
    n_classes: int = 0  # 0 for io tasks
    hits: list[bool] | None = None  # io tasks: correct by icl_mech.scoring's rule

    @property
    def correct(self) -> list[bool]:
        """Per query: right by the scoring rule (classification: the predicted class)."""
        if self.hits is not None:
            return list(self.hits)
        return [g == p for g, p in zip(self.gold, self.predicted)]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.gold)

    def estimate(self) -> stats.Estimate:
        """Accuracy with a 95% bootstrap interval over the queries (``str`` gives
        ``0.75 [0.64, 0.86]``)."""
        return stats.bootstrap([float(c) for c in self.correct])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "task": self.task,
                "n_demonstrations": self.n_demonstrations,
                "seed": self.seed,
                "query": self.queries,
                "gold": self.gold,
                "predicted": self.predicted,
                "correct": self.correct,
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
    Input -> output answers are scored by :mod:`icl_mech.scoring` (first content token, reached
    greedily); a task whose answers that rule cannot tell apart is refused before any forward.
    """
    n_demonstrations = validate.count(n_demonstrations, "icl_accuracy n_demonstrations", minimum=0)
    n_test = validate.count(n_test, "icl_accuracy n_test", maximum=len(task.examples))
    validate.count(batch_size, "icl_accuracy batch_size")
    scoring.check_answers(model, task)
    pool, test = task.split(n_test, seed)
    prompts = build_prompts(pool, n_demonstrations, test.examples, seed)
    golds = None if task.is_classification else scoring.golds(model, prompts)
    if golds is None:
        gold = [task.class_index(p.answer) for p in prompts]
    else:
        gold = [g.content for g in golds]
    predicted: list[int] = []
    hits: list[bool] | None = None if golds is None else []
    label = progress and f"{task.name} {n_demonstrations}-shot"
    for batch in batches(model, prompts, batch_size, progress=label):
        if golds is None:
            predicted += predict(model, batch).tolist()
            continue
        rows = golds[len(hits) : len(hits) + len(batch)]
        hits += scored_hits(model, batch, rows, predicted)
    queries = [q.x for q in test.examples]
    n_classes = len(task.classes) if task.classes else 0
    return AccuracyResult(
        task.name, n_demonstrations, seed, queries, gold, predicted, n_classes, hits
    )
