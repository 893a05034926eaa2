"""Deep layers read the anchors: AUC-ROC_l and R_l (Wang et al. 2023, section 2.3).

At layer l the score of class i is ``A_l(q, p_i)``: the attention from the target q to the label
word of class i, summed over heads (and over the class's anchor tokens, or averaged: ``span``).
``AUC-ROC_l`` measures how well that score tells whether i is the model's own prediction; the
(example, class) pairs of all examples are pooled into one binary problem (``average="pooled"``),
or scored one class against the rest and averaged (``"macro"``). A class absent from a prompt
scores NaN and is left out. ``R_l = Σ_{i≤l} (AUC_i − 0.5) / Σ_all (AUC_i − 0.5)``, NaN when
the denominator is not positive.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from sklearn.metrics import roc_auc_score
from torch import Tensor

from icl_mech import display, stats
from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Probe, points, register
from icl_mech.prompt_batch import PromptBatch

from .loyalty import query_texts
from .readout import (
    Anchors,
    anchor_mask,
    check_layers,
    concat_examples,
    require_label_words,
    target_logits,
)

Span = Literal["sum", "mean"]
Average = Literal["pooled", "macro"]
AUC_RESAMPLES = 500  # enough for 95% percentile limits, and fast


@register("query-attention")
@dataclass(repr=False)
class QueryAttention(Probe):
    """Record each layer's attention row at the target q, summed over heads (detached)."""

    layers: Sequence[int] | None = None
    rows: dict[int, Tensor] = field(default_factory=dict, init=False)

    def specs(self, model, batch):
        if batch is None:
            raise IclMechError("query-attention needs the PromptBatch: attach(..., batch=)")
        layers = check_layers(model, self.layers, "query-attention")
        self.rows = {}
        return [
            HookSpec(name, partial(self._keep, layer, batch.targets))
            for layer, name in zip(layers, points(model, "attn.hook_pattern", layers))
        ]

    def _keep(self, layer: int, targets: Tensor, pattern: Tensor, hook) -> None:
        rows = torch.arange(pattern.shape[0], device=pattern.device)
        at_target = pattern[rows, :, targets.to(pattern.device)]
        self.rows[layer] = at_target.sum(1).detach()

    def stacked(self) -> Float[Tensor, "batch layer key"]:
        if not self.rows:
            raise IclMechError("QueryAttention: nothing recorded; run a forward first")
        return torch.stack([self.rows[layer] for layer in sorted(self.rows)], 1)


def class_scores(
    rows: Float[Tensor, "batch layer key"],
    batch: PromptBatch,
    anchors: Anchors = "all",
    span: Span = "sum",
) -> Float[Tensor, "batch layer n_classes"]:
    """A_l(q, p_i) per class i: attention on that class's anchor tokens (NaN if absent)."""
    if span not in ("sum", "mean"):
        raise IclMechError(f"span must be 'sum' or 'mean', got {span!r}")
    anchor = anchor_mask(batch, anchors)
    n_classes = len(batch.class_token_ids)
    member = torch.zeros(len(batch), rows.shape[-1], n_classes)  # [batch, key, class]
    for b, (row, classes) in enumerate(zip(batch.rows, batch.demo_labels)):
        for tokens, c in zip(row.labels, classes):
            for t in tokens:
                member[b, t, c] = float(anchor[b, t])
    scores = torch.einsum("blk,bkc->blc", rows.cpu(), member)
    counts = member.sum(1)[:, None, :]
    scores = scores / counts.clamp(min=1) if span == "mean" else scores
    return scores.masked_fill(counts == 0, float("nan"))


def roc_auc(scores: Float[Tensor, " n"], positive: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the binary ``positive``; NaN if one-sided."""
    keep = ~torch.isnan(scores)
    y, s = positive[keep].numpy().astype(bool), scores[keep].double().numpy()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def cumulative_ratio(auc: Float[Tensor, " layer"]) -> Float[Tensor, " layer"]:
    """R_l = Σ_{i≤l}(AUC_i − 0.5) / Σ_all(AUC_i − 0.5).

    NaN throughout when Σ_all(AUC_i − 0.5) <= 0: the attention then does not predict the output
    on the whole, and the ratio would read upside down.
    """
    excess = auc.double().nan_to_num(0.5) - 0.5
    total = excess.sum()
    if total <= 0:
        return torch.full_like(auc, float("nan"))
    return (excess.cumsum(0) / total).to(auc.dtype)


def weighted_roc_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC-ROC of ``scores`` ``[n]`` for the binary ``positive`` ``[n]`` with observation
    ``weights`` ``[r, n]`` (bootstrap counts): one AUC per row of weights, ties counting a half
    (what ``roc_auc_score`` gives with unit weights). NaN scores are left out; NaN where a row
    weighs only one class. Vectorised over rows: one sort, cumulative sums."""
    keep = ~np.isnan(scores)
    scores, positive, weights = scores[keep], positive[keep].astype(bool), weights[:, keep]
    order = np.argsort(scores, kind="stable")
    scores, positive, weights = scores[order], positive[order], weights[:, order]
    _, start, size = np.unique(scores, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(start)), size)
    negative = np.where(positive, 0.0, weights)
    before = np.concatenate([np.zeros((len(weights), 1)), negative.cumsum(1)], 1)
    below = before[:, start[group]]  # negative weight strictly below each score
    tied = before[:, (start + size)[group]] - below
    pos = np.where(positive, weights, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * tied)).sum(1) / (pos.sum(1) * negative.sum(1))


