"""Tables 2 and 3 of "Label words are anchors" (Wang et al. 2023): loyalty and accuracy of
context compression (Text_anchor, Hidden_random, Hidden_random-top, Hidden_anchor against the
full prompt; each Hidden_* in two variants: keeping the label words only, as the paper, or the
label words and the formatting tokens), and the time per query of Hidden_anchor (label +
formatting) against the full prompt."""

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
    LABEL_ROLES,
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
from icl_mech.icl_prompt import ROLES, ICLPrompt
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Task
from icl_mech.stats import summarise, with_intervals

# what each Hidden_anchor variant keeps: the paper's (label words only) and ours (label words,
# BOS, template and separator tokens); each has its random baselines
VARIANTS = {"label words": LABEL_ROLES, "label + formatting": ANCHOR_ROLES}
SELECTED = "chosen on held-out queries"
METHODS = ("ICL", "Text_anchor") + tuple(
    f"{method} ({variant}{', ' + SELECTED if method.endswith('-top') else ''})"
    for variant in VARIANTS
    for method in ("Hidden_random", "Hidden_random-top", "Hidden_anchor")
)
METRICS = ("label_loyalty", "word_loyalty", "accuracy")
SHOWN = {m: m.replace("_", " ") + " (%)" for m in METRICS}  # "value [low, high]" columns


def answer_all(model, cache: ContextCache, queries: Tokens, batch_size: int = 16) -> torch.Tensor:
    """Logits [n, vocab] at the last token of every query, in batches, without gradients."""
    with torch.no_grad():
        parts = index_batches(len(queries), batch_size)
        return torch.cat([answer(model, cache, queries.take(torch.tensor(i))) for i in parts])


def one_demonstration_each(task: Task, n_test: int, seed: int) -> list[ICLPrompt]:
    """The test queries of a seeded split, all after the same 1-per-class demonstrations."""
    return split_for_compression(task, n_test, 0, seed)[0]


def split_for_compression(
    task: Task, n_test: int, n_select: int, seed: int
) -> tuple[list[ICLPrompt], list[ICLPrompt]]:
    """(test prompts, selection prompts): the test queries of a seeded split and up to
    ``n_select`` other queries of the pool (never a demonstration, never a test query), all after
    the same 1-per-class demonstrations. Hidden_random-top picks its draw on the selection."""
    pool, test = task.split(n_test, seed)
    demonstrations = pool.sample_demonstrations(1, random.Random(seed))
    rest = [e for e in pool.examples if e not in demonstrations and e not in test.examples]
    select = random.Random(seed + 7919).sample(rest, min(n_select, len(rest)))
    build = lambda queries: [ICLPrompt.build(task, demonstrations, q) for q in queries]  # noqa: E731
    return build(test.examples), build(select)


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
    """Wang et al.'s Table 2: loyalty to the full prompt and accuracy per compression method,
    one record per test query (and random draw). Hidden_random: mean over the draws per query;
    Hidden_random-top: the draw with the highest label loyalty on held-out selection queries
    (same task and demonstrations, disjoint from the test queries), scored on the test queries.
    ``kept``: context entries the test queries attend to (ICL: all, Text_anchor: its shorter
    context, Hidden_random: the formatting kept plus as many random entries as label words)."""

    records: list[dict]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)

    def per_query(self) -> pd.DataFrame:
        """One row per task, seed, method and test query (random draws averaged), with ``unit``:
        the query, the bootstrap cluster (a query seen under several seeds is one unit)."""
        frame = self.to_frame()
        keys = ["task", "seed", "method", "item"]
        columns = ["kept", "context", *METRICS]
        out = frame.groupby(keys, sort=False).agg(
            {"query": "first"} | dict.fromkeys(columns, "mean")
        )
        out = out.reset_index()
        out["unit"] = out["task"] + "\x1f" + out["query"]
        return out

    def table(self, by_task: bool = False) -> pd.DataFrame:
        """Per method (and task): mean kept entries, each metric in % as "value [low, high]"
        (95% bootstrap over test queries), then the numbers: metric, metric_low, metric_high."""
        frame, keys = self.per_query(), ["task", "method"] if by_task else ["method"]
        kept = frame.groupby(keys, sort=False)[["kept", "context"]].mean()
        parts = []
        for metric in METRICS:
            frame[metric] = frame[metric] * 100
            summary = summarise(frame, metric, keys, cluster="unit").set_index(keys)
            summary.insert(0, SHOWN[metric], with_intervals(summary, metric, 1))
            parts.append(summary.drop(columns="n") if metric != METRICS[-1] else summary)
        table = pd.concat([kept.round(1), *parts], axis=1)
        numbers = [c for c in table.columns if c not in SHOWN.values()]
        return table[[*SHOWN.values(), *numbers]]


