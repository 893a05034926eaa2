"""Greedy answers from a (possibly patched) prompt, continued under the key/value cache.

The interventions are attached for the prompt's pass only: they patch the query's last token
(as Hendel et al. do) and every later step reads the patched keys and values from the cache,
so the new tokens themselves are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.hooks import attach
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.kv_cache import KVCache
from icl_mech.prompt_batch import PromptBatch


@dataclass
class Generation:
    first_logits: Float[Tensor, "batch vocab"]  # at the prompt's last token
    tokens: Int[Tensor, "batch new"]  # greedy tokens, the first one included
    texts: list[str]  # decoded, cut at the task's separator

    @property
    def first_tokens(self) -> Int[Tensor, " batch"]:
        return self.tokens[:, 0]


def greedy(model, batch: PromptBatch, *items, max_new_tokens: int = 8) -> Generation:
    """Greedy decoding of ``max_new_tokens`` tokens; ``items`` act on the prompt's pass only."""
    if max_new_tokens < 1:
        raise IclMechError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    cache = KVCache.new(model, len(batch))  # TransformerLens's, or the bridge's (backends)
    with torch.no_grad():
        with attach(model, *items, batch=batch):
            logits = cache.forward(model, batch.tokens, batch.attention_mask)[:, -1]
        chosen = [logits.argmax(-1)]
        ones = torch.ones(len(batch), 1, dtype=batch.attention_mask.dtype)
        for _ in range(max_new_tokens - 1):
            step = cache.forward(model, chosen[-1][:, None], ones)
            chosen.append(step[:, -1].argmax(-1))
    tokens = torch.stack(chosen, dim=1)
    separator = batch.prompts[0].task.separator
    texts = [_cut(model.tokenizer.decode(row), separator) for row in tokens.tolist()]
    return Generation(logits, tokens, texts)


def _cut(text: str, separator: str) -> str:
    if separator:
        text = text.split(separator)[0]
    return text.split("\n")[0]


def matches(text: str, answer: str) -> bool:
    """Exact match after trimming spaces and the quotes/braces/full stop that may close it."""
    return text.strip().rstrip('"}.,').strip() == answer.strip()


def exact_match(generation: Generation, prompts: list[ICLPrompt]) -> list[bool]:
    return [matches(text, p.answer) for text, p in zip(generation.texts, prompts)]
