"""Tables 2 and 3 of "Label words are anchors" (Wang et al. 2023): loyalty and accuracy of
context compression (Text_anchor, Hidden_random, Hidden_random-top, Hidden_anchor against the
full prompt), and the time per query of Hidden_anchor against the full prompt."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm import tqdm

from icl_mech.anchors.compression import (
    ANCHOR_ROLES,
    ContextCache,
    Tokens,
    anchor_keep,
    answer,
    encode_shared,
)
from icl_mech.anchors.loyalty import label_loyalty, top_k_jaccard
from icl_mech.anchors.readout import target_logits
from icl_mech.batching import index_batches
from icl_mech.errors import IclMechError
from icl_mech.prompts import ROLES, ICLPrompt, PromptBatch, Task

METHODS = ("ICL", "Text_anchor", "Hidden_random", "Hidden_random-top", "Hidden_anchor")


def answer_all(model, cache: ContextCache, queries: Tokens, batch_size: int = 16) -> torch.Tensor:
    """Logits [n, vocab] at the last token of every query, in batches, without gradients."""
    with torch.no_grad():
        parts = index_batches(len(queries), batch_size)
        return torch.cat([answer(model, cache, queries.take(torch.tensor(i))) for i in parts])


def one_demonstration_each(task: Task, n_test: int, seed: int) -> list[ICLPrompt]:
    """The test queries of a seeded split, all after the same 1-per-class demonstrations."""
    pool, test = task.split(n_test, seed)
    demonstrations = pool.sample_demonstrations(1, random.Random(seed))
    return [ICLPrompt.build(task, demonstrations, q) for q in test.examples]


def random_keep(
    cache: ContextCache, like: Bool[Tensor, "batch entry"], seed: int = 0
) -> Bool[Tensor, "batch entry"]:
    """Hidden_random (as the paper's code): ``like`` with each label word's entries swapped for
    as many random entries that ``like`` does not keep, drawn between that label word and the
    previous one (its own demonstration); the formatting entries stay."""
    generator = torch.Generator().manual_seed(seed)
    label = like & (cache.roles == ROLES.index("label"))
    keep = like & ~label
    for b in range(len(cache)):
        start, positions = 0, torch.nonzero(label[b]).flatten()
        breaks = (torch.nonzero(positions.diff() > 1).flatten() + 1).tolist()
        for word in positions.tensor_split(breaks):  # the entries of one label word
            span = torch.arange(start, int(word[0]))
            others = span[cache.attention_mask[b, span].bool() & ~like[b, span]]
            if len(others) < len(word):
                raise IclMechError(f"row {b}: no unkept entry before the label word at {word[0]}")
            keep[b, others[torch.randperm(len(others), generator=generator)[: len(word)]]] = True
            start = int(word[-1]) + 1
    return keep


def text_anchor(prompt: ICLPrompt) -> ICLPrompt:
    """Text_anchor: the demonstrations reduced to their formatting and label text."""
    kept = (s for s in prompt.segments if not (s.role == "input" and s.demo >= 0))
    return replace(prompt, segments=tuple(kept))


@dataclass
class CompressionTable:
    """Wang et al.'s Table 2: loyalty to the full prompt and accuracy per compression method.
    Hidden_random: mean over the random draws; Hidden_random-top: the draw with the highest
    label loyalty (as in the paper, chosen on the test queries themselves)."""

    records: list[dict]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)

    def table(self, by_task: bool = False) -> pd.DataFrame:
        columns = ["label_loyalty", "word_loyalty", "accuracy"]
        keys = ["task", "method"] if by_task else ["method"]
        frame = self.to_frame().groupby(keys, sort=False)[columns].mean() * 100
        return frame.round(2)


def compression_experiment(
    model,
    tasks: Sequence[Task],
    n_test: int = 64,
    seeds: Sequence[int] = (0,),
    *,
    n_draws: int = 20,
    roles: Sequence[str] = ANCHOR_ROLES,
    top_k: int = 5,
    progress: bool = True,
) -> CompressionTable:
    """Per task and seed, test queries after the same 1-per-class demonstrations, answered
    from the full context and from each compression (``n_draws`` random draws)."""
    if n_draws < 1 or top_k < 1:
        raise IclMechError(f"n_draws and top_k must be at least 1, got {n_draws} and {top_k}")
    records = []
    runs = [(task, seed) for task in tasks for seed in seeds]
    for task, seed in tqdm(runs, desc="compression", disable=not progress, leave=False):
        prompts = one_demonstration_each(task, n_test, seed)
        for method, row in compare_methods(model, prompts, n_draws, roles, top_k, seed):
            records.append(dict(task=task.name, seed=seed, method=method) | row)
    return CompressionTable(records)


def compare_methods(model, prompts, n_draws: int, roles, top_k: int, seed: int):
    """(method, metrics) for every method and random draw, on prompts sharing demonstrations."""
    cache, queries, batch = encode_shared(model, prompts)
    ids = batch.class_token_ids
    full = answer_all(model, cache, queries)
    anchor = anchor_keep(cache, roles)
    draws = [
        answer_all(model, cache.select(random_keep(cache, anchor, seed * 1000 + d)), queries)
        for d in range(n_draws)
    ]
    text_cache, text_queries, _ = encode_shared(model, [text_anchor(p) for p in prompts])

    def loyal(logits):
        return label_loyalty(full[:, ids], logits[:, ids]).float()

    outcomes = {
        "ICL": [full],
        "Text_anchor": [answer_all(model, text_cache, text_queries)],
        "Hidden_random": draws,
        "Hidden_random-top": [max(draws, key=lambda logits: float(loyal(logits).mean()))],
        "Hidden_anchor": [answer_all(model, cache.select(anchor), queries)],
    }
    for method, results in outcomes.items():
        for logits in results:
            correct = logits[:, ids].argmax(-1) == batch.gold
            yield method, dict(kept=int(anchor.sum()), context=int(cache.length[0]),
                               label_loyalty=float(loyal(logits).mean()),
                               word_loyalty=float(top_k_jaccard(full, logits, top_k).mean()),
                               accuracy=float(correct.float().mean()))  # fmt: skip


def time_per_query(
    model, prompts: Sequence[ICLPrompt], rounds: int = 3, roles=ANCHOR_ROLES, every_position=False
) -> dict[str, float]:
    """Seconds per query (batch of one): the full prompt vs Hidden_anchor (the demonstrations
    encoded once beforehand: ``encode_seconds``). Logits at the last token, or at every token
    (``every_position``, as the paper's timing code computed them). Interleaved; medians."""
    start = time.perf_counter()
    cache, queries, _ = encode_shared(model, prompts)
    compressed = cache.select(anchor_keep(cache, roles))
    compressed.for_model(model)  # prepared once, as a deployed cache would be
    encode = time.perf_counter() - start
    singles = [PromptBatch.from_prompts(model, [p]) for p in prompts]
    full, anchor = [], []
    with torch.no_grad():
        for _ in range(rounds):
            for i, batch in enumerate(singles):
                start = time.perf_counter()
                if every_position:
                    model(batch.tokens, attention_mask=batch.attention_mask)
                else:
                    target_logits(model, batch)
                full.append(time.perf_counter() - start)
                one, start = queries.take(torch.tensor([i])), time.perf_counter()
                answer(model, compressed, one, every_position=every_position)
                anchor.append(time.perf_counter() - start)
    return dict(
        full_seconds=statistics.median(full),
        anchor_seconds=statistics.median(anchor),
        speedup=statistics.median(f / a for f, a in zip(full, anchor)),
        encode_seconds=encode,
        prompt_tokens=float(statistics.mean(b.tokens.shape[1] for b in singles)),
        query_tokens=float(queries.attention_mask.sum(1).float().mean()),
        kept=float(compressed.kept[0]),
    )
