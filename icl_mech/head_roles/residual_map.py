"""Where in the prompt the task sits: the attribution of the residual stream at every (layer,
position) of a shuffled-label prompt, towards its clean twin.

The clean prompt and its shuffled-label twin (the same demonstrations with the answers
deranged, :func:`icl_mech.function_vectors.effect_prompts`) are run once each. Patching the
stream entering block l at position p from the shuffled run to the clean one changes P(correct
answer) on the shuffled prompt by about

    (clean[l, p] − shuffled[l, p]) · ∂P(correct)/∂shuffled[l, p]

for every (l, p) from one forward and one backward. ``exact=True`` also patches every (l, p)
for real: per layer, one batched run from that block (``forward_from``), a row per position.

The twins must have the same token count (the positions pair up): answers that tokenise to
different lengths cannot be mapped position by position (``same_length_twins`` picks pairs
that can). The answer is scored as everywhere (:mod:`icl_mech.scoring`); teacher-forced answer
tokens are run but not mapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_mech import display, scoring, validate
from icl_mech.correlation import pearson, spearman
from icl_mech.errors import IclMechError
from icl_mech.gradients import frozen_parameters, track_gradients
from icl_mech.hooks import HookSpec, attach, points
from icl_mech.icl_prompt import QUERY, ROLES, ICLPrompt
from icl_mech.interventions import Capture
from icl_mech.prompt_batch import PromptBatch
from icl_mech.resume import forward_from


@dataclass
class ResidualMap:
    """``attribution[i, p]``: the first-order change of P(correct) on the shuffled prompt when
    the stream entering block ``layers[i]`` at position p takes its clean value; ``exact``
    the same change measured by patching (when asked for)."""

    task: str
    tokens: list[tuple[int, str, str]] = field(repr=False)  # (position, text, role), shuffled
    layers: tuple[int, ...]
    attribution: Float[Tensor, "layer pos"] = field(repr=False)
    probability: float  # P(correct) on the shuffled prompt, unpatched
    exact: Float[Tensor, "layer pos"] | None = field(default=None, repr=False)

    def _repr_html_(self) -> str:
        """The tokens coloured by their strongest change (:mod:`icl_mech.show.residual_map`)."""
        return display.html(self)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, position)."""
        rows = []
        for i, layer in enumerate(self.layers):
            for position, text, role in self.tokens:
                value = float(self.attribution[i, position])
                row = {"task": self.task, "layer": layer, "position": position, "token": text,
                       "role": role, "attribution": value}  # fmt: skip
                if self.exact is not None:
                    row["exact"] = float(self.exact[i, position])
                rows.append(row)
        return pd.DataFrame(rows)

    def agreement(self) -> dict:
        """Attribution against exact patching over every (layer, position): Pearson and rank
        correlation, the largest absolute difference, and the largest exact change."""
        if self.exact is None:
            raise IclMechError("ResidualMap.agreement: computed without exact=True; no exact map")
        a, e = self.attribution.flatten().numpy(), self.exact.flatten().numpy()
        return {
            "pearson": pearson(a, e),
            "spearman": spearman(a, e),
            "max_abs_difference": float(abs(a - e).max()),
            "max_abs_exact": float(abs(e).max()),
            "n_cells": len(a),
        }


def same_length_twins(
    model, clean: Sequence[ICLPrompt], shuffled: Sequence[ICLPrompt]
) -> list[tuple[ICLPrompt, ICLPrompt]]:
    """The (clean, shuffled) pairs whose prompts have the same number of tokens."""
    return [
        (c, s)
        for c, s in zip(clean, shuffled)
        if PromptBatch.from_prompts(model, [c]).seq_len
        == PromptBatch.from_prompts(model, [s]).seq_len
    ]


