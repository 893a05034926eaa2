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
from icl_mech.prompts import ICLPrompt, Task


def split_for_reweighting(task: Task, n_test: int, aux_per_class: int, seed: int) -> tuple:
    """(1 demonstration per class, ``aux_per_class`` auxiliary examples per class, test)."""
    pool, test = task.split(n_test, seed)
    demonstrations = pool.sample_demonstrations(1, rng := random.Random(seed))
    rest = pool.with_examples([e for e in pool.examples if e not in demonstrations])
    return demonstrations, rest.sample_demonstrations(aux_per_class, rng), list(test.examples)


CONDITIONS = ("vanilla 1-shot", "vanilla 5-shot", "re-weighted 1-shot")


def predict_classes(
    model, task: Task, demonstrations, queries, *, trained=None, batch_size: int = 16
) -> tuple[Tensor, Tensor]:
    """(predicted, gold) class per query, all asked after the same demonstrations."""
    prompts = [ICLPrompt.build(task, list(demonstrations), q) for q in queries]
    cache, tokens, batch = encode_shared(model, prompts)
    items = [] if trained is None else [trained.intervention(cache)]
    predicted = []
    with torch.no_grad():
        for index in index_batches(len(prompts), batch_size):
            logits = answer(model, cache, tokens.take(torch.tensor(index)), *items)
            predicted.append(logits[:, batch.class_token_ids].argmax(-1))
    return torch.cat(predicted), batch.gold


@dataclass
class ReweightingTable:
    """Wang et al.'s Table 1: accuracy per task, seed and condition (``CONDITIONS``)."""

    records: list[dict]
    trained: list[TrainedBeta]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)

    def table(self) -> pd.DataFrame:
        """Accuracy (%) per task, averaged over seeds, with an average row."""
        frame = self.to_frame().pivot_table("accuracy", "task", "condition", sort=False)
        frame = frame[list(CONDITIONS)] * 100
        frame.loc["average"] = frame.mean()
        return frame.round(2)


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
                dict(task=task.name, seed=seed, condition=condition, n=len(gold),
                     accuracy=float((predicted == gold).float().mean()),
                     aux_loss_before=before, aux_loss_after=after)
                for condition, (predicted, gold) in runs.items()
            ]  # fmt: skip
            trained_all.append(trained)
    return ReweightingTable(records, trained_all)
