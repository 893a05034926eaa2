"""Anchor-distance error diagnosis (Wang et al. 2023, section 3.3).

The target q reads class i through q . k_{p_i}. If the label words' keys of two classes differ
little along the directions in which the queries vary, q cannot tell them apart. So:

- queries at q and keys of the label words (their first token, ``anchors="first"``, the class
  token) at the chosen layers and heads (concatenated; a key head is repeated for the query
  heads that share it; after the rotary embedding, at the positions of the full prompt), from
  prompts sharing one set of demonstrations;
- the queries' principal directions (top ``n_components``), each key projected on them and
  scaled by the direction's singular value;
- predicted confusion ``||k_i - k_j|| / max ||k_s - k_t||`` (smaller = more confusable: the
  most distinct pair is 1, the most confusable pair is the smallest off-diagonal value, 0 only
  if two keys coincide; diagonal 1);
- actual confusion: AUC-ROC of telling class i from j by the ratio of their probabilities on
  the test queries of those two classes (0.5 = confused, diagonal 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech.anchors.aucroc import roc_auc
from icl_mech.anchors.compression import ContextCache, answer, encode_shared
from icl_mech.anchors.positions_continued import rotate
from icl_mech.anchors.readout import Anchors, check_layers
from icl_mech.anchors.reweighting import anchor_columns
from icl_mech.batching import index_batches
from icl_mech.errors import IclMechError
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.interventions import Capture
from icl_mech.prompts import Task


def predicted_confusion(
    keys: Float[Tensor, "n_classes d"],
    queries: Float[Tensor, "n_queries d"],
    n_components: int = 10,
) -> Float[Tensor, "n_classes n_classes"]:
    """Distances of the keys on the queries' main directions divided by the largest one: the
    most distinct pair is 1, smaller = more confusable (0 only for coinciding keys); diagonal 1."""
    if keys.ndim != 2 or queries.ndim != 2 or keys.shape[1] != queries.shape[1]:
        raise IclMechError(
            f"keys [n_classes, d] and queries [n_queries, d] must share d; got "
            f"{tuple(keys.shape)} and {tuple(queries.shape)}"
        )
    if len(keys) < 2 or len(queries) < 2 or n_components < 1:
        raise IclMechError("need at least 2 classes, 2 queries and 1 component")
    centred = (queries - queries.mean(0)).double()
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
    k = min(n_components, len(singular))
    projected = keys.double() @ directions[:k].T * singular[:k]
    distance = torch.cdist(projected, projected)
    if float(distance.max()) == 0:
        raise IclMechError("all keys coincide on the queries' main directions")
    distance = distance / distance.max()
    return distance.fill_diagonal_(1.0).float()


def actual_confusion(
    class_logits: Float[Tensor, "n n_classes"], gold: Int[Tensor, " n"]
) -> Float[Tensor, "n_classes n_classes"]:
    """AUC-ROC of telling class i from j (by log p_i - log p_j) on their test queries."""
    n_classes = class_logits.shape[1]
    out = torch.ones(n_classes, n_classes)
    for i in range(n_classes):
        for j in range(n_classes):
            if i != j:
                rows = (gold == i) | (gold == j)
                margin = class_logits[rows, i] - class_logits[rows, j]
                out[i, j] = roc_auc(margin, gold[rows] == i)
    return out


def off_diagonal(matrix: Tensor) -> Tensor:
    i, j = torch.triu_indices(*matrix.shape, offset=1)
    return matrix[i, j]


def confusable_pairs(matrix: Tensor, classes: Sequence[str]) -> list[tuple[str, str, float]]:
    """Class pairs from most to least confusable (smallest value first)."""
    i, j = torch.triu_indices(*matrix.shape, offset=1)
    order = torch.argsort(matrix[i, j], stable=True)
    return [(classes[i[o]], classes[j[o]], float(matrix[i[o], j[o]])) for o in order]


@dataclass
class Diagnosis:
    """Predicted vs actual confusion of one task (``layers``: where the keys were read)."""

    task: str
    classes: tuple[str, ...]
    layers: list[int]
    predicted: Float[Tensor, "n_classes n_classes"]
    actual: Float[Tensor, "n_classes n_classes"]
    accuracy: float
    per_layer: dict[int, float] = field(default_factory=dict)  # Pearson r at each single layer

    @property
    def correlation(self) -> float:
        """Pearson r between predicted and actual confusion over the class pairs."""
        return pearson(off_diagonal(self.predicted), off_diagonal(self.actual))

    @property
    def spearman(self) -> float:
        ranks = [pd.Series(off_diagonal(m).numpy()).rank() for m in (self.predicted, self.actual)]
        return pearson(torch.tensor(ranks[0].values), torch.tensor(ranks[1].values))

    def most_confused(self, which: str = "actual") -> tuple[str, str]:
        return confusable_pairs(getattr(self, which), self.classes)[0][:2]

    def to_frame(self) -> pd.DataFrame:
        i, j = torch.triu_indices(len(self.classes), len(self.classes), offset=1)
        return pd.DataFrame(
            {
                "task": self.task,
                "class_a": [self.classes[a] for a in i],
                "class_b": [self.classes[b] for b in j],
                "predicted": off_diagonal(self.predicted).numpy(),
                "actual": off_diagonal(self.actual).numpy(),
            }
        )


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double().numpy(), b.double().numpy()
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 3 or a[keep].std() == 0 or b[keep].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def anchor_geometry(
    model,
    task: Task,
    demonstrations: Sequence,
    queries: Sequence,
    layers: Sequence[int] | None = None,
    *,
    anchors: Anchors = "first",
    batch_size: int = 16,
) -> tuple[dict[int, Tensor], dict[int, Tensor], Tensor, Tensor]:
    """Per layer: label-word keys per class [n_classes, head, d_head] and queries at q
    [n, head, d_head]; plus the class logits [n, n_classes] and gold classes of the queries."""
    layers = check_layers(model, layers, "anchor diagnosis")
    missing = [c for c in task.classes or () if c not in {d.y for d in demonstrations}]
    if missing or len(queries) < 2:
        raise IclMechError(
            f"anchor diagnosis needs label words of every class (missing {missing}) and at "
            f"least 2 queries (got {len(queries)})"
        )
    prompts = [ICLPrompt.build(task, list(demonstrations), q) for q in queries]
    cache, tokens, batch = encode_shared(model, prompts)
    rotary = model.cfg.positional_embedding_type == "rotary"
    names = {
        layer: f"blocks.{layer}.attn.{'hook_rot_q' if rotary else 'hook_q'}" for layer in layers
    }
    parts, logits = {layer: [] for layer in layers}, []
    with torch.no_grad():
        for index in index_batches(len(prompts), batch_size):
            at_q = Capture(list(names.values()), positions="last")
            logits.append(answer(model, cache, tokens.take(torch.tensor(index)), at_q))
            for layer, name in names.items():
                parts[layer].append(at_q.activations[name])
        keys = {layer: class_keys(model, cache, layer, anchors) for layer in layers}
    at_q = {layer: torch.cat(part) for layer, part in parts.items()}
    return keys, at_q, torch.cat(logits)[:, batch.class_token_ids], batch.gold


def class_keys(
    model, cache: ContextCache, layer: int, anchors: Anchors
) -> Float[Tensor, "n_classes head d_head"]:
    """Mean key of each class's label-word entries (row 0 of the cache) at their positions in
    the full prompt; key heads repeated for the query heads that share them."""
    columns = anchor_columns(cache, anchors)[0]
    keys = cache.keys[layer][:1]  # stored before the rotary embedding (after it: the bridge)
    if model.cfg.positional_embedding_type == "rotary" and not cache.rotated:
        keys = rotate(model.blocks[layer].attn, keys, cache.positions[:1])
    keys = torch.repeat_interleave(keys[0], model.cfg.n_heads // keys.shape[2], dim=1)
    return torch.stack([keys[columns == c].mean(0) for c in range(int(columns.max()) + 1)])


def diagnose(
    model,
    task: Task,
    demonstrations: Sequence,
    queries: Sequence,
    layers: Sequence[int] | None = None,
    *,
    n_components: int = 10,
    heads: Sequence[int] | None = None,
    anchors: Anchors = "first",
    scan: bool = False,
    batch_size: int = 16,
) -> Diagnosis:
    """Predicted (keys concatenated over ``layers``; default: the layer at 2/3 depth, as the
    reference read GPT2-XL's layer 32 of 48; ``heads``: default all) vs actual confusion.
    ``scan``: also the correlation each single layer of the model would give (``per_layer``)."""
    if task.classes is None or len(task.classes) < 3:
        raise IclMechError(f"task {task.name!r}: the diagnosis needs 3 or more classes")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    head_index = list(range(n_heads)) if heads is None else list(heads)
    if not head_index or not all(0 <= h < n_heads for h in head_index):
        raise IclMechError(f"heads {heads} outside 0..{n_heads - 1} of {model.cfg.model_name}")
    chosen = [round(2 * (n_layers - 1) / 3)] if layers is None else list(layers)
    read = sorted(set(chosen) | set(range(n_layers) if scan else ()))
    keys, at_q, class_logits, gold = anchor_geometry(
        model, task, demonstrations, queries, read, anchors=anchors, batch_size=batch_size
    )
    actual = actual_confusion(class_logits, gold)

    def predict(layers: Sequence[int]) -> Tensor:
        def joined(per_layer: dict[int, Tensor]) -> Tensor:
            return torch.cat([per_layer[layer][:, head_index].flatten(1) for layer in layers], 1)

        return predicted_confusion(joined(keys), joined(at_q), n_components)

    per_layer = {
        layer: pearson(off_diagonal(predict([layer])), off_diagonal(actual)) for layer in read
    }
    accuracy = float((class_logits.argmax(-1) == gold).float().mean())
    return Diagnosis(task.name, task.classes, chosen, predict(chosen), actual, accuracy, per_layer)
