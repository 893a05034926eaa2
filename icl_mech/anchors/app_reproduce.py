"""Reproduce the applications of "Label words are anchors" (Wang et al. 2023, section 3):
Table 1 (anchor re-weighting), Table 2 (compression loyalty and accuracy), Table 3 (speed-up)
and the anchor-distance diagnosis (Figure 6). ``run`` writes tables and figures, returns numbers.
"""

from __future__ import annotations

import pathlib
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm

from icl_mech import tasks as bundled
from icl_mech.anchors import app_figures as figures
from icl_mech.anchors.compression import (
    ANCHOR_ROLES,
    ContextCache,
    Tokens,
    anchor_keep,
    answer,
    encode_shared,
)
from icl_mech.anchors.diagnosis import Diagnosis, diagnose
from icl_mech.anchors.loyalty import label_loyalty, top_k_jaccard
from icl_mech.anchors.readout import target_logits
from icl_mech.anchors.reweighting import ReweightingTable, reweighting_experiment
from icl_mech.errors import IclMechError
from icl_mech.models import torch_threads
from icl_mech.prompts import ROLES, ICLPrompt, PromptBatch, Task

PREFIX = "anchor_apps_"
METHODS = ("ICL", "Text_anchor", "Hidden_random", "Hidden_random-top", "Hidden_anchor")


def answer_all(model, cache: ContextCache, queries: Tokens, batch_size: int = 16) -> torch.Tensor:
    """Logits [n, vocab] at the last token of every query, in batches, without gradients."""
    with torch.no_grad():
        parts = torch.arange(len(queries)).split(batch_size)
        return torch.cat([answer(model, cache, queries.take(index)) for index in parts])


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


TRAINING = ("epochs", "lr", "batch_size", "aux_per_class", "anchors")
SPEED = ("full_seconds", "anchor_seconds", "speedup")
QUICK = dict(
    tasks=("sentiment",), n_test=16, seeds=1, epochs=2, n_draws=2, timing_queries=3, rounds=1,
    diagnosis_tasks=("question_type",), diagnosis_queries=24, scan=False,
)  # fmt: skip
FULL = dict(
    tasks=tuple(bundled.names("classification")), n_test=64, seeds=2, epochs=10, n_draws=10,
    timing_queries=8, rounds=3, diagnosis_tasks=("question_type", "topic", "emotion"),
    diagnosis_queries=120, scan=True,
)  # fmt: skip


def run(model, out_dir: pathlib.Path, quick: bool = False, seed: int = 0, **options) -> dict:
    """Tables 1-3 and the diagnosis on ``model``; options override ``QUICK``/``FULL`` keys and
    the training keywords of ``train_beta`` (lr, batch_size, aux_per_class, anchors)."""
    unknown = sorted(set(options) - set(QUICK) - set(TRAINING) - {"progress", "threads"})
    if unknown:
        raise IclMechError(f"unknown options {unknown}; known: {sorted(QUICK) + list(TRAINING)}")
    settings = {**(QUICK if quick else FULL), **options}
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task_list = [bundled.load(name) for name in settings.pop("tasks")]
    seeds = [seed + i for i in range(settings.pop("seeds"))]
    progress = settings.pop("progress", True)
    with torch_threads(settings.pop("threads", 1)):
        training = {k: settings[k] for k in TRAINING if k in settings}
        table1 = reweighting_experiment(
            model, task_list, settings["n_test"], seeds, progress=progress, **training
        )
        table2 = compression_experiment(
            model, task_list, settings["n_test"], seeds, n_draws=settings["n_draws"],
            progress=progress,
        )  # fmt: skip
        table3 = pd.DataFrame([speedups(model, task, settings, seed) for task in task_list])
        diagnoses = [
            diagnose(model, task, *demos_and_queries(task, settings["diagnosis_queries"], seed),
                     scan=settings["scan"])
            for task in map(bundled.load, settings["diagnosis_tasks"])
        ]  # fmt: skip
    write(out_dir, table1, table2, table3, diagnoses)
    return headline(table1, table2, table3, diagnoses)


def speedups(model, task: Task, settings: dict, seed: int) -> dict:
    """Table 3 row: time per query with logits at q, and with logits at every token."""
    prompts = one_demonstration_each(task, settings["timing_queries"], seed)
    at_q = time_per_query(model, prompts, settings["rounds"])
    every = time_per_query(model, prompts, settings["rounds"], every_position=True)
    return {"task": task.name} | at_q | {f"{k}_every_position": every[k] for k in SPEED}


def demos_and_queries(task: Task, n: int, seed: int) -> tuple[list, list]:
    pool, test = task.split(n, seed)
    return pool.sample_demonstrations(1, random.Random(seed)), list(test.examples)


def write(out_dir, table1: ReweightingTable, table2, table3, diagnoses: list[Diagnosis]) -> None:
    tables = {
        "table1_reweighting": table1.table(),
        "table2_compression": table2.table(),
        "table2_compression_by_task": table2.table(by_task=True),
        "table3_speedup": table3.set_index("task").round(4),
        "diagnosis": pd.concat([d.to_frame() for d in diagnoses]),
    }
    for name, frame in tables.items():
        frame.to_csv(out_dir / f"{PREFIX}{name}.csv")
        (out_dir / f"{PREFIX}{name}.md").write_text(figures.markdown(frame))
    drawn = {
        "reweighting": figures.reweighting_figure(table1),
        "compression": figures.compression_figure(table2),
        "speedup": figures.speedup_figure(table3.set_index("task")),
        "diagnosis": figures.diagnosis_figure(diagnoses),
    }
    for name, figure in drawn.items():
        figure.savefig(out_dir / f"{PREFIX}{name}.png", dpi=120, bbox_inches="tight")


def headline(table1: ReweightingTable, table2, table3, diagnoses: list[Diagnosis]) -> dict:
    average = table1.table().loc["average"]
    compressed = table2.table()
    out = {f"table1_{k.replace(' ', '_')}": float(v) for k, v in average.items()}
    out["table1_gain"] = float(average["re-weighted 1-shot"] - average["vanilla 1-shot"])
    for method in METHODS:
        for metric, value in compressed.loc[method].items():
            out[f"table2_{method}_{metric}"] = float(value)
    for row in table3.itertuples():
        out[f"table3_speedup_{row.task}"] = float(row.speedup)
        out[f"table3_speedup_every_position_{row.task}"] = float(row.speedup_every_position)
    for d in diagnoses:
        out[f"diagnosis_{d.task}_correlation"] = d.correlation
        out[f"diagnosis_{d.task}_most_confused_actual"] = "/".join(d.most_confused("actual"))
        out[f"diagnosis_{d.task}_most_confused_predicted"] = "/".join(d.most_confused("predicted"))
    return out
