"""Mean ablation of attention heads, and the heads to ablate: one kind's top heads with the
other kind's excluded (Yin & Steinhardt 2025), and random heads from the same layers.

``MeanAblateHeads`` replaces chosen heads' outputs (``hook_z``) by their mean over a set of
prompts, position by position: position i of a row (counted from its first real token, so
left padding does not shift it) gets the mean of position i over the prompts that reach it.
Positions past the longest of those prompts (teacher-forced answer tokens, a longer prompt) get
the head's mean over all positions. A mean over one prompt is that prompt's own output at every
position, so ablating a prompt with its own mean changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import validate
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.function_vectors.heads import Head, as_pairs, by_layer, check_heads, head_point
from icl_mech.hooks import HookSpec, Intervention, attach, register
from icl_mech.interventions import Capture
from icl_mech.resume import forward_from


@register("mean-ablate-heads")
@dataclass(repr=False)
class MeanAblateHeads(Intervention):
    """Overwrite chosen heads' outputs at every position with their mean over some prompts.

    ``means[i, p]`` is head ``heads[i]``'s mean output at position p (from each prompt's first
    real token), ``pooled[i]`` its mean over every position; build both with
    :func:`mean_ablation`. Left padding is read from the batch, so attach it with ``batch=``
    (``run`` and ``attach(..., batch=)`` do); without one every row counts from position 0."""

    heads: Sequence[Head]
    means: Float[Tensor, "n_chosen pos d_head"]
    pooled: Float[Tensor, "n_chosen d_head"]

    def __post_init__(self):
        self.heads = as_pairs(self.heads)
        self.means = validate.tensor(self.means, "MeanAblateHeads means", min_ndim=3)
        self.pooled = validate.tensor(self.pooled, "MeanAblateHeads pooled", min_ndim=2)

    def select(self, heads: Sequence[Head]) -> MeanAblateHeads:
        """The same means for some of the heads (each must be among ``self.heads``)."""
        heads = as_pairs(heads)
        missing = [h for h in heads if h not in self.heads]
        if missing:
            raise IclMechError(
                f"MeanAblateHeads.select: heads {missing} have no mean here; build the means "
                "with mean_ablation(model, inputs, heads) over every head you will select"
            )
        index = [self.heads.index(h) for h in heads]
        return MeanAblateHeads(list(heads), self.means[index], self.pooled[index])

    def specs(self, model, batch):
        heads = check_heads(model, self.heads, "MeanAblateHeads heads", allow_empty=True)
        shape = (len(heads), model.cfg.d_head)
        if self.means.ndim != 3 or (self.means.shape[0], self.means.shape[2]) != shape:
            raise IclMechError(
                f"MeanAblateHeads means have shape {list(self.means.shape)}; expected "
                f"[{len(heads)} heads, positions, d_head={model.cfg.d_head}] (see mean_ablation)"
            )
        if tuple(self.pooled.shape) != shape:
            raise IclMechError(
                f"MeanAblateHeads pooled has shape {list(self.pooled.shape)}; expected "
                f"{list(shape)}"
            )
        padding = None if batch is None else (batch.attention_mask == 0).sum(1)
        table = torch.cat([self.means, self.pooled[:, None]], dim=1)  # last entry: pooled

        def overwrite(indices: list[int]):
            chosen = torch.tensor([heads[i][1] for i in indices])

            def patch(z, hook):  # z: [batch, pos, head, d_head]
                start = torch.zeros(z.shape[0], dtype=torch.long) if padding is None else padding
                index = torch.arange(z.shape[1])[None] - start[:, None].cpu()
                index = index.clamp(min=0).clamp(max=self.means.shape[1])  # past the end: pooled
                values = table[indices][:, index]  # [n, batch, pos, d_head]
                new = z.clone()
                new[:, :, chosen.to(z.device)] = einops.rearrange(
                    values, "n batch pos d -> batch pos n d"
                ).to(z.device, z.dtype)
                return new

            return patch

        groups = by_layer(heads).items()
        return [HookSpec(head_point(layer), overwrite(indices)) for layer, indices in groups]


def mean_ablation(
    model, inputs: Sequence | Tensor, heads: Sequence[Head], batch_size: int = 16
) -> MeanAblateHeads:
    """``MeanAblateHeads`` for ``heads`` with their means over ``inputs`` (ICL prompts, texts,
    or a ``[n, length]`` tensor of token ids without padding), one forward per batch stopped
    after the deepest layer."""
    heads = check_heads(model, as_pairs(heads), "mean_ablation heads", allow_empty=True)
    validate.count(batch_size, "mean_ablation batch_size")
    if len(inputs) == 0:
        raise IclMechError("mean_ablation: no prompts given to average the heads over")
    d_head = model.cfg.d_head
    if not heads:
        return MeanAblateHeads([], torch.zeros(0, 1, d_head), torch.zeros(0, d_head))
    layers = sorted(by_layer(heads))
    names = [head_point(layer) for layer in layers]
    sums: Tensor | None = None
    counts: Tensor | None = None
    for tokens, mask in _token_batches(model, inputs, batch_size):
        capture = Capture(names, positions="all")
        with torch.no_grad(), attach(model, capture):
            forward_from(model, tokens, start=0, stop=layers[-1] + 1, attention_mask=mask)
        z = torch.stack(
            [capture.activations[head_point(layer)][:, :, head] for layer, head in heads], dim=1
        ).cpu()  # [batch, n, pos, d_head]
        for row in range(len(tokens)):
            real = z[row][:, mask[row].cpu().bool()]  # [n, length, d_head]
            sums, counts = _grow(sums, counts, real.shape[1], len(heads), d_head)
            sums[:, : real.shape[1]] += real.double()
            counts[: real.shape[1]] += 1
    means = (sums / counts[None, :, None]).float()
    pooled = (sums.sum(1) / counts.sum()).float()
    return MeanAblateHeads(heads, means, pooled)


def _token_batches(model, inputs, batch_size: int):
    """(tokens, attention mask) per batch of prompts, texts or token rows."""
    if isinstance(inputs, Tensor):
        rows = inputs
        if rows.ndim != 2 or rows.is_floating_point() or rows.is_complex() or not rows.numel():
            raise IclMechError(
                f"mean_ablation: a tensor of inputs must hold token ids [n, length], got "
                f"{rows.dtype} of shape {list(rows.shape)}"
            )
        for first in range(0, len(rows), batch_size):
            part = rows[first : first + batch_size]
            yield part, torch.ones_like(part)
        return
    for _, batch in batched(model, inputs, batch_size):
        yield batch.tokens, batch.attention_mask


def _grow(sums, counts, length: int, n: int, d_head: int) -> tuple[Tensor, Tensor]:
    if sums is None:
        return torch.zeros(n, length, d_head, dtype=torch.double), torch.zeros(length)
    if length > sums.shape[1]:
        extra = length - sums.shape[1]
        sums = torch.cat([sums, sums.new_zeros(n, extra, d_head)], dim=1)
        counts = torch.cat([counts, counts.new_zeros(extra)])
    return sums, counts


def exclusion_sets(
    induction: Sequence[Head], function_vector: Sequence[Head], k: int
) -> tuple[list[Head], list[Head]]:
    """(induction heads not among the top-``k`` FV heads, FV heads not among the top-``k``
    induction heads): ``k`` each, disjoint. Both rankings are best first and hold the same
    heads; the two sets are filled in turn, each taking the next head of its ranking that is
    neither excluded nor already taken."""
    induction, function_vector = as_pairs(induction), as_pairs(function_vector)
    if sorted(induction) != sorted(function_vector):
        raise IclMechError(
            "exclusion_sets: the induction and function-vector rankings must rank the same "
            f"heads; got {len(induction)} and {len(function_vector)} heads"
        )
    k = validate.count(k, "exclusion_sets k")
    sets: tuple[list[Head], list[Head]] = ([], [])
    excluded = (set(function_vector[:k]), set(induction[:k]))
    candidates = tuple(
        [h for h in r if h not in e] for r, e in zip((induction, function_vector), excluded)
    )
    for side in (0, 1):
        if len(candidates[side]) < k:
            kind = ("induction", "function-vector")[side]
            raise IclMechError(
                f"exclusion_sets k={k}: only {len(candidates[side])} {kind} heads are left "
                f"after excluding the other kind's top {k} of {len(induction)} heads; choose a "
                f"smaller k"
            )
    taken: set[Head] = set()
    while any(len(s) < k for s in sets):
        for side in (0, 1):
            if len(sets[side]) == k:
                continue
            pick = next((h for h in candidates[side] if h not in taken), None)
            if pick is None:
                raise IclMechError(
                    f"exclusion_sets k={k}: the two sets cannot both reach {k} disjoint heads "
                    f"among {len(induction)}; choose a smaller k"
                )
            sets[side].append(pick)
            taken.add(pick)
    return sets


def random_heads(
    model, like: Sequence[Head], exclude: Sequence[Head] = (), seed: int = 0
) -> list[Head]:
    """One random head from the layer of each head of ``like``, none of them in ``exclude`` or
    ``like`` and none twice: the control for ablating ``like``. Where a layer has no head left,
    the head comes from the nearest layers that have one (both sides at the same distance)."""
    like = check_heads(model, as_pairs(like), "random_heads like", allow_empty=True)
    seed = validate.seed(seed, "random_heads seed")
    rng = random.Random(seed)
    blocked = set(like) | set(as_pairs(exclude))
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if len(blocked) + len(like) > n_layers * n_heads:
        raise IclMechError(
            f"random_heads: {len(like)} random heads are asked for outside {len(blocked)} heads "
            f"to avoid, but the model has {n_layers * n_heads}; ablate fewer heads"
        )
    drawn: list[Head] = []
    for layer, _ in like:
        for distance in range(n_layers):
            near = [layer - distance, layer + distance] if distance else [layer]
            free = [(other, h) for other in near if 0 <= other < n_layers
                    for h in range(n_heads) if (other, h) not in blocked]  # fmt: skip
            if free:
                break
        pick = rng.choice(free)
        drawn.append(pick)
        blocked.add(pick)
    return drawn
