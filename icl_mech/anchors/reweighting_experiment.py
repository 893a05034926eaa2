"""Wang et al.'s Table 1: accuracy of vanilla 1-shot, vanilla 5-shot and anchor re-weighted
1-shot prompts, with beta trained on a few auxiliary examples per class."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from icl_mech.anchors.compression import answer, encode_shared
from icl_mech.anchors.reweighting import TrainedBeta, train_beta
from icl_mech.batching import index_batches
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompts import Task
from icl_mech.stats import Estimate, bootstrap, paired


def split_for_reweighting(task: Task, n_test: int, aux_per_class: int, seed: int) -> tuple:
    """(1 demonstration per class, ``aux_per_class`` auxiliary examples per class, test):
    disjoint, and no auxiliary example shares an input with a demonstration (``Task.leaks``);
    the test part shares none with either (``Task.split``)."""
    pool, test = task.split(n_test, seed)
    demonstrations = pool.sample_demonstrations(1, rng := random.Random(seed))
    kept = [e for e in pool.examples if not any(pool.leaks(e, d) for d in demonstrations)]
    rest = pool.with_examples(kept)
    return demonstrations, rest.sample_demonstrations(aux_per_class, rng), list(test.examples)


CONDITIONS = ("vanilla 1-shot", "vanilla 5-shot", "re-weighted 1-shot")


def predict_classes(
    model, task: Task, demonstrations, queries, *, trained=None, batch_size: int = 16
) -> tuple[Tensor, Tensor]:
    """(predicted, gold) class per query, all asked after the same demonstrations."""
    prompts = [ICLPrompt.build(task, list(demonstrations), q) for q in queries]
    cache, tokens, batch = encode_shared(model, prompts)
    items = [] if trained is None else [trained.intervention(cache=cache)]
    predicted = []
    with torch.no_grad():
        for index in index_batches(len(prompts), batch_size):
            logits = answer(model, cache, tokens.take(torch.tensor(index)), *items)
            predicted.append(logits[:, batch.class_token_ids].argmax(-1))
    return torch.cat(predicted), batch.gold


GAIN = "gain (re-weighted - vanilla 1-shot)"
NUMBERS = dict(zip((*CONDITIONS, GAIN), ("vanilla_1_shot", "vanilla_5_shot", "reweighted_1_shot",
                                         "gain")))  # fmt: skip
ALL_TASKS = "all tasks"


@dataclass
class ReweightingTable:
    """Wang et al.'s Table 1: one record per task, seed, condition (``CONDITIONS``) and test
    query (``correct``: 0 or 1)."""

    records: list[dict]
    trained: list[TrainedBeta]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)

    def per_query(self) -> pd.DataFrame:
        """One row per task, seed and test query, one column per condition; ``unit``: the
        query, the bootstrap cluster (a query seen under several seeds is one unit)."""
        frame = self.to_frame()
        wide = frame.pivot_table("correct", ["task", "seed", "item", "query"], "condition",
                                 sort=False).reset_index()  # fmt: skip
        wide["unit"] = wide["task"] + "\x1f" + wide["query"]
        return wide

    def estimates(self) -> dict[str, dict[str, Estimate]]:
        """Per task and over all tasks (pooled test queries): accuracy (%) of each condition and
        the paired gain of re-weighting over vanilla 1-shot, 95% bootstrap over queries."""
        wide = self.per_query()
        groups = [(task, part) for task, part in wide.groupby("task", sort=False)]
        out = {}
        for name, part in [*groups, (ALL_TASKS, wide)]:
            units = part["unit"].tolist()
            out[name] = {c: bootstrap(part[c] * 100, units) for c in CONDITIONS}
            out[name][GAIN] = paired(part[CONDITIONS[2]] * 100, part[CONDITIONS[0]] * 100, units)
        return out

    def table(self) -> pd.DataFrame:
        """Per task and over all tasks: each condition's accuracy (%) and the gain as
        "value [low, high]", then the numbers (value, _low, _high) and ``n`` (test queries)."""
        rows = []
        for name, estimates in self.estimates().items():
            row = {"task": name} | {k: e.format(1) for k, e in estimates.items()}
            for key, estimate in estimates.items():
                row |= estimate.as_dict(NUMBERS[key])
            rows.append(row)
        return pd.DataFrame(rows).set_index("task")


def reweighting_experiment(
    model,
    tasks: Sequence[Task],
    n_test: int = 64,
    seeds: Sequence[int] = (0,),
    *,
    aux_per_class: int = 4,
    progress: bool = True,
    **training,
) -> ReweightingTable:
    """Per task and seed: 1 demonstration and ``aux_per_class`` auxiliary examples per class.
    Vanilla 1-shot asks the test queries after the demonstrations; vanilla 5-shot after the
    demonstrations and the auxiliary examples (shuffled); re-weighted 1-shot after the
    demonstrations with beta trained on the auxiliary examples (``training``: lr, epochs, ...).
    """
    records, trained_all = [], []
    for task in tasks:
        for seed in seeds:
            demos, aux, test = split_for_reweighting(task, n_test, aux_per_class, seed)
            trained = train_beta(model, task, demos, aux, seed=seed, progress=progress, **training)
            five = demos + aux
            random.Random(seed).shuffle(five)
            runs = {
                CONDITIONS[0]: predict_classes(model, task, demos, test),
                CONDITIONS[1]: predict_classes(model, task, five, test),
                CONDITIONS[2]: predict_classes(model, task, demos, test, trained=trained),
            }
            before, after = trained.aux_loss
            records += [
                dict(task=task.name, seed=seed, condition=condition, item=i, query=query.x,
                     correct=float(right), aux_loss_before=before, aux_loss_after=after)
                for condition, (predicted, gold) in runs.items()
                for i, (query, right) in enumerate(zip(test, (predicted == gold).tolist()))
            ]  # fmt: skip
            trained_all.append(trained)
    return ReweightingTable(records, trained_all)
