"""Saliency of every attention edge: ``I_l = | Σ_h A_{h,l} ⊙ ∂L/∂A_{h,l} |`` (Wang et al. 2023).

L is the cross-entropy of the label-word logits at the target q against the gold label (or the
model's own prediction), summed over rows so that each row's scores do not depend on the batch.
One forward keeps every layer's ``blocks.{l}.attn.hook_pattern`` in the autograd graph, then one
``torch.autograd.grad`` returns ∂L/∂A for all layers at once. No parameter gets a gradient: the
probe detaches the stream entering block 0 and makes it require grad, so the graph exists even
under ``torch.no_grad()`` callers (``saliency`` enables grad locally) or frozen parameters.
``saliency`` also switches ``requires_grad`` off on the parameters for the pass (restored on
exit), so autograd saves no tensor that only a weight gradient would need.

Memory (``memory=``): ``"full"`` keeps every layer's activations in the graph for one backward
(fastest; peak memory several times a forward). ``"lean"`` runs the forward without a graph,
keeping only the stream entering each block, except for the top sixth of the blocks, which run
with their graph to the loss; then it goes down the other blocks one at a time: each is
recomputed from its input with gradients and back-propagated with the gradient arriving from the
block above (gradient checkpointing per block). The same numbers (to float rounding), most of
one extra forward of time, and the peak memory of a few blocks' graph. Hooks of ``items`` on a
recomputed block's points run twice (once without, once with gradients): give items that are
functions of their input (as the built-in kinds are).

Padding: without ``items``, rows of similar length run together (on the CPU, a pass per group
of rows whose padding would cost more than the pass), so little work goes into padding; scores
come back in the batch's padded layout, zero at padding, as from one pass. For the call the
weights are laid out for ``F.linear`` (:mod:`icl_mech.layout`, in place): TransformerLens's
per-forward copies of them are neither made nor kept in the graph; the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from icl_mech.gradients import frozen_parameters, track_gradients
from icl_mech.hooks import HookSpec, Probe, attach, points, register
from icl_mech.layout import linear_layout
from icl_mech.prompt_batch import PromptBatch
from icl_mech.resume import forward_from, unembed

from .readout import check_layers, require_label_words, target_logits
from .row_groups import crop_rows, length_groups

HeadReduction = Literal["abs-of-sum", "sum-of-abs"]
Target = Literal["gold", "prediction"]
Memory = Literal["full", "lean"]
MEMORY = ("full", "lean")
# memory="lean" keeps the graph of the top 1/LEAN_TOP_FRACTION of the blocks from its first pass
# (they are not recomputed); the others are recomputed one at a time
LEAN_TOP_FRACTION = 6


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
        specs = [HookSpec(points(model, "hook_resid_pre", [0])[0], track_gradients)]
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
    memory: Memory = "full",
) -> SaliencyResult:
    """All-layer saliency of a batch: one forward, one backward, no parameter gradients.

    ``items`` (interventions or probes) are attached in the same forward, before the probe, so
    the probe sees the patterns they leave. ``memory="lean"`` recomputes one block at a time in
    the backward pass (same numbers, less memory, about one forward more; see the module doc).
    """
    layers = validate.layers(model, layers, "saliency layers")
    require_label_words(batch, "saliency")
    if target not in ("gold", "prediction"):
        raise IclMechError(f"saliency target must be 'gold' or 'prediction', got {target!r}")
    validate.choice(heads, "saliency heads", ("abs-of-sum", "sum-of-abs"))
    validate.choice(memory, "saliency memory", MEMORY)
    if torch.is_inference_mode_enabled():
        raise IclMechError("saliency cannot run inside torch.inference_mode(); use no_grad instead")
    validate.batch(model, batch)
    order = SaliencyProbe(layers, heads).order(model)
    groups = [list(range(len(batch)))] if items else length_groups(model, batch)
    run = _lean if memory == "lean" else _full
    parts = []
    with frozen_parameters(model), linear_layout(model, in_place=True):
        for rows in groups:
            part = batch if len(groups) == 1 else crop_rows(batch, rows)
            gold = part.gold if target == "gold" else None
            parts.append(run(model, part, items, SaliencyProbe(layers, heads), gold))
    return _assemble(batch, groups, parts, order)


# a group's result: scores, logits at q, class logits, labels, per-row loss
_Part = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _full(model, batch: PromptBatch, items, probe: SaliencyProbe, gold) -> _Part:
    """One forward keeping every probed pattern in the graph, one backward."""
    with torch.enable_grad():
        logits = target_logits(model, batch, *items, probe)
        class_logits, labels, loss = _loss(batch, logits, gold)
        scores = probe.scores(loss.sum())
    return scores, logits.detach(), class_logits.detach(), labels, loss.detach()


def _lean(model, batch: PromptBatch, items, probe: SaliencyProbe, gold) -> _Part:
    """The forward without a graph up to the top blocks, keeping the stream entering each block;
    the top blocks (a sixth of the model) with their graph, to the loss; then block by block
    down: recompute it with gradients from its input, back-propagate the gradient that arrived
    from above, keep ∂L/∂A of its pattern and pass ∂L/∂input down."""
    n_layers, order = model.cfg.n_layers, probe.order(model)
    lowest, mask = min(order), batch.attention_mask
    top = max(lowest, n_layers - max(1, n_layers // LEAN_TOP_FRACTION))
    inputs: dict[int, Tensor] = {}

    def keep_input(layer: int, stream: Tensor, hook) -> None:
        # a copy when items follow: one of them may change the stream in place
        inputs[layer] = stream.detach().clone() if items else stream.detach()

    # attached before the items: the kept stream is the one their hooks on the block's
    # hook_resid_pre receive, so they act once when the block is recomputed
    below = range(lowest, top)
    keep = [
        HookSpec(name, partial(keep_input, layer))
        for layer, name in zip(below, points(model, "hook_resid_pre", below))
    ]
    with torch.no_grad(), attach(model, *keep, *items, batch=batch):
        inputs[top] = forward_from(model, batch.tokens, start=0, stop=top, attention_mask=mask)
    found: dict[int, Tensor] = {}
    grad = None
    with torch.enable_grad():
        for start in [top, *reversed(below)]:
            stop = n_layers if start == top else start + 1
            stream = inputs.pop(start).requires_grad_(True)
            probed = [layer for layer in range(start, stop) if layer in order]
            keep_patterns = [
                HookSpec(name, partial(probe._keep, layer))
                for layer, name in zip(probed, points(model, "attn.hook_pattern", probed))
            ]
            with attach(model, *items, *keep_patterns, batch=batch):
                out = forward_from(model, stream, start=start, stop=stop, attention_mask=mask)
            if stop == n_layers:
                at_q = out[torch.arange(len(batch)), batch.targets.to(out.device)]
                logits = unembed(model, at_q)
                class_logits, labels, loss = _loss(batch, logits, gold)
                out, grad = loss.sum(), None
            patterns = [probe.patterns.pop(layer) for layer in probed]
            wanted = patterns + ([stream] if start > lowest else [])
            grads = torch.autograd.grad(out, wanted, grad_outputs=grad)
            for layer, pattern, pattern_grad in zip(probed, patterns, grads):
                found[layer] = probe._reduce(pattern, pattern_grad)
            if start > lowest:
                grad = grads[-1]
            del out, stream, patterns, grads
    scores = torch.stack([found[layer] for layer in order], dim=1)
    return scores, logits.detach(), class_logits.detach(), labels, loss.detach()


def _loss(batch: PromptBatch, logits: Tensor, gold: Tensor | None) -> tuple[Tensor, ...]:
    """(class logits, labels, per-row cross-entropy) at q; labels: gold, or the prediction."""
    class_logits = logits[:, batch.class_token_ids.to(logits.device)]
    labels = class_logits.argmax(-1).detach() if gold is None else gold.to(logits.device)
    return class_logits, labels, F.cross_entropy(class_logits, labels, reduction="none")


def _assemble(
    batch: PromptBatch, groups: list[list[int]], parts: list[_Part], layers
) -> SaliencyResult:
    """The groups' results in the batch's row order and padded layout (zero at padding)."""
    if len(parts) == 1:
        scores, logits, class_logits, labels, loss = parts[0]
    else:
        seq = batch.seq_len
        first = parts[0]
        scores = first[0].new_zeros(len(batch), first[0].shape[1], seq, seq)
        logits, class_logits, labels, loss = (
            t.new_empty(len(batch), *t.shape[1:]) for t in first[1:]
        )
        for rows, (s, lg, cl, lb, ls) in zip(groups, parts):
            index = torch.tensor(rows, device=scores.device)
            width = s.shape[-1]
            scores[index, :, seq - width :, seq - width :] = s
            logits[index], class_logits[index], labels[index], loss[index] = lg, cl, lb, ls
    return SaliencyResult(
        scores=scores,
        layers=layers,
        logits=logits,
        class_logits=class_logits,
        labels=labels,
        loss=loss,
    )