def compression_experiment(
    model,
    tasks: Sequence[Task],
    n_test: int = 64,
    seeds: Sequence[int] = (0,),
    *,
    n_draws: int = 20,
    n_select: int = 64,
    top_k: int = 5,
    progress: bool = True,
) -> CompressionTable:
    """Per task and seed, test queries after the same 1-per-class demonstrations, answered
    from the full context and from each compression (``n_draws`` random draws per variant);
    ``n_select`` held-out queries choose Hidden_random-top's draw."""
    if n_draws < 1 or top_k < 1 or n_select < 1:
        raise IclMechError(
            f"n_draws, n_select and top_k must be at least 1, got {n_draws}, {n_select}, {top_k}"
        )
    records = []
    runs = [(task, seed) for task in tasks for seed in seeds]
    for task, seed in tqdm(runs, desc="compression", disable=not progress, leave=False):
        prompts, select = split_for_compression(task, n_test, n_select, seed)
        if not select:
            raise IclMechError(f"task {task.name!r}: no query left to select Hidden_random-top")
        for method, rows in compare_methods(model, prompts, n_draws, top_k, seed, select):
            records += [dict(task=task.name, seed=seed, method=method) | row for row in rows]
    return CompressionTable(records)


def compare_methods(model, prompts, n_draws: int, top_k: int, seed: int, select=()):
    """(method, one record per test query and draw) for every method, on prompts sharing their
    demonstrations; ``select``: held-out prompts (same demonstrations) that pick the top draw
    (without them the top draw is chosen on the test prompts: an oracle)."""
    n = len(prompts)
    cache, queries, batch = encode_shared(model, list(prompts) + list(select))
    ids, gold = batch.class_token_ids, batch.gold[:n]
    full = answer_all(model, cache, queries)
    text_cache, text_queries, _ = encode_shared(model, [text_anchor(p) for p in prompts])

    def loyal(logits, reference=full):
        return label_loyalty(reference[:, ids], logits[:, ids]).float()

    def records(logits, kept, draw=0):
        logits = logits[:n]
        loyalty, word = loyal(logits, full[:n]), top_k_jaccard(full[:n], logits, top_k)
        correct = (logits[:, ids].argmax(-1) == gold).float()
        return [
            dict(draw=draw, item=i, query=_query(p),
                 kept=float(kept), context=int(cache.length[0]), label_loyalty=float(loyalty[i]),
                 word_loyalty=float(word[i]), accuracy=float(correct[i]))
            for i, p in enumerate(prompts)
        ]  # fmt: skip

    yield "ICL", records(full, cache.kept[0])
    yield "Text_anchor", records(answer_all(model, text_cache, text_queries), text_cache.kept[0])
    for variant, roles in VARIANTS.items():
        anchor = anchor_keep(cache, roles)
        keeps = [random_keep(cache, anchor, seed * 1000 + d) for d in range(n_draws)]
        draws = [answer_all(model, cache.select(keep), queries) for keep in keeps]
        drawn = [r for d, (k, x) in enumerate(zip(keeps, draws)) for r in records(x, k.sum(), d)]
        yield f"Hidden_random ({variant})", drawn
        chooser = slice(n, None) if len(select) else slice(0, n)
        top = max(range(n_draws), key=lambda d: float(loyal(draws[d])[chooser].mean()))
        label = SELECTED if len(select) else "oracle: chosen on the test queries"
        yield f"Hidden_random-top ({variant}, {label})", records(draws[top], keeps[top].sum(), top)
        compressed = answer_all(model, cache.select(anchor), queries)
        yield f"Hidden_anchor ({variant})", records(compressed, anchor.sum())


def _query(prompt: ICLPrompt) -> str:
    """The query's text (the bootstrap unit)."""
    return "".join(s.text for s in prompt.segments if s.demo < 0)


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