def residual_map(
    model,
    clean: ICLPrompt,
    shuffled: ICLPrompt,
    layers: Sequence[int] | None = None,
    exact: bool = False,
    batch_size: int = 32,
) -> ResidualMap:
    """The attribution of every (layer, position) of ``shuffled`` towards ``clean`` (and, with
    ``exact``, the patched change itself)."""
    clean_batch, shuffled_batch, gold = _check(model, clean, shuffled)
    layers = validate.layers(model, layers, "residual_map layers")
    validate.count(batch_size, "residual_map batch_size")
    tokens, mask = _with_answer(shuffled_batch, gold)
    clean_tokens, _ = _with_answer(clean_batch, gold)
    n = shuffled_batch.seq_len
    names = points(model, "hook_resid_pre", layers)
    capture = Capture(names, positions="all")
    with torch.no_grad(), attach(model, capture):
        model(clean_tokens, attention_mask=mask)
    clean_stream = torch.stack([capture.activations[name][0] for name in names])
    kept: dict[str, Tensor] = {}
    specs = [HookSpec(points(model, "hook_resid_pre", [0])[0], track_gradients)]
    specs += [HookSpec(name, partial(_keep, kept)) for name in names]
    with torch.enable_grad(), frozen_parameters(model), attach(model, *specs):
        logits = model(tokens, attention_mask=mask)
        probability = scoring.logit_probability(logits[:, n - 1 :], gold)
        grads = torch.autograd.grad(probability.sum(), [kept[name] for name in names])
    stream = torch.stack([kept[name][0].detach() for name in names])  # [layer, pos, d_model]
    slope = torch.stack([g[0] for g in grads])
    change = einops.einsum(clean_stream - stream, slope, "layer pos d, layer pos d -> layer pos")
    result = ResidualMap(
        shuffled.task.name,
        _tokens(shuffled_batch),
        tuple(layers),
        change[:, :n].detach().cpu(),
        float(probability.detach()),
    )
    if exact:
        result.exact = _patched(model, stream, clean_stream, mask, gold, layers, n, batch_size)
        result.exact -= result.probability
    return result


def _keep(kept: dict, stream: Tensor, hook) -> Tensor:
    kept[hook.name] = stream
    return stream  # handed back: the bridge continues with what its hook returns


def _patched(model, stream, clean_stream, mask, gold, layers, n, batch_size) -> Tensor:
    """P(correct) with the stream entering ``layers[i]`` at position p patched to its clean
    value, for every (i, p < n): per layer, batches of rows, row r patching position r."""
    out = torch.empty(len(layers), n)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            for first in range(0, n, batch_size):
                at = torch.arange(first, min(first + batch_size, n))
                rows = einops.repeat(stream[i], "pos d -> rows pos d", rows=len(at)).clone()
                rows[torch.arange(len(at)), at] = clean_stream[i, at]
                logits = forward_from(model, rows, start=layer,
                                      attention_mask=mask.expand(len(at), -1))  # fmt: skip
                out[i, at] = scoring.logit_probability(logits[:, n - 1 :], gold * len(at))
    return out


def _check(model, clean: ICLPrompt, shuffled: ICLPrompt) -> tuple:
    for name, prompt in (("clean", clean), ("shuffled", shuffled)):
        if not isinstance(prompt, ICLPrompt):
            raise IclMechError(
                f"residual_map: {name}={validate.shown(prompt)} is not an ICLPrompt; give one "
                "clean prompt and its shuffled-label twin (see effect_prompts)"
            )
    if clean.task.name != shuffled.task.name or _query(clean) != _query(shuffled):
        raise IclMechError(
            "residual_map: the clean and shuffled prompts must share the task and the query; "
            f"got {clean.task.name!r} / {shuffled.task.name!r}"
        )
    if shuffled.answer is None:
        raise IclMechError("residual_map: the shuffled prompt's query needs its answer")
    scoring.check_answers(model, shuffled.task)
    clean_batch = PromptBatch.from_prompts(model, [clean])
    shuffled_batch = PromptBatch.from_prompts(model, [shuffled])
    if clean_batch.seq_len != shuffled_batch.seq_len:
        raise IclMechError(
            f"residual_map: the clean prompt has {clean_batch.seq_len} tokens and its shuffled "
            f"twin {shuffled_batch.seq_len}, so their positions do not pair up; pick twins of "
            "equal length with same_length_twins(model, clean, shuffled)"
        )
    return clean_batch, shuffled_batch, scoring.golds(model, [shuffled])


def _query(prompt: ICLPrompt) -> tuple:
    return tuple(s.text for s in prompt.segments if s.demo == QUERY), prompt.answer


def _with_answer(batch: PromptBatch, gold) -> tuple[Tensor, Tensor]:
    """The row's tokens and mask, with the answer's bare tokens appended (teacher forcing)."""
    tokens, mask = batch.tokens, batch.attention_mask
    if scoring.steps(gold) > 1:
        forced = scoring.forced_tokens(gold).to(tokens)
        tokens, mask = torch.cat([tokens, forced], 1), torch.cat([mask, torch.ones_like(forced)], 1)
    return tokens, mask


def _tokens(batch: PromptBatch) -> list[tuple[int, str, str]]:
    pieces = batch.pieces[0]
    return [(p, pieces[p], ROLES[int(batch.roles[0, p])]) for p in range(batch.seq_len)]
