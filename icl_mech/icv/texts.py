"""Plain texts → left-padded token batches, following the model's BOS convention.

In-context vectors work on free text (sentence pairs, generation prompts), not on the typed
``ICLPrompt``s of classification tasks, so they tokenise here. A model prepends BOS iff
``model.cfg.default_prepend_bos`` (see :mod:`icl_mech.models`); the embedded SmolLM2 does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from icl_mech.errors import IclMechError


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


def pad_id(model) -> int:
    tokenizer = model.tokenizer
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def encode(model, text: str) -> list[int]:
    """Token ids of one text, with BOS iff the model's convention asks for it."""
    if not isinstance(text, str):
        raise IclMechError(f"expected a text (str), got {type(text).__name__}: {text!r}")
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise IclMechError(f"text {text!r} has no tokens for {model.cfg.model_name}")
    if ids[0] == pad_id(model):
        # generation finds padding as leading pad tokens: a text starting with one is ambiguous
        raise IclMechError(
            f"text {text!r} starts with the padding token {model.tokenizer.decode(ids[:1])!r}"
        )
    if model.cfg.default_prepend_bos:
        ids = [model.tokenizer.bos_token_id] + ids
    return ids


def left_pad(model, texts: Sequence[str]) -> TextBatch:
    """Tokenise and left-pad: every row's last real token sits at the last position."""
    if len(texts) == 0:
        raise IclMechError("no texts given")
    encoded = [encode(model, t) for t in texts]
    longest = max(len(ids) for ids in encoded)
    if longest > model.cfg.n_ctx:
        raise IclMechError(
            f"a text of {longest} tokens is longer than the context of "
            f"{model.cfg.model_name} ({model.cfg.n_ctx} tokens)"
        )
    tokens = torch.full((len(texts), longest), pad_id(model), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for row, ids in enumerate(encoded):
        tokens[row, longest - len(ids) :] = torch.tensor(ids)
        mask[row, longest - len(ids) :] = 1
    return TextBatch(list(texts), tokens, mask)


def chunks(items: Sequence, size: int) -> list[Sequence]:
    if size < 1:
        raise IclMechError(f"batch_size must be at least 1, got {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]
