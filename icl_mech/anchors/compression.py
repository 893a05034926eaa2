"""Anchor-only context compression (Wang et al. 2023, section 3.2), on TransformerLens's KV cache.

The demonstrations run once into a ``ContextCache``; ``select`` keeps some entries (Hidden_anchor:
the label words, and in our variant also the formatting tokens); ``answer`` runs only the query
tokens against it, at the full prompt's positions: cached entries keep theirs, the query
continues after the full context.
TransformerLens caches keys before the rotary embedding and rotates all keys at each forward at
positions counted from the attention mask (kept entries would move left), so the cache handed to
the model holds each key pre-rotated by (true - counted) positions and ``ContinuePositions``
rotates the query's queries and keys by its gap (rotations compose); with learned positions it
overwrites the query's ``hook_pos_embed``. Keeping every entry reproduces the full prompt.
On the bridge the cache is the Hugging Face model's: keys are stored after the rotary embedding,
at their full-prompt positions (``ContextCache.rotated``), and ``ContinuePositions`` hands the
query's attention the rotary tables of its true positions (see :class:`icl_mech.kv_cache.KVCache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icl_mech.anchors.positions_continued import (
    ContinuePositions,
    check_positions_supported,
    rotate,
)
from icl_mech.backends import (
    backend_of,
    sliding_window,
    unsupported,
)
from icl_mech.errors import IclMechError
from icl_mech.hooks import attach
from icl_mech.icl_prompt import ROLES
from icl_mech.kv_cache import KVCache
from icl_mech.padding import left_pad_rows
from icl_mech.prompt_batch import PromptBatch
from icl_mech.resume import forward_from, unembed

ANCHOR_ROLES = ("bos", "template", "label", "separator")  # label words + formatting tokens
LABEL_ROLES = ("label",)  # the paper's Hidden_anchor: the label words' states only


@dataclass
class Tokens:
    """Left-padded tokens of one part of the prompts (the context or the queries)."""

    tokens: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    roles: Int[Tensor, "batch seq"]  # codes into icl_prompt.ROLES
    classes: Int[Tensor, "batch seq"]  # class index of a label word's tokens, -1 elsewhere

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def shared(self) -> Tokens:
        """The one row every prompt shares (same demonstrations), or an error."""
        real = [self.tokens[b, self.attention_mask[b].bool()] for b in range(len(self))]
        differ = [b for b, row in enumerate(real) if not torch.equal(row, real[0])]
        if differ:
            message = "encode the contexts row by row instead of sharing one"
            raise IclMechError(
                f"rows {differ} have other demonstration tokens than row 0; {message}"
            )
        return self.take(torch.tensor([0]))

    def take(self, index: Int[Tensor, " rows"]) -> Tokens:
        """Some rows, without the columns that are padding in all of them."""
        rows = [t[index] for t in (self.tokens, self.attention_mask, self.roles, self.classes)]
        width = int(rows[1].sum(1).max())
        return Tokens(*(t[:, t.shape[1] - width :] for t in rows))


def split_prompts(batch: PromptBatch) -> tuple[Tokens, Tokens]:
    """(context, queries): each row cut where its query starts, each part left-padded again."""
    classes = torch.full_like(batch.tokens, -1)
    context, queries = [], []
    for b, row in enumerate(batch.rows):
        for d, label_tokens in enumerate(row.labels if batch.demo_labels else []):
            classes[b, label_tokens] = batch.demo_labels[b][d]
        if not row.demos:
            raise IclMechError(f"row {b} is a zero-shot prompt: no demonstrations to cache")
        pad, start = int((batch.attention_mask[b] == 0).sum()), row.query[0]
        fields = (batch.tokens[b], batch.attention_mask[b], batch.roles[b], classes[b])
        context.append([t[pad:start] for t in fields])
        queries.append([t[start:] for t in fields])
    return _left_pad(context), _left_pad(queries)


def _left_pad(rows: list[list[Tensor]]) -> Tokens:
    """Tokens, mask, roles and classes of each row, left-padded (masked token ids: 0)."""
    fills = (0, 0, ROLES.index("pad"), -1)
    return Tokens(*(left_pad_rows([row[i] for row in rows], f) for i, f in enumerate(fills)))


def signature(model) -> tuple:
    """Name, shape, a few embedding weights and the backend (whose caches differ: keys before or
    after the rotary embedding): tells apart models of one shape too."""
    cfg = model.cfg
    shape = (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads, cfg.d_head)
    weights = float(model.W_E[:8].detach().double().sum())
    return cfg.model_name, shape, weights, backend_of(model)


@dataclass
class ContextCache:
    """Keys (before the rotary embedding) and values per layer of context entries, computed in
    full context; ``positions`` in the full prompt; ``length``: where the query continues."""

    keys: list[Float[Tensor, "batch entry kv_head d_head"]]
    values: list[Float[Tensor, "batch entry kv_head d_head"]]
    attention_mask: Int[Tensor, "batch entry"]  # 0 = left padding
    positions: Int[Tensor, "batch entry"]
    length: Int[Tensor, " batch"]
    roles: Int[Tensor, "batch entry"]  # codes into icl_prompt.ROLES
    classes: Int[Tensor, "batch entry"]  # class of a label word's entries, -1 elsewhere
    signature: tuple  # of the model that computed it
    rotated: bool = False  # keys hold their rotary embedding (the bridge's cache)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def kept(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(1)

    def select(self, keep: Bool[Tensor, "batch entry"]) -> ContextCache:
        """Only the entries where ``keep`` is true (padding is never kept), re-padded left."""
        if tuple(keep.shape) != tuple(self.attention_mask.shape):
            raise IclMechError(
                f"keep mask has shape {tuple(keep.shape)}, the cache holds "
                f"[batch, entry] = {tuple(self.attention_mask.shape)}"
            )
        keep = keep.bool() & self.attention_mask.bool()
        counts = keep.sum(1)
        if bool((counts == 0).any()):
            raise IclMechError(f"rows {torch.nonzero(counts == 0).flatten().tolist()} keep nothing")
        # stable sort puts the kept entries last, in order: left padding again
        index = torch.sort(keep.long(), dim=1, stable=True).indices[:, -int(counts.max()) :]
        mask = keep.gather(1, index).long()

        def gather(t: Tensor) -> Tensor:
            at = index.view(*index.shape, *[1] * (t.ndim - 2)).expand(-1, -1, *t.shape[2:])
            return t.gather(1, at.to(t.device))

        return ContextCache(
            [gather(k) for k in self.keys],
            [gather(v) for v in self.values],
            mask,
            gather(self.positions) * mask,
            self.length,
            torch.where(mask.bool(), gather(self.roles), ROLES.index("pad")),
            torch.where(mask.bool(), gather(self.classes), -1),
            self.signature,
            self.rotated,
        )

    def expand(self, batch_size: int) -> ContextCache:
        """A one-row cache repeated for ``batch_size`` queries (no copy)."""
        if len(self) == batch_size:
            return self
        if len(self) != 1:
            raise IclMechError(
                f"the cache holds {len(self)} contexts but {batch_size} queries were given; "
                "use one context per query, or a single shared context"
            )
        if batch_size not in self._memo:
            grow = lambda t: t.expand(batch_size, *t.shape[1:])  # noqa: E731
            per_row = ("attention_mask", "positions", "length", "roles", "classes")
            self._memo[batch_size] = replace(
                self,
                keys=[grow(k) for k in self.keys],
                values=[grow(v) for v in self.values],
                **{name: grow(getattr(self, name)) for name in per_row},
            )
        return self._memo[batch_size]

    def check(self, model) -> None:
        mine, shape, _, kind = self.signature
        theirs, their_shape, _, their_kind = signature(model)
        if self.signature != signature(model):
            other = " (same shape, other weights)" if shape == their_shape else ""
            if kind != their_kind:
                other = f" (computed on the {kind} backend, used on the {their_kind} backend)"
            raise IclMechError(
                f"this cache was computed by {mine} {shape} and cannot be used with "
                f"{theirs} {their_shape}{other}"
            )

    def for_model(self, model) -> KVCache:
        """A frozen key/value cache whose keys land at their full-prompt positions."""
        self.check(model)
        if "prepared" not in self._memo:
            keys = self.keys
            if model.cfg.positional_embedding_type == "rotary" and not self.rotated:
                counted = (self.attention_mask.cumsum(1) - 1).clamp(min=0)
                gap = (self.positions - counted) * self.attention_mask
                keys = [rotate(model.blocks[layer].attn, k, gap) for layer, k in enumerate(keys)]
            mask = self.attention_mask.clone()
            self._memo["prepared"] = KVCache.from_tensors(model, keys, self.values, mask)
        return self._memo["prepared"]


def encode_context(model, context: Tokens, *items) -> ContextCache:
    """Run the context once (``items`` attached) and keep every entry's keys and values."""
    check_positions_supported(model)
    cache = KVCache.new(model, len(context))
    mask = context.attention_mask
    with torch.no_grad(), attach(model, *items):  # the blocks fill the cache; skip the unembed
        cache.fill(model, context.tokens, mask)
    keys, values, _ = cache.entries()
    positions = (mask.cumsum(1) - 1).clamp(min=0) * mask
    per_entry = (
        mask.clone(),
        positions,
        mask.sum(1),
        context.roles.clone(),
        context.classes.clone(),
    )
    return ContextCache(keys, values, *per_entry, signature(model), cache.rotated)


