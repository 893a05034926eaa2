"""Saliency of every attention edge: ``I_l = | Σ_h A_{h,l} ⊙ ∂L/∂A_{h,l} |`` (Wang et al. 2023).

L is the cross-entropy of the label-word logits at the target q against the gold label (or the
model's own prediction), summed over rows so that each row's scores do not depend on the batch.
One forward keeps every layer's ``blocks.{l}.attn.hook_pattern`` in the autograd graph, then one
``torch.autograd.grad`` returns ∂L/∂A for all layers at once. No parameter gets a gradient: the
probe detaches the stream entering block 0 and makes it require grad, so the graph exists even
under ``torch.no_grad()`` callers (``saliency`` enables grad locally) or frozen parameters.
``saliency`` also switches ``requires_grad`` off on the parameters for the pass (restored on
exit), so autograd saves no tensor that only a weight gradient would need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Probe, points, register
from icl_mech.prompts import PromptBatch

from .readout import check_layers, require_label_words, target_logits

HeadReduction = Literal["abs-of-sum", "sum-of-abs"]
Target = Literal["gold", "prediction"]


def _track_gradients(stream: Tensor, hook) -> Tensor | None:
    if not torch.is_grad_enabled():
        return None
    return stream.detach().requires_grad_(True)


@contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """Parameters do not require grad inside the block; their flags are restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@register("saliency")
@dataclass(repr=False)
class SaliencyProbe(Probe):
    """Keep attention patterns in the autograd graph; ``scores(loss)`` gives I_l per layer.

    ``heads="abs-of-sum"`` is the paper's |Σ_h A ⊙ ∂L/∂A|; ``"sum-of-abs"`` is Σ_h |A ⊙ ∂L/∂A|.
    """

    layers: Sequence[int] | None = None
    heads: HeadReduction = "abs-of-sum"
    patterns: dict[int, Tensor] = field(default_factory=dict, init=False)
    _order: list[int] = field(default_factory=list, init=False, repr=False)

    def specs(self, model, batch):
        if self.heads not in ("abs-of-sum", "sum-of-abs"):
            raise IclMechError(f"heads must be 'abs-of-sum' or 'sum-of-abs', got {self.heads!r}")
        layers = self._order = self.order(model)
        self.patterns = {}
        specs = [HookSpec(points(model, "hook_resid_pre", [0])[0], _track_gradients)]
        for layer, name in zip(layers, points(model, "attn.hook_pattern", layers)):
            specs.append(HookSpec(name, partial(self._keep, layer)))
        return specs

    def order(self, model) -> list[int]:
        """The layers as given (default: all), each once: the order of ``scores``' layer axis."""
        return list(dict.fromkeys(check_layers(model, self.layers, "saliency")))

    def _keep(self, layer: int, pattern: Tensor, hook) -> None:
        self.patterns[layer] = pattern

    def scores(self, loss: Tensor) -> Float[Tensor, "batch layer query key"]:
        """One backward pass from ``loss`` to every kept pattern; frees the patterns. The layer
        axis follows the probe's ``layers`` as given (``order``), not the model's order."""
        if not self.patterns:
            raise IclMechError("SaliencyProbe.scores: no pattern was captured; run a forward first")
        layers = [layer for layer in self._order if layer in self.patterns]
        patterns = [self.patterns[layer] for layer in layers]
        if not loss.requires_grad or not all(p.requires_grad for p in patterns):
            raise IclMechError(
                "SaliencyProbe.scores: the patterns are not in the autograd graph; run the "
                "forward under torch.enable_grad() (icl_mech.anchors.saliency does this)"
            )
        grads = torch.autograd.grad(loss, patterns)
        self.patterns = {}
        return torch.stack([self._reduce(a, g) for a, g in zip(patterns, grads)], dim=1)

    def _reduce(self, pattern: Tensor, grad: Tensor) -> Float[Tensor, "batch query key"]:
        edge = pattern.detach() * grad
        if self.heads == "sum-of-abs":
            return einops.reduce(edge.abs(), "batch head q k -> batch q k", "sum")
        return einops.reduce(edge, "batch head q k -> batch q k", "sum").abs()


@dataclass
class SaliencyResult:
    """I_l for one batch; row order is the batch's, ``scores[:, i]`` is layer ``layers[i]``."""

    scores: Float[Tensor, "batch layer query key"]
    layers: list[int]
    logits: Float[Tensor, "batch vocab"]  # at q, unmodified by the probe
    class_logits: Float[Tensor, "batch n_classes"]
    labels: Int[Tensor, " batch"]  # the class L was computed against
    loss: Float[Tensor, " batch"]

    @property
    def predicted(self) -> Int[Tensor, " batch"]:
        return self.class_logits.argmax(-1)


def saliency(
    model,
    batch: PromptBatch,
    *items,
    layers: Sequence[int] | None = None,
    target: Target = "gold",
    heads: HeadReduction = "abs-of-sum",
) -> SaliencyResult:
    """All-layer saliency of a batch: one forward, one backward, no parameter gradients.

    ``items`` (interventions or probes) are attached in the same forward, before the probe, so
    the probe sees the patterns they leave.
    """
    layers = validate.layers(model, layers, "saliency layers")
    require_label_words(batch, "saliency")
    if target not in ("gold", "prediction"):
        raise IclMechError(f"saliency target must be 'gold' or 'prediction', got {target!r}")
    if torch.is_inference_mode_enabled():
        raise IclMechError("saliency cannot run inside torch.inference_mode(); use no_grad instead")
    gold = batch.gold if target == "gold" else None
    probe = SaliencyProbe(layers, heads)
    with torch.enable_grad(), frozen_parameters(model):
        logits = target_logits(model, batch, *items, probe)
        class_logits = logits[:, batch.class_token_ids.to(logits.device)]
        labels = class_logits.argmax(-1).detach() if gold is None else gold.to(logits.device)
        loss = F.cross_entropy(class_logits, labels, reduction="none")
        scores = probe.scores(loss.sum())
    return SaliencyResult(
        scores=scores,
        layers=probe.order(model),
        logits=logits.detach(),
        class_logits=class_logits.detach(),
        labels=labels,
        loss=loss.detach(),
    )
