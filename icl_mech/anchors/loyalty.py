"""Loyalty of an intervened run to the unmodified one (Wang et al. 2023, section 2.2).

- label loyalty: the predicted label (argmax over the label words' logits at q) is unchanged;
- word loyalty: Jaccard similarity of the top-k next tokens over the whole vocabulary at q.

``isolation_loyalty`` runs the paper's four conditions (label or random words, isolated in the
first or last k layers) against the unmodified run. Deep conditions resume the forward from the
residual stream entering the first isolated layer, which the unmodified run captures, so they
cost k / n_layers of a forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icl_mech import display, stats
from icl_mech.errors import IclMechError
from icl_mech.hooks import points
from icl_mech.icl_prompt import QUERY
from icl_mech.interventions import Capture
from icl_mech.prompt_batch import PromptBatch

from .isolation import IsolateLabelWords, IsolateRandomWords, deep_layers, shallow_layers
from .readout import Anchors, check_anchors, concat_examples, require_label_words, target_logits

CONDITIONS = (("shallow", "label"), ("shallow", "random"), ("deep", "label"), ("deep", "random"))
METRICS = ("label_loyalty", "word_loyalty")


def query_texts(batch: PromptBatch) -> list[str]:
    """Each row's query as rendered in its prompt: the unit a bootstrap keeps together (the
    same query drawn under several seeds is one unit)."""
    return ["".join(s.text for s in p.segments if s.demo == QUERY) for p in batch.prompts]


def label_loyalty(
    base: Float[Tensor, "batch n_classes"], other: Float[Tensor, "batch n_classes"]
) -> Bool[Tensor, " batch"]:
    return base.argmax(-1) == other.argmax(-1)


def top_k_jaccard(
    base: Float[Tensor, "batch vocab"], other: Float[Tensor, "batch vocab"], k: int = 5
) -> Float[Tensor, " batch"]:
    if not 1 <= k <= base.shape[-1]:
        raise IclMechError(f"top-k must be between 1 and the vocabulary size {base.shape[-1]}")
    return jaccard(base.topk(k, -1).indices, other.topk(k, -1).indices)


def jaccard(a: Int[Tensor, "batch k"], b: Int[Tensor, "batch k2"]) -> Float[Tensor, " batch"]:
    """|A ∩ B| / |A ∪ B| of the sets of ids in each row (ids within a row are distinct)."""
    shared = (a[:, :, None] == b[:, None, :]).any(-1).sum(-1).float()
    return shared / (a.shape[1] + b.shape[1] - shared)


@dataclass
class Loyalty:
    """Per example and condition: label loyalty (0/1) and word loyalty (Jaccard).

    ``queries`` (one text per example) are the bootstrap's units: intervals resample queries,
    keeping a query's rows from several seeds together (without them, every example is a unit).
    """

    label: Float[Tensor, "example condition"]
    word: Float[Tensor, "example condition"]
    conditions: list[tuple[str, str]]  # (depth, isolated words)
    k: int
    task: str = ""
    queries: list[str] | None = None

    def units(self) -> list:
        return list(self.queries) if self.queries is not None else list(range(len(self.label)))

    def __repr__(self) -> str:
        return (
            f"Loyalty(task={self.task!r}, examples={len(self.label)}, k={self.k}, "
            f"conditions={len(self.conditions)})"
        )

    def _repr_html_(self) -> str:
        """Label and word loyalty per condition and the shallow − deep effects, each with its
        95% interval over queries, and Fig. 4."""
        return display.html(self)

    def to_frame(self) -> pd.DataFrame:
        rows, units = [], self.units()
        for e in range(len(self.label)):
            for c, (depth, words) in enumerate(self.conditions):
                rows.append(
                    {
                        "task": self.task,
                        "example": e,
                        "query": units[e],
                        "depth": depth,
                        "isolated": words,
                        "k": self.k,
                        "label_loyalty": float(self.label[e, c]),
                        "word_loyalty": float(self.word[e, c]),
                    }
                )
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """Per condition: mean label and word loyalty with a 95% bootstrap interval over
        queries (``*_low``, ``*_high``), ``n`` the number of distinct queries, and the
        formatted ``"0.60 [0.52, 0.68]"`` columns ``label`` and ``word``."""
        frame, by = self.to_frame(), ["task", "depth", "isolated"]
        label, word = (stats.summarise(frame, m, by, cluster="query") for m in METRICS)
        out = label.drop(columns="n").merge(word, on=by)
        out["label"] = stats.with_intervals(out, "label_loyalty")
        out["word"] = stats.with_intervals(out, "word_loyalty")
        return out

    def effect(self, metric: str = "word", words: str = "label") -> stats.Estimate:
        """Shallow minus deep isolation of ``words`` ("label" or "random"): the mean paired
        difference of ``metric`` loyalty ("label" or "word") over the same examples, with a
        bootstrap interval over queries."""
        values = getattr(self, metric)
        shallow = values[:, self.conditions.index(("shallow", words))]
        deep = values[:, self.conditions.index(("deep", words))]
        return stats.paired(shallow.numpy(), deep.numpy(), self.units())

    def effects(self) -> pd.DataFrame:
        """``effect`` for both metrics and both kinds of isolated words, as a tidy table."""
        rows = []
        for words in ("label", "random"):
            for metric in ("label", "word"):
                estimate = self.effect(metric, words)
                row = {"task": self.task, "isolated": words, "metric": f"{metric}_loyalty"}
                rows.append(row | estimate.as_dict("shallow_minus_deep") | {"k": self.k})
        out = pd.DataFrame(rows)
        out["effect"] = stats.with_intervals(out, "shallow_minus_deep")
        return out

    def estimate(self, depth: str, words: str, metric: str = "word") -> stats.Estimate:
        values = getattr(self, metric)[:, self.conditions.index((depth, words))]
        return stats.bootstrap(values.numpy(), self.units())

    @classmethod
    def concat(cls, parts: Sequence[Loyalty]) -> Loyalty:
        joined = concat_examples(parts, "label", "word")
        joined.queries = _joined_queries(parts)
        return joined


def _joined_queries(parts) -> list[str] | None:
    if any(p.queries is None for p in parts):
        return None
    return [q for p in parts for q in p.queries]


def isolation_loyalty(
    model,
    batch: PromptBatch,
    k: int = 5,
    *,
    anchors: Anchors = "all",
    n_random: int | None = None,
    top_k: int = 5,
    seed: int = 0,
    base_logits: Float[Tensor, "batch vocab"] | None = None,
    deep_residual: Float[Tensor, "batch seq d_model"] | None = None,
) -> Loyalty:
    """Label and word loyalty under the four isolation conditions, for one batch.

    ``base_logits`` (unmodified logits at q) and ``deep_residual`` (the stream entering layer
    ``n_layers - k``) can come from an earlier run of the same batch; otherwise one is made.
    """
    require_label_words(batch, "isolation")
    check_anchors(anchors)
    shallow, deep = shallow_layers(model, k), deep_layers(model, k)
    if not 1 <= top_k <= model.cfg.d_vocab_out:
        raise IclMechError(f"top_k must be between 1 and the vocabulary size, got {top_k}")
    with torch.no_grad():
        if base_logits is None or (deep and deep_residual is None):
            base_logits, deep_residual = _base_run(model, batch, deep)
        runs = []
        for depth, words in CONDITIONS:
            layers = shallow if depth == "shallow" else deep
            if words == "label":
                item = IsolateLabelWords(layers, anchors)
            else:
                item = IsolateRandomWords(layers, n_random, anchors, seed)
            if depth == "deep" and deep:
                runs.append(
                    target_logits(
                        model, batch, item, start_at_layer=deep[0], residual=deep_residual
                    )
                )
            else:
                runs.append(target_logits(model, batch, item))
    ids = batch.class_token_ids
    label = torch.stack([label_loyalty(base_logits[:, ids], r[:, ids]) for r in runs], 1)
    word = torch.stack([top_k_jaccard(base_logits, r, top_k) for r in runs], 1)
    task = batch.prompts[0].task.name
    return Loyalty(label.float(), word, list(CONDITIONS), k, task, query_texts(batch))


def _base_run(model, batch, deep: list[int]):
    capture = Capture(points(model, "hook_resid_pre", deep[:1])) if deep else None
    logits = target_logits(model, batch, *([capture] if capture else []))
    residual = next(iter(capture.activations.values())) if capture else None
    return logits, residual
