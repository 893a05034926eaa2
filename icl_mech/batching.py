"""One padding rule and one batcher for every batched run.

Padding rule (:mod:`icl_mech.padding`): rows are left-padded (every row's last real token sits
at the last position) with the tokenizer's pad token, else its end-of-sequence token, else 0;
the attention mask hides the padding, so padding changes no number. ``PromptBatch.from_prompts``
(typed ICL prompts) and ``TextBatch`` (plain texts) both pad through ``pad_tokens``.

Plain texts follow the model's BOS convention: a BOS is prepended iff
``model.cfg.default_prepend_bos`` (see :mod:`icl_mech.models`; the embedded SmolLM2 has none).

``batched(model, items, batch_size)`` yields ``(indices, batch)``: ``indices`` are positions in
``items``, so results can be put back in input order whatever the grouping (``sort=True``
groups inputs of similar length to keep padding short).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from jaxtyping import Int
from torch import Tensor
from tqdm import tqdm

from icl_mech.errors import IclMechError
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.padding import pad_token_id, pad_tokens
from icl_mech.prompt_batch import PromptBatch


@dataclass
class TextBatch:
    """Left-padded token ids of several texts; ``lengths[b]`` counts row b's real tokens."""

    texts: list[str]
    tokens: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(dim=1)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def from_texts(
        cls, model, texts: Sequence[str], encoded: Sequence[Sequence[int]] | None = None
    ) -> TextBatch:
        """Tokenise (unless ``encoded`` is given) and left-pad."""
        if len(texts) == 0:
            raise IclMechError("no texts given")
        encoded = [encode_text(model, t) for t in texts] if encoded is None else encoded
        tokens, mask = pad_tokens(model, encoded, "a text")
        return cls(list(texts), tokens, mask)


def encode_text(model, text: str) -> list[int]:
    """Token ids of one text, with BOS iff the model's convention asks for it."""
    if not isinstance(text, str):
        raise IclMechError(f"expected a text (str), got {type(text).__name__}: {text!r}")
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise IclMechError(f"text {text!r} has no tokens for {model.cfg.model_name}")
    if ids[0] == pad_token_id(model.tokenizer):
        # generation finds padding as leading pad tokens: a text starting with one is ambiguous
        raise IclMechError(
            f"text {text!r} starts with the padding token {model.tokenizer.decode(ids[:1])!r}"
        )
    if model.cfg.default_prepend_bos:
        ids = [model.tokenizer.bos_token_id] + ids
    return ids


def index_batches(
    n: int,
    batch_size: int,
    order: Sequence[int] | None = None,
    progress: bool | str = False,
) -> Iterator[list[int]]:
    """Consecutive groups of ``batch_size`` indices of ``order`` (default ``0..n-1``)."""
    if batch_size < 1:
        raise IclMechError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(n)) if order is None else list(order)
    groups = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    label = progress if isinstance(progress, str) else None
    yield from tqdm(groups, desc=label, disable=not progress, leave=False)


def batched(
    model,
    items: Sequence[ICLPrompt] | Sequence[str],
    batch_size: int = 16,
    *,
    sort: bool = False,
    progress: bool | str = False,
) -> Iterator[tuple[list[int], PromptBatch | TextBatch]]:
    """``(indices into items, batch)`` per batch: a ``PromptBatch`` for ICL prompts, a
    ``TextBatch`` for plain texts. ``sort``: group by token length (stable: ties keep input
    order); ``progress``: a tqdm bar (a string labels it)."""
    items = list(items)
    texts = bool(items) and isinstance(items[0], str)
    wanted = str if texts else ICLPrompt
    for i, item in enumerate(items):
        if not isinstance(item, wanted):
            raise IclMechError(
                f"batched: inputs must be all ICLPrompts or all texts (str); item {i} is a "
                f"{type(item).__name__} after a {type(items[0]).__name__}"
            )
    encoded = [encode_text(model, t) for t in items] if texts else None
    order = None
    if sort:
        lengths = [len(ids) for ids in encoded] if texts else _prompt_lengths(model, items)
        order = sorted(range(len(items)), key=lengths.__getitem__)
    for index in index_batches(len(items), batch_size, order, progress):
        if texts:
            group = [items[i] for i in index]
            yield index, TextBatch.from_texts(model, group, [encoded[i] for i in index])
        else:
            yield index, PromptBatch.from_prompts(model, [items[i] for i in index])


def _prompt_lengths(model, prompts: Sequence[ICLPrompt]) -> list[int]:
    tokenizer = model.tokenizer
    return [len(tokenizer.encode(p.text, add_special_tokens=False)) for p in prompts]