def encode_shared(model, prompts) -> tuple[ContextCache, Tokens, PromptBatch]:
    """Prompts with the same demonstrations: (one-row cache of them, query tokens, the batch)."""
    batch = PromptBatch.from_prompts(model, prompts)
    context, queries = split_prompts(batch)
    return encode_context(model, context.shared()), queries, batch


def answer(model, cache: ContextCache, queries: Tokens, *items, every_position=False) -> Tensor:
    """Logits [batch, vocab] at the last query token (``every_position``: [batch, q_len, vocab]),
    the queries attending to the cache (``items`` attached after the position hooks)."""
    cache.check(model)
    cache = cache.expand(len(queries))
    past, mask = cache.for_model(model), queries.attention_mask
    _check_window(model, cache, queries)
    end = None if every_position else model.cfg.n_layers  # else: unembed the last token only
    tokens, mask = queries.tokens.to(model.cfg.device), mask.to(model.cfg.device)
    with attach(model, ContinuePositions(cache.length, cache.length - cache.kept, mask), *items):
        out = forward_from(model, tokens, start=0, stop=end, attention_mask=mask, cache=past)
    return out if every_position else unembed(model, out[:, -1])


def _check_window(model, cache: ContextCache, queries: Tokens) -> None:
    """Local (sliding-window) layers count their window in cache entries, not true positions:
    beyond the window a compressed cache would let a query see entries it should not."""
    window = sliding_window(model)
    longest = int(cache.length.max()) + queries.tokens.shape[1]
    if window is not None and longest > window:
        raise unsupported(
            "context compression",
            model,
            f"prompts of {longest} positions exceed its sliding window of {window} tokens, "
            "where cached entries and true positions would disagree",
        )


def anchor_keep(cache: ContextCache, roles=ANCHOR_ROLES) -> Bool[Tensor, "batch entry"]:
    """Hidden_anchor: the entries of the given roles; by default label words and formatting
    tokens (``ANCHOR_ROLES``); Wang et al. keep the label words only (``LABEL_ROLES``)."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise IclMechError(f"unknown roles {unknown}; choose among {ROLES}")
    codes = torch.tensor([ROLES.index(r) for r in roles])
    keep = torch.isin(cache.roles, codes) & cache.attention_mask.bool()
    no_label = ~(keep & (cache.roles == ROLES.index("label"))).any(1)
    if bool(no_label.any()):
        raise IclMechError(
            f"rows {torch.nonzero(no_label).flatten().tolist()} have no label positions "
            f"among the kept roles {tuple(roles)}; compression keeps the label-word anchors"
        )
    return keep
