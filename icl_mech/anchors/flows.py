"""Information flows from the saliency matrices (Wang et al. 2023, section 2.1).

With p_k the anchor (label-word) positions and q the target position, per layer:

- ``S_wp``: mean of I(p_k, j) over j < p_k (text → label words);
- ``S_pq``: mean of I(q, p_k) (label words → target);
- ``S_ww``: mean of every other I(i, j), j < i.

The diagonal (j = i) and padding are excluded from all three. ``normalised()`` is the paper's
per-layer view where the three values of one example and layer sum to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icl_mech import display, stats
from icl_mech.errors import IclMechError
from icl_mech.prompt_batch import PromptBatch

from .loyalty import query_texts
from .readout import Anchors, anchor_mask
from .saliency import SaliencyResult

FLOWS = ("S_wp", "S_pq", "S_ww")


def flow_masks(
    valid: Bool[Tensor, "batch seq"],
    anchors: Bool[Tensor, "batch seq"],
    targets: Int[Tensor, " batch"],
) -> Bool[Tensor, "batch 3 query key"]:
    """The three disjoint sets of (query, key) pairs, as masks."""
    batch_size, seq = valid.shape
    positions = torch.arange(seq)
    earlier = positions[None, :] < positions[:, None]  # [query, key]: key strictly before query
    pairs = valid[:, :, None] & valid[:, None, :] & earlier
    is_target = positions[None, :] == targets[:, None]  # [batch, seq]
    word_to_label = pairs & anchors[:, :, None]
    label_to_target = pairs & is_target[:, :, None] & anchors[:, None, :]
    word_to_word = pairs & ~word_to_label & ~label_to_target
    return torch.stack([word_to_label, label_to_target, word_to_word], dim=1)


def flow_values(
    scores: Float[Tensor, "batch layer query key"],
    valid: Bool[Tensor, "batch seq"],
    anchors: Bool[Tensor, "batch seq"],
    targets: Int[Tensor, " batch"],
) -> Float[Tensor, "batch layer 3"]:
    """Mean saliency over each pair set; NaN where a set is empty."""
    if scores.shape[0] != valid.shape[0] or scores.shape[-2:] != (valid.shape[1],) * 2:
        raise IclMechError(
            f"saliency scores {tuple(scores.shape)} do not match a batch of shape "
            f"{tuple(valid.shape)}"
        )
    masks = flow_masks(valid.cpu(), anchors.cpu(), targets.cpu()).to(scores.dtype)
    sums = einops.einsum(scores.cpu(), masks, "b l q k, b f q k -> b l f")
    counts = einops.reduce(masks, "b f q k -> b 1 f", "sum")
    return sums / counts  # 0/0 → NaN marks an empty set


@dataclass
class Flows:
    """S_wp, S_pq, S_ww per example and layer, for one task."""

    values: Float[Tensor, "example layer 3"]
    layers: list[int]
    task: str = ""
    queries: list[str] | None = None  # per example: the bootstrap's unit (see Loyalty)

    def units(self) -> list:
        return list(self.queries) if self.queries is not None else list(range(len(self.values)))

    def __repr__(self) -> str:
        return f"Flows(task={self.task!r}, examples={len(self.values)}, layers={len(self.layers)})"

    def _repr_html_(self) -> str:
        """Per layer the share of each flow with its 95% interval over queries, and Fig. 3."""
        return display.html(self)

    def normalised(self) -> Float[Tensor, "example layer 3"]:
        return self.values / self.values.sum(-1, keepdim=True)

    def mean(self, normalised: bool = False) -> Float[Tensor, "layer 3"]:
        return (self.normalised() if normalised else self.values).nanmean(0)

    def std(self, normalised: bool = False) -> Float[Tensor, "layer 3"]:
        values = self.normalised() if normalised else self.values
        return values.std(0) if len(values) > 1 else torch.zeros_like(values[0])

    def intervals(self, normalised: bool = False):
        """(mean, low, high, n): the mean over examples (NaN left out) per layer and flow with
        a 95% bootstrap interval over queries (``stats.bootstrap_columns``)."""
        values = self.normalised() if normalised else self.values
        mean, low, high, n = stats.bootstrap_columns(values.double().numpy(), self.units())
        return mean, low, high, n

    def dominant(self) -> list[str]:
        """Per layer, which of S_wp and S_pq is larger on average."""
        mean = self.mean()
        return ["S_wp" if wp > pq else "S_pq" for wp, pq in mean[:, :2].tolist()]

    def to_frame(self) -> pd.DataFrame:
        """One row per example, layer and flow: raw and renormalised value."""
        n_examples = len(self.values)
        raw, norm = self.values, self.normalised()
        index = pd.MultiIndex.from_product(
            [range(n_examples), self.layers, FLOWS], names=["example", "layer", "flow"]
        )
        frame = pd.DataFrame(
            {"value": raw.flatten().numpy(), "normalised": norm.flatten().numpy()}, index=index
        ).reset_index()
        frame.insert(0, "task", self.task)
        return frame

    def summary(self) -> pd.DataFrame:
        """Per layer and flow: the mean over examples of the raw (``value``) and renormalised
        (``normalised``) saliency with 95% bootstrap intervals over queries (``*_low``,
        ``*_high``); ``n`` distinct queries; ``share`` formats the renormalised one."""
        index = pd.MultiIndex.from_product([self.layers, FLOWS], names=["layer", "flow"])
        out = pd.DataFrame(index=index).reset_index()
        out.insert(0, "task", self.task)
        for name, normalised in (("value", False), ("normalised", True)):
            mean, low, high, n = self.intervals(normalised)
            out[name], out[f"{name}_low"], out[f"{name}_high"] = (
                a.reshape(-1) for a in (mean, low, high)
            )
        out["n"] = n
        out["share"] = stats.with_intervals(out, "normalised")
        return out

    @classmethod
    def concat(cls, parts: Sequence[Flows]) -> Flows:
        if not parts:
            raise IclMechError("Flows.concat: nothing to concatenate")
        if any(p.layers != parts[0].layers for p in parts):
            raise IclMechError("Flows.concat: parts cover different layers")
        queries = None
        if all(p.queries is not None for p in parts):
            queries = [q for p in parts for q in p.queries]
        values = torch.cat([p.values for p in parts])
        return cls(values, parts[0].layers, parts[0].task, queries)


def flows(result: SaliencyResult, batch: PromptBatch, anchors: Anchors = "all") -> Flows:
    """The three flows of every row and layer of a saliency result."""
    values = flow_values(
        result.scores,
        batch.attention_mask.bool(),
        anchor_mask(batch, anchors),
        batch.targets,
    )
    task = batch.prompts[0].task.name
    return Flows(values, list(result.layers), task, query_texts(batch))
