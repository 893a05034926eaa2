"""Isolating label words (Wang et al. 2023, section 2.2).

In the chosen layers an isolated position may not attend to any earlier token: its scores
``blocks.{l}.attn.hook_attn_scores[b, :, p, j]`` for ``j < p`` are set to -inf before the softmax,
the value TransformerLens itself uses for its causal and padding mask. The diagonal stays, so the
isolated row's pattern is one-hot on itself and every row still sums to 1.

Control: isolate the same number of random non-label words (real tokens that are neither a label
word's token, the target q, nor the first token, whose isolation would change nothing). The
draw depends only on ``seed`` and the prompt's text, so it is the same in any batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Intervention, points, register
from icl_mech.positions import Positions, resolve
from icl_mech.prompt_batch import PromptBatch

from .readout import Anchors, anchor_mask


def shallow_layers(model, k: int) -> list[int]:
    """The first k layers."""
    return list(range(_check_k(model, k)))


def deep_layers(model, k: int) -> list[int]:
    """The last k layers."""
    n_layers = model.cfg.n_layers
    return list(range(n_layers - _check_k(model, k), n_layers))


def _check_k(model, k: int) -> int:
    n_layers = model.cfg.n_layers
    if not 0 <= k <= n_layers:
        raise IclMechError(
            f"cannot isolate in k={k} layers: {model.cfg.model_name} has {n_layers} layers"
        )
    return k


def isolation_mask(rows: Bool[Tensor, "batch seq"]) -> Bool[Tensor, "batch 1 seq seq"]:
    """(query, key) pairs to forbid: an isolated query row and any strictly earlier key."""
    seq = rows.shape[1]
    earlier = torch.ones(seq, seq, dtype=torch.bool, device=rows.device).tril(-1)
    return (rows[:, :, None] & earlier)[:, None]


@register("isolate")
@dataclass(repr=False)
class Isolate(Intervention):
    """Forbid the selected positions to attend to earlier tokens in ``layers``."""

    layers: Sequence[int]
    positions: Positions = "labels"

    def specs(self, model, batch):
        names = points(model, "attn.hook_attn_scores", self.layers)

        def forbid(scores: Float[Tensor, "batch head q k"], hook) -> Tensor:
            n_query, n_key = scores.shape[-2:]
            if n_query != n_key:
                raise IclMechError(
                    f"isolation at {hook.name!r} needs a full forward (query and key lengths "
                    f"{n_query} != {n_key}: generation with a KV cache is not supported)"
                )
            rows = resolve(self.positions, scores.shape[0], n_query, batch)
            mask = isolation_mask(rows).to(scores.device)
            return scores.masked_fill(mask, float("-inf"))

        return [HookSpec(name, forbid) for name in names]


@register("isolate-label-words")
@dataclass(repr=False)
class IsolateLabelWords(Intervention):
    """Isolate the demonstrations' label words (all tokens, or first tokens) in ``layers``."""

    layers: Sequence[int]
    anchors: Anchors = "all"

    def specs(self, model, batch):
        if batch is None:
            raise IclMechError("isolate-label-words needs the PromptBatch: attach(..., batch=)")
        return Isolate(self.layers, anchor_mask(batch, self.anchors)).specs(model, batch)


@register("isolate-random-words")
@dataclass(repr=False)
class IsolateRandomWords(Intervention):
    """Control: isolate ``n`` random non-label words per row (default: as many as anchors)."""

    layers: Sequence[int]
    n: int | None = None
    anchors: Anchors = "all"
    seed: int = 0

    def specs(self, model, batch):
        if batch is None:
            raise IclMechError("isolate-random-words needs the PromptBatch: attach(..., batch=)")
        rows = random_word_mask(batch, self.n, self.anchors, self.seed)
        return Isolate(self.layers, rows).specs(model, batch)


def random_word_mask(
    batch: PromptBatch, n: int | None = None, anchors: Anchors = "all", seed: int = 0
) -> Bool[Tensor, "batch seq"]:
    """``n`` random non-label positions per row (default: the row's number of anchors)."""
    counts = anchor_mask(batch, anchors).sum(1).tolist() if n is None else [n] * len(batch)
    if any(c < 0 for c in counts):
        raise IclMechError(f"number of random words must be >= 0, got {n}")
    candidates = _non_label_words(batch)
    out = torch.zeros_like(candidates)
    for b, count in enumerate(counts):
        where = torch.nonzero(candidates[b]).flatten()
        if count > len(where):
            raise IclMechError(
                f"row {b} has {len(where)} non-label words, fewer than the {count} to isolate"
            )
        seed_b = zlib.crc32(f"{seed}\x00{batch.prompts[b].text}".encode())
        order = torch.randperm(len(where), generator=torch.Generator().manual_seed(seed_b))
        out[b, where[order[:count]]] = True
    return out


def _non_label_words(batch: PromptBatch) -> Bool[Tensor, "batch seq"]:
    real = batch.attention_mask.bool()
    first_real = real.int().argmax(1)
    out = real & ~batch.label_mask()
    rows = torch.arange(len(batch))
    out[rows, batch.targets] = False
    out[rows, first_real] = False
    return out
