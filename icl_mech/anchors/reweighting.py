"""Anchor re-weighting (Wang et al. 2023, section 3.1).

At the target row q of every attention pattern, after the softmax and without renormalising:
``A(q, p_i) <- exp(beta[l, h, i]) * A(q, p_i)`` for the label words p_i of class i. beta starts
at 0 and is trained with Adam on a few auxiliary examples per class; only beta gets gradients
(``torch.autograd.grad``; parameters never get a ``.grad``). beta touches the row q alone, so the
shared demonstrations run once (``compression.encode_shared``) and each step runs the queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from icl_mech import validate
from icl_mech.anchors.compression import ContextCache, answer, encode_shared
from icl_mech.anchors.readout import ANCHORS, Anchors, anchor_mask, check_anchors
from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Intervention, points, register
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Task
from icl_mech.vectors import Vector, package_version


def anchor_columns(cache: ContextCache, anchors: Anchors = "all") -> Int[Tensor, "batch entry"]:
    """Class index of each cached label-word entry (-1 elsewhere); ``"first"``: first tokens."""
    check_anchors(anchors)
    classes = cache.classes.clone()
    if anchors == "first":
        is_label = classes >= 0
        follows_label = torch.cat([torch.zeros_like(is_label[:, :1]), is_label[:, :-1]], 1)
        classes[follows_label] = -1
    return classes


def batch_columns(batch: PromptBatch, anchors: Anchors = "all") -> Int[Tensor, "batch seq"]:
    """Class index of each label-word position of a PromptBatch (-1 elsewhere)."""
    mask = anchor_mask(batch, anchors)
    classes = torch.full_like(batch.tokens, -1)
    for b, row in enumerate(batch.rows):
        for d, tokens in enumerate(row.labels):
            classes[b, tokens] = batch.demo_labels[b][d]
    return torch.where(mask, classes, -1)


@register("anchor-reweight")
@dataclass(repr=False)
class AnchorReweighting(Intervention):
    """Scale the target row's attention to each class's label words by exp(beta[l, h, class]).

    Positions: from the PromptBatch, or ``columns`` (class per key column, e.g.
    ``anchor_columns(cache)`` when queries run against a ContextCache: later columns, the
    query's own tokens, are never label words). The target q is the last row.
    """

    beta: Float[Tensor, "layer head n_classes"]
    anchors: Anchors = "all"
    columns: Int[Tensor, "batch key"] | None = None

    def specs(self, model, batch):
        expected = (model.cfg.n_layers, model.cfg.n_heads)
        if self.beta.ndim != 3 or tuple(self.beta.shape[:2]) != expected:
            raise IclMechError(
                f"beta has shape {tuple(self.beta.shape)}; {model.cfg.model_name} needs "
                f"[n_layers, n_heads, n_classes] = [{expected[0]}, {expected[1]}, n_classes]"
            )
        columns = self._columns(batch)
        if int(columns.max()) >= self.beta.shape[2]:
            raise IclMechError(
                f"the prompts hold class {int(columns.max())} but beta covers "
                f"{self.beta.shape[2]} classes"
            )

        def reweight(pattern: Float[Tensor, "batch head q key"], hook) -> Tensor:
            cols = self._fit(columns, pattern, hook.name)
            factor = self.beta[int(hook.name.split(".")[1])].exp()
            factor = factor.to(pattern.device, pattern.dtype)
            per_key = factor[:, cols.clamp(min=0)].permute(1, 0, 2)  # [batch, head, key]
            per_key = torch.where(cols[:, None, :] >= 0, per_key, torch.ones_like(per_key))
            last = pattern[:, :, -1:, :] * per_key[:, :, None, :]
            return torch.cat([pattern[:, :, :-1], last], dim=2)

        return [HookSpec(name, reweight) for name in points(model, "attn.hook_pattern")]

    def _columns(self, batch) -> Tensor:
        if self.columns is not None:
            if not bool((self.columns >= 0).any(1).all()):
                raise IclMechError("anchor re-weighting: some rows have no label positions")
            return self.columns
        if batch is None:
            raise IclMechError(
                "anchor re-weighting needs label positions: attach(..., batch=batch) or "
                "columns=anchor_columns(cache)"
            )
        if not bool((batch.targets == batch.seq_len - 1).all()):
            raise IclMechError("anchor re-weighting expects the target q to be the last token")
        return batch_columns(batch, self.anchors)

    @staticmethod
    def _fit(columns: Tensor, pattern: Tensor, point: str) -> Tensor:
        n_batch, n_key = pattern.shape[0], pattern.shape[-1]
        if columns.shape[1] > n_key or columns.shape[0] not in (1, n_batch):
            raise IclMechError(
                f"anchor columns of shape {tuple(columns.shape)} do not fit the pattern at "
                f"{point!r} with [batch, key] = [{n_batch}, {n_key}]"
            )
        columns = columns.to(pattern.device)
        pad = columns.new_full((columns.shape[0], n_key - columns.shape[1]), -1)
        return torch.cat([columns, pad], 1).expand(n_batch, -1)


_SAVED_AS = {"model_name": "model", "version": "icl_mech_version"}
_POSITIONS = "row q, label words"


@dataclass
class TrainedBeta(Vector):
    """beta with its provenance; ``intervention()``/``apply()`` re-weight, ``save``/``load``
    persist it (``icl_mech.vectors``). ``d_model`` is recorded when known."""

    KINDS = ("trained-beta",)
    TENSORS = ("beta",)

    beta: Float[Tensor, "layer head n_classes"]
    model_name: str
    task: str
    classes: tuple[str, ...]
    template: str = ""
    anchors: Anchors = "all"
    seed: int = 0
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    aux_loss: tuple[float, float] = (float("nan"), float("nan"))  # whole aux set: before, after
    d_model: int | None = None
    version: str = field(default_factory=package_version)

    def __post_init__(self):
        self.classes = tuple(self.classes)
        if self.beta.ndim != 3 or self.beta.shape[2] != len(self.classes):
            raise IclMechError(
                f"beta has shape {tuple(self.beta.shape)}; expected [n_layers, n_heads, "
                f"n_classes] with n_classes = {len(self.classes)} ({list(self.classes)})"
            )
        super().__post_init__()

    OWN_KEYWORDS = ("cache",)

    def build(
        self,
        *,
        layers: tuple[int, ...] | None,
        strength: float = 1.0,
        positions: str = _POSITIONS,
        cache: ContextCache | None = None,
    ) -> AnchorReweighting:
        """Re-weight the query's attention to the label words by ``exp(strength · β)`` in every
        (or the given) layer; ``positions`` are fixed by the method (the query row, the label
        words); ``cache``: queries run against a ContextCache."""
        if positions != _POSITIONS:
            raise IclMechError(
                f"TrainedBeta re-weights the attention from the query to the label words; its "
                f"positions are fixed ({_POSITIONS!r}), got positions={positions!r}"
            )
        strength = validate.real(strength, "TrainedBeta strength")
        beta = self.beta.detach()
        if layers is not None:
            outside = [layer for layer in layers if not 0 <= layer < beta.shape[0]]
            if outside:
                raise IclMechError(
                    f"TrainedBeta holds layers 0..{beta.shape[0] - 1}, got layers {outside}"
                )
            keep = torch.zeros(beta.shape[0], 1, 1, dtype=beta.dtype)
            keep[list(layers)] = 1.0
            beta = beta * keep
        beta = beta if strength == 1.0 else beta * strength
        columns = None if cache is None else anchor_columns(cache, self.anchors)
        return AnchorReweighting(beta, self.anchors, columns)

    def tensors(self) -> dict[str, Tensor]:
        return {"beta": self.beta.detach()}

    def metadata(self) -> dict:
        n_layers, n_heads, n_classes = self.beta.shape
        own = {_SAVED_AS.get(f.name, f.name): getattr(self, f.name) for f in fields(self)[1:]}
        layers = list(range(n_layers))
        hook_points = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
        shape = {"n_layers": n_layers, "n_heads": n_heads, "n_classes": n_classes}
        where = {"hook_points": hook_points, "layers": layers, "positions": _POSITIONS}
        return {**own, **shape, **where}

    @classmethod
    def from_data(cls, tensors: dict[str, Tensor], provenance: dict) -> TrainedBeta:
        saved = {f.name: provenance[_SAVED_AS.get(f.name, f.name)] for f in fields(cls)[1:-2]}
        for name in ("losses", "aux_loss"):  # NaN is saved as null
            saved[name] = [float("nan") if v is None else v for v in saved[name]]
        saved["aux_loss"] = tuple(saved["aux_loss"])
        version = provenance["icl_mech_version"]
        return cls(tensors["beta"], **saved, d_model=provenance.get("d_model"), version=version)


def train_beta(
    model,
    task: Task,
    demonstrations: Sequence,
    auxiliary: Sequence,
    *,
    lr: float = 0.01,
    epochs: int = 10,
    batch_size: int = 4,
    anchors: Anchors = "all",
    seed: int = 0,
    progress: bool = True,
) -> TrainedBeta:
    """Adam on beta (one per layer, head and class; start 0) over the auxiliary examples,
    each asked after the same demonstrations; cross-entropy over the label words at q."""
    if anchors not in ANCHORS or lr <= 0 or epochs < 0 or batch_size < 1:
        raise IclMechError(
            f"train_beta: anchors in {ANCHORS}, lr > 0, epochs >= 0, batch_size >= 1; "
            f"got {anchors!r}, {lr}, {epochs}, {batch_size}"
        )
    prompts = [ICLPrompt.build(task, list(demonstrations), a) for a in auxiliary]
    cache, queries, batch = encode_shared(model, prompts)
    ids, gold = batch.class_token_ids, batch.gold
    shape = (model.cfg.n_layers, model.cfg.n_heads, len(ids))
    beta = torch.zeros(shape, device=model.cfg.device, requires_grad=True)
    optimizer = torch.optim.Adam([beta], lr=lr)
    reweight = AnchorReweighting(beta, anchors, anchor_columns(cache, anchors))  # sees Adam's steps

    def loss_of(index: Tensor) -> Tensor:
        logits = answer(model, cache, queries.take(index), reweight)
        return label_word_loss(logits, ids, gold[index])

    everything = torch.arange(len(gold))
    with torch.no_grad():
        before = float(loss_of(everything))
    generator, losses = torch.Generator().manual_seed(seed), []
    for _ in tqdm(range(epochs), desc=f"beta {task.name}", disable=not progress, leave=False):
        total = 0.0
        for index in torch.randperm(len(gold), generator=generator).split(batch_size):
            with torch.enable_grad():
                loss = loss_of(index)
                (beta.grad,) = torch.autograd.grad(loss, [beta])
            optimizer.step()
            total += float(loss.detach()) * len(index)
        losses.append(total / len(gold))
    with torch.no_grad():
        after = float(loss_of(everything))
    provenance = (model.cfg.model_name, task.name, task.classes, task.template, anchors, seed)
    fitted = (losses, (before, after), model.cfg.d_model)
    return TrainedBeta(beta.detach().clone(), *provenance, *fitted)


def auxiliary_loss(model, trained: TrainedBeta | None, task: Task, demonstrations, aux) -> float:
    """Cross-entropy on the auxiliary set with beta (or without, ``trained=None``)."""
    prompts = [ICLPrompt.build(task, list(demonstrations), a) for a in aux]
    cache, queries, batch = encode_shared(model, prompts)
    items = [] if trained is None else [trained.intervention(cache=cache)]
    with torch.no_grad():
        logits = answer(model, cache, queries, *items)
    return float(label_word_loss(logits, batch.class_token_ids, batch.gold))


def label_word_loss(
    logits: Float[Tensor, "batch vocab"], class_token_ids: Tensor, gold: Int[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy over the label words' logits against the gold classes, on the logits'
    device (the batch's tensors stay on the CPU)."""
    ids, gold = class_token_ids.to(logits.device), gold.to(logits.device)
    return F.cross_entropy(logits[:, ids], gold)