@dataclass
class AnchorAuc:
    """Class scores per example and layer, with the model's predictions."""

    scores: Float[Tensor, "example layer n_classes"]
    predicted: Int[Tensor, " example"]
    layers: list[int]
    task: str = ""
    average: Average = "pooled"
    queries: list[str] | None = None  # per example: the bootstrap's unit (see Loyalty)

    def units(self) -> list:
        return list(self.queries) if self.queries is not None else list(range(len(self.scores)))

    def __repr__(self) -> str:
        return (
            f"AnchorAuc(task={self.task!r}, examples={len(self.scores)}, "
            f"classes={self.scores.shape[-1]}, layers={len(self.layers)}, "
            f"average={self.average!r})"
        )

    def _repr_html_(self) -> str:
        """AUC-ROC_l with its 95% interval over queries and R_l per layer, and Fig. 5."""
        return display.html(self)

    def auc(self) -> Float[Tensor, " layer"]:
        if self.average not in ("pooled", "macro"):
            raise IclMechError(f"average must be 'pooled' or 'macro', got {self.average!r}")
        n_classes = self.scores.shape[-1]
        positive = torch.nn.functional.one_hot(self.predicted, n_classes).bool()
        out = []
        for layer in range(self.scores.shape[1]):
            s = self.scores[:, layer]
            if self.average == "pooled":
                out.append(roc_auc(s.flatten(), positive.flatten()))
            else:
                per_class = [roc_auc(s[:, c], positive[:, c]) for c in range(n_classes)]
                out.append(
                    float(np.nanmean(per_class)) if not np.isnan(per_class).all() else np.nan
                )
        return torch.tensor(out)

    def ratio(self) -> Float[Tensor, " layer"]:
        return cumulative_ratio(self.auc())

    def resampled_auc(self, n_resamples: int = AUC_RESAMPLES, seed: int = 0) -> np.ndarray:
        """``[n_resamples, layer]`` AUC-ROC_l of bootstrap resamples of the queries (all of a
        query's examples and classes move together), vectorised; the draws are those of
        ``stats.bootstrap_statistic`` over ``units()`` with the same seed."""
        weights, _ = stats.resample_weights(
            len(self.scores), self.units(), n_resamples=n_resamples, seed=seed
        )
        n_classes = self.scores.shape[-1]
        positive = torch.nn.functional.one_hot(self.predicted, n_classes).bool().numpy()
        scores = self.scores.double().numpy()
        out = np.empty((n_resamples, scores.shape[1]))
        for layer in range(scores.shape[1]):
            if self.average == "pooled":
                pooled = np.repeat(weights, n_classes, axis=1)  # example-major, as flatten()
                s, y = scores[:, layer].reshape(-1), positive.reshape(-1)
                out[:, layer] = weighted_roc_auc(s, y, pooled)
            else:
                per_class = np.stack(
                    [
                        weighted_roc_auc(scores[:, layer, c], positive[:, c], weights)
                        for c in range(n_classes)
                    ]
                )
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    out[:, layer] = np.nanmean(per_class, 0)
        return out

    def intervals(self, n_resamples: int = AUC_RESAMPLES, seed: int = 0) -> list[stats.Estimate]:
        """AUC-ROC_l per layer with a 95% percentile bootstrap interval over queries."""
        resampled, n = self.resampled_auc(n_resamples, seed), len(set(self.units()))
        return [
            stats.from_resamples(point, resampled[:, layer], n)
            for layer, point in enumerate(self.auc().tolist())
        ]

    def to_frame(self) -> pd.DataFrame:
        intervals = self.intervals()
        return pd.DataFrame(
            {
                "task": self.task,
                "layer": self.layers,
                "auc": self.auc(),
                "auc_low": [e.low for e in intervals],
                "auc_high": [e.high for e in intervals],
                "n": [e.n for e in intervals],
                "R": self.ratio(),
            }
        )

    @classmethod
    def concat(cls, parts: Sequence[AnchorAuc]) -> AnchorAuc:
        joined = concat_examples(parts, "scores", "predicted")
        if all(p.queries is not None for p in parts):
            joined.queries = [q for p in parts for q in p.queries]
        else:
            joined.queries = None
        return joined


def anchor_auc(
    model,
    batch: PromptBatch,
    *items,
    layers: Sequence[int] | None = None,
    anchors: Anchors = "all",
    span: Span = "sum",
    average: Average = "pooled",
) -> AnchorAuc:
    """One no-grad forward: class scores A_l(q, p_i) and the model's predicted class."""
    require_label_words(batch, "AUC-ROC")
    if span not in ("sum", "mean") or average not in ("pooled", "macro"):
        raise IclMechError(
            f"span must be 'sum' or 'mean' and average 'pooled' or 'macro', got {span!r}, "
            f"{average!r}"
        )
    probe = QueryAttention(layers)
    with torch.no_grad():
        logits = target_logits(model, batch, *items, probe)
    predicted = logits[:, batch.class_token_ids].argmax(-1)
    scores = class_scores(probe.stacked(), batch, anchors, span)
    task = batch.prompts[0].task.name
    return AnchorAuc(scores, predicted.cpu(), sorted(probe.rows), task, average, query_texts(batch))
