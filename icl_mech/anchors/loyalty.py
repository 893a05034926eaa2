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

from icl_mech.errors import IclMechError
from icl_mech.hooks import Capture, points
from icl_mech.prompts import PromptBatch

from .isolation import IsolateLabelWords, IsolateRandomWords, deep_layers, shallow_layers
from .readout import Anchors, check_anchors, concat_examples, require_label_words, target_logits

CONDITIONS = (("shallow", "label"), ("shallow", "random"), ("deep", "label"), ("deep", "random"))


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
    """Per example and condition: label loyalty (0/1) and word loyalty (Jaccard)."""

    label: Float[Tensor, "example condition"]
    word: Float[Tensor, "example condition"]
    conditions: list[tuple[str, str]]  # (depth, isolated words)
    k: int
    task: str = ""

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for e in range(len(self.label)):
            for c, (depth, words) in enumerate(self.conditions):
                rows.append(
                    {
                        "task": self.task,
                        "example": e,
                        "depth": depth,
                        "isolated": words,
                        "k": self.k,
                        "label_loyalty": float(self.label[e, c]),
                        "word_loyalty": float(self.word[e, c]),
                    }
                )
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        grouped = self.to_frame().groupby(["task", "depth", "isolated"], sort=False)
        out = grouped[["label_loyalty", "word_loyalty"]].agg(["mean", "std"])
        out.columns = [f"{a}_{b}" for a, b in out.columns]
        return out.reset_index()

    @classmethod
    def concat(cls, parts: Sequence[Loyalty]) -> Loyalty:
        return concat_examples(parts, "label", "word")


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
    return Loyalty(label.float(), word, list(CONDITIONS), k, batch.prompts[0].task.name)


def _base_run(model, batch, deep: list[int]):
    capture = Capture(points(model, "hook_resid_pre", deep[:1])) if deep else None
    logits = target_logits(model, batch, *([capture] if capture else []))
    residual = next(iter(capture.activations.values())) if capture else None
    return logits, residual
