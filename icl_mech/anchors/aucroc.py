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

from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Probe, points, register
from icl_mech.prompts import PromptBatch

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
        at_target = pattern[torch.arange(pattern.shape[0]), :, targets.to(pattern.device)]
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


@dataclass
class AnchorAuc:
    """Class scores per example and layer, with the model's predictions."""

    scores: Float[Tensor, "example layer n_classes"]
    predicted: Int[Tensor, " example"]
    layers: list[int]
    task: str = ""
    average: Average = "pooled"

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

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"task": self.task, "layer": self.layers, "auc": self.auc(), "R": self.ratio()}
        )

    @classmethod
    def concat(cls, parts: Sequence[AnchorAuc]) -> AnchorAuc:
        return concat_examples(parts, "scores", "predicted")


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
    return AnchorAuc(
        scores, predicted.cpu(), sorted(probe.rows), batch.prompts[0].task.name, average
    )
