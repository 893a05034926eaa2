"""Steered generation: TransformerLens ``generate`` (key/value cache on) inside ``attach``.

Prompts are tokenised with the model's BOS convention and left-padded, so every row's prompt
ends at the same position and new tokens follow it; ``generate`` finds the padding as leading
pad tokens and masks it. Each batch of prompts gets its own attachment, so position-aware
steering (``positions="prompt"`` / ``"new"``) counts positions from that batch's prompt.

On the hooked backend the weights are laid out for ``F.linear`` for the duration of the call
(:mod:`icl_mech.layout`): TransformerLens would otherwise copy them at every step; the same
numbers.

Greedy decoding by default; ``do_sample=True`` samples with a seeded generator state (the
global RNG is restored afterwards). Batched greedy generation equals unbatched generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import pandas as pd
import torch

from icl_mech import kv_cache, validate
from icl_mech.batching import batched, encode_text
from icl_mech.errors import IclMechError
from icl_mech.hooks import Hooked, HookSpec, attach
from icl_mech.layout import linear_layout


@dataclass
class Generations:
    """Prompts and their completions (new text only, cut at the first end-of-sequence)."""

    prompts: list[str]
    completions: list[str]
    new_tokens: list[list[int]]
    settings: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "prompt": self.prompts,
                "completion": self.completions,
                "n_new_tokens": [len(t) for t in self.new_tokens],
            }
        )

    def __len__(self) -> int:
        return len(self.prompts)


def generate(
    model,
    prompts: str | Sequence[str],
    *items: Hooked | HookSpec,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    batch_size: int = 16,
    stop_at_eos: bool = True,
    stop_at: Sequence[str] = (),
    progress: bool = False,
) -> Generations:
    """Generate from each prompt with the items (e.g. an ``ICVSteering``) attached.

    ``stop_at``: extra one-token strings (e.g. ``"\\n"``) that end a completion like the
    end-of-sequence token does (only with ``stop_at_eos``).

    Items with per-row settings (``ICVSteering`` with a ``[batch, n_icvs]`` strength tensor)
    are sliced to each batch of prompts through their ``select_rows(start, stop)``.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    _check_arguments(model, prompts, max_new_tokens, batch_size, temperature, top_k, top_p)
    stop_ids = [model.tokenizer.eos_token_id] + [_single_token(model, s) for s in stop_at]
    completions, new_tokens = [], []
    # weights laid out for F.linear once, instead of copied at every forward (icl_mech.layout)
    with linear_layout(model) if max_new_tokens > 1 else nullcontext():
        for index, (rows_of, batch) in enumerate(
            batched(model, prompts, batch_size, progress=progress and "generate")
        ):
            rows = [_rows(item, rows_of[0], rows_of[-1] + 1) for item in items]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + index)
                with attach(model, *rows):  # TransformerLens's generate, or the bridge's loop
                    out = kv_cache.generate(
                        model,
                        batch.tokens,
                        batch.attention_mask,
                        max_new_tokens=max_new_tokens,
                        stop_at_eos=stop_at_eos,
                        eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
                        do_sample=do_sample,
                        temperature=temperature,
                        top_k=top_k,
                        top_p=top_p,
                        use_cache=use_cache,
                    )
            for row in out[:, batch.tokens.shape[1] :].tolist():
                kept = _cut(row, stop_ids) if stop_at_eos else row
                new_tokens.append(kept)
                completions.append(model.tokenizer.decode(kept, skip_special_tokens=True))
    settings = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        use_cache=use_cache,
        stop_at=list(stop_at),
        items=[repr(item) for item in items],
    )
    return Generations(prompts, completions, new_tokens, settings)


def _check_arguments(model, prompts, max_new_tokens, batch_size, temperature, top_k, top_p):
    """Everything generation needs, before the first forward pass."""
    if not prompts:
        raise IclMechError("generate: no prompts given")
    validate.count(max_new_tokens, "generate max_new_tokens")
    validate.count(batch_size, "generate batch_size")
    validate.real(temperature, "generate temperature", positive=True)
    if top_k is not None:
        validate.count(top_k, "generate top_k")
    if top_p is not None and not 0 < validate.real(top_p, "generate top_p") <= 1:
        raise IclMechError(f"generate: top_p={top_p} must be in (0, 1]")
    longest = max(len(encode_text(model, text)) for text in prompts)
    n_ctx = model.cfg.n_ctx
    if longest + max_new_tokens > n_ctx:
        raise IclMechError(
            f"generate: the longest prompt has {longest} tokens and max_new_tokens="
            f"{max_new_tokens}, {longest + max_new_tokens} positions in all, beyond the context "
            f"of {model.cfg.model_name} ({n_ctx} tokens); use max_new_tokens <= "
            f"{max(n_ctx - longest, 0)} or a shorter prompt"
        )


def _rows(item, start: int, stop: int):
    select = getattr(item, "select_rows", None)
    return select(start, stop) if callable(select) else item


def _single_token(model, text: str) -> int:
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise IclMechError(
            f"generate: stop string {text!r} is {len(ids)} tokens for "
            f"{model.cfg.model_name}; stop strings must be single tokens"
        )
    return ids[0]


def _cut(row: list[int], stop_ids: list[int]) -> list[int]:
    for position, token in enumerate(row):
        if token in stop_ids:
            return row[:position]
    return row
