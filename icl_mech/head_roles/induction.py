"""Induction and prefix-matching scores of every attention head (Olsson et al. 2022).

Each of ``n_sequences`` sequences is ``[BOS] s s``: ``s`` is ``n_tokens`` token ids drawn
uniformly (a ``torch.Generator`` seeded by ``seed``) from the vocabulary without its special
tokens (:func:`vocabulary`), repeated once; BOS comes first where the model prepends it by
default (``model.cfg.default_prepend_bos``, as :class:`icl_mech.prompt_batch.PromptBatch` does).
Every row has the same length, so there is no padding.

For the token at second-copy offset ``j`` (``j = 0 .. n_tokens - 2``), whose first occurrence
is at first-copy offset ``j``, head (l, h)'s pattern ``blocks.{l}.attn.hook_pattern`` gives

- the induction score: the attention to the token that followed the first occurrence
  (first-copy offset ``j + 1``);
- the prefix-matching score: the attention to the first occurrence itself (offset ``j``).

Both are averaged over ``j`` per sequence; :class:`HeadScores` keeps the per-sequence values,
so its intervals are bootstrap intervals over sequences.

Memory: one batch's patterns of every layer are held at once, ``layers x heads x batch_size x
(2 n_tokens + 1)^2`` floats (SmolLM2-135M with the defaults: about 90 MB); lower
``batch_size`` for long sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from icl_mech import stats, validate
from icl_mech.backends import is_bridge, keep_last
from icl_mech.errors import IclMechError
from icl_mech.function_vectors.heads import Head
from icl_mech.hook_points import model_name
from icl_mech.hooks import attach, points
from icl_mech.interventions import Capture

SCORES = ("induction", "prefix_matching")


@dataclass
class HeadScores:
    """``induction[s, l, h]`` and ``prefix_matching[s, l, h]``: head h of layer l on repeated
    random sequence s (see the module docstring); every layer of the model."""

    induction: Float[Tensor, "sequence layer head"] = field(repr=False)
    prefix_matching: Float[Tensor, "sequence layer head"] = field(repr=False)
    n_tokens: int  # the length of the repeated half s
    seed: int

    def __repr__(self) -> str:
        best = ", ".join(f"L{layer}H{head}" for layer, head in self.top(min(3, self.size)))
        return (
            f"HeadScores(layers={self.n_layers}, heads={self.n_heads}, "
            f"sequences={self.n_sequences}, n_tokens={self.n_tokens}, seed={self.seed}, "
            f"top induction=[{best}])"
        )

    @property
    def n_sequences(self) -> int:
        return self.induction.shape[0]

    @property
    def n_layers(self) -> int:
        return self.induction.shape[1]

    @property
    def n_heads(self) -> int:
        return self.induction.shape[2]

    @property
    def size(self) -> int:
        """How many heads there are (every layer's)."""
        return self.n_layers * self.n_heads

    @property
    def mean_induction(self) -> Float[Tensor, "layer head"]:
        """Every head's induction score: the mean over the sequences."""
        return self.induction.mean(0)

    @property
    def mean_prefix_matching(self) -> Float[Tensor, "layer head"]:
        """Every head's prefix-matching score: the mean over the sequences."""
        return self.prefix_matching.mean(0)

    def values(self, score: str = "induction") -> Float[Tensor, "sequence layer head"]:
        """The per-sequence values of one score, ``"induction"`` or ``"prefix_matching"``."""
        validate.choice(score, "HeadScores score", SCORES)
        return self.induction if score == "induction" else self.prefix_matching

    def ranking(self, score: str = "induction") -> list[Head]:
        """Every head as (layer, head), largest mean score first (ties: lower layer, then
        lower head)."""
        mean = self.values(score).mean(0).tolist()
        heads = [(layer, h) for layer in range(self.n_layers) for h in range(self.n_heads)]
        return sorted(heads, key=lambda head: (-mean[head[0]][head[1]], head))

    def top(self, k: int = 10, score: str = "induction") -> list[Head]:
        """The ``k`` heads with the largest mean score, as ``ranking`` orders them."""
        if not validate.is_integer(k) or not 0 <= k <= self.size:  # is_integer: no bool
            raise IclMechError(
                f"top k={k!r}: there are {self.size} heads ({self.n_layers} layers x "
                f"{self.n_heads} heads) in these head scores; choose k in 0..{self.size}"
            )
        return self.ranking(score)[: int(k)]

    def intervals(self, score: str = "induction", seed: int = 0) -> tuple[np.ndarray, ...]:
        """(mean, low, high), each ``[layer, head]``: 95% bootstrap intervals over the
        sequences (one set of draws for every head)."""
        values = self.values(score).double().numpy()
        point, low, high, _ = stats.bootstrap_columns(values, seed=seed)
        # a head with the same value on every sequence can get an interval one rounding error
        # away from its mean; the interval always holds the mean
        return point, np.minimum(low, point), np.maximum(high, point)

    def to_frame(self) -> pd.DataFrame:
        """One row per head: both scores with 95% intervals over sequences, the number of
        sequences ``n`` and the head's induction rank (1 = top)."""
        rank = {head: r + 1 for r, head in enumerate(self.ranking("induction"))}
        columns = {score: self.intervals(score) for score in SCORES}
        rows = []
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                row = {"layer": layer, "head": h}
                for score, (point, low, high) in columns.items():
                    row |= {
                        score: float(point[layer, h]),
                        f"{score}_low": float(low[layer, h]),
                        f"{score}_high": float(high[layer, h]),
                    }
                rows.append(row | {"n": self.n_sequences, "rank_induction": rank[(layer, h)]})
        return pd.DataFrame(rows)


def vocabulary(model) -> Int[Tensor, " token"]:
    """The token ids sequences are drawn from: ``0 .. model.cfg.d_vocab - 1`` without the
    tokenizer's special tokens (``all_special_ids``). Where the model has a tokenizer, ids at or
    past its length are left out too (embedding rows the tokenizer never produces); a model
    without a tokenizer draws from its whole ``d_vocab``."""
    size = int(model.cfg.d_vocab)
    tokenizer = getattr(model, "tokenizer", None)
    special: list[int] = []
    if tokenizer is not None:
        size = min(size, len(tokenizer))
        special = [int(i) for i in tokenizer.all_special_ids if i is not None and 0 <= i < size]
    keep = torch.ones(size, dtype=torch.bool)
    keep[special] = False
    ids = keep.nonzero().squeeze(1)
    if len(ids) < 2:
        raise IclMechError(
            f"induction scores: {model_name(model)} has {len(ids)} token id(s) besides its "
            f"special tokens {special} (d_vocab={model.cfg.d_vocab}); random sequences need at "
            "least 2 to draw from: use a model with a larger vocabulary"
        )
    return ids


def bos_token(model) -> int | None:
    """The BOS id the model's prompts start with, or None where it prepends no BOS."""
    if not getattr(model.cfg, "default_prepend_bos", True):
        return None
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if bos is None:
        raise IclMechError(
            f"induction scores: {model_name(model)} prepends BOS by default "
            "(cfg.default_prepend_bos=True) but has no tokenizer with a BOS token; attach a "
            "tokenizer (model.set_tokenizer) or set model.cfg.default_prepend_bos = False"
        )
    return int(bos)


def repeated_tokens(
    model, n_tokens: int = 50, n_sequences: int = 16, seed: int = 0
) -> Int[Tensor, "sequence position"]:
    """``n_sequences`` rows ``[BOS] s s`` (BOS where the model prepends it), ``s`` drawn
    uniformly from :func:`vocabulary` by a generator seeded with ``seed``; all rows are drawn
    at once, so they do not depend on any batch size."""
    bos = bos_token(model)
    offset = int(bos is not None)
    n_ctx = int(model.cfg.n_ctx)
    n_tokens = validate.count(
        n_tokens,
        "induction scores: n_tokens",
        minimum=2,
        maximum=max(2, (n_ctx - offset) // 2),
        hint=f" (each sequence is {'[BOS] ' if offset else ''}s s, 2 * n_tokens"
        f"{' + 1' if offset else ''} positions, within the context of {model_name(model)}, "
        f"n_ctx={n_ctx}; choose n_tokens in 2..{(n_ctx - offset) // 2})",
    )
    if 2 * n_tokens + offset > n_ctx:  # a context of 2 or 3 fits no sequence at all
        raise IclMechError(
            f"induction scores: n_tokens={n_tokens} needs {2 * n_tokens + offset} positions but "
            f"{model_name(model)} has n_ctx={n_ctx}; it is too short for repeated sequences"
        )
    n_sequences = validate.count(n_sequences, "induction scores: n_sequences")
    seed = validate.seed(seed, "induction scores: seed")
    ids = vocabulary(model)
    generator = torch.Generator().manual_seed(seed)
    half = ids[torch.randint(len(ids), (n_sequences, n_tokens), generator=generator)]
    parts = [half, half]
    if bos is not None:
        parts.insert(0, torch.full((n_sequences, 1), bos, dtype=torch.long))
    return torch.cat(parts, dim=1)


def induction_scores(
    model,
    n_tokens: int = 50,
    n_sequences: int = 16,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool | str = False,
) -> HeadScores:
    """Induction and prefix-matching scores of every head of ``model`` on ``n_sequences``
    repeated random sequences (:func:`repeated_tokens`), ``batch_size`` rows a forward pass.
    ``progress``: a tqdm bar (a string is its label)."""
    batch_size = validate.count(batch_size, "induction scores: batch_size")
    tokens = repeated_tokens(model, n_tokens, n_sequences, seed)
    offset = tokens.shape[1] - 2 * n_tokens
    names = points(model, "attn.hook_pattern")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    induction = torch.empty(len(tokens), n_layers, n_heads)
    prefix = torch.empty(len(tokens), n_layers, n_heads)
    label = progress if isinstance(progress, str) else "induction scores"
    starts = range(0, len(tokens), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=label, disable=not progress, leave=False):
            rows = slice(start, start + batch_size)
            induction[rows], prefix[rows] = _batch_scores(
                model, tokens[rows], names, offset, n_tokens
            )
    return HeadScores(induction, prefix, int(n_tokens), int(seed))


def _batch_scores(
    model, tokens: Int[Tensor, "batch position"], names: list[str], offset: int, n: int
) -> tuple[Float[Tensor, "batch layer head"], Float[Tensor, "batch layer head"]]:
    """(induction, prefix matching) of one batch of repeated sequences: one forward pass."""
    tokens = tokens.to(model.cfg.device)
    # the hooked model stops before the unembedding; the bridge unembeds the last position only
    stop = keep_last(model) if is_bridge(model) else {"stop_at_layer": model.cfg.n_layers}
    capture = Capture(names, positions="all")
    with attach(model, capture):
        model(tokens, attention_mask=torch.ones_like(tokens), **stop)
    j = torch.arange(n - 1)
    query = offset + n + j  # second-copy offset j
    follows, first = offset + j + 1, offset + j  # first-copy offsets j + 1 and j
    induction, prefix = [], []
    for name in names:
        pattern = capture.activations[name].float().cpu()  # [batch, head, query, key]
        induction.append(pattern[:, :, query, follows].mean(-1))
        prefix.append(pattern[:, :, query, first].mean(-1))
    return torch.stack(induction, dim=1), torch.stack(prefix, dim=1)
