"""Anchors, prompt checks and a cheap read-out of the prediction at the target position q.

Wang et al. only need the logits at q. ``target_logits`` stops the forward after the last block
and applies the final norm and the unembedding to the q row alone, which skips the
``[batch, seq, vocab]`` logits tensor (a fifth of SmolLM2-135M's forward cost). It can also
resume a forward from a cached residual stream (``start_at_layer``), which makes interventions
confined to the last layers cheap.

Anchors: ``"all"`` takes every token of each demonstration's label word (the default, so a
multi-token label word is isolated and read as a whole); ``"first"`` takes its first token
only (Wang et al.'s choice; on the embedded SmolLM2 every bundled label word is one token).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.hooks import attach
from icl_mech.prompt_batch import PromptBatch
from icl_mech.resume import forward_from, unembed

Anchors = Literal["all", "first"]
ANCHORS = ("all", "first")


def check_anchors(anchors: str) -> None:
    if anchors not in ANCHORS:
        raise IclMechError(f"anchors must be one of {ANCHORS}, got {anchors!r}")


def require_label_words(batch: PromptBatch, what: str) -> None:
    """Every row must be a classification prompt with at least one demonstration."""
    task = batch.prompts[0].task
    if batch.class_token_ids is None:
        raise IclMechError(
            f"{what} needs a classification task with label words; task {task.name!r} has none"
        )
    empty = [b for b, row in enumerate(batch.rows) if not any(row.labels)]
    if empty:
        raise IclMechError(
            f"{what}: prompt row(s) {empty} of task {task.name!r} hold no label word "
            "(zero-shot prompts?); build them with demonstrations"
        )


def anchor_mask(batch: PromptBatch, anchors: Anchors = "all") -> Bool[Tensor, "batch seq"]:
    """The label-word positions p_k, per the ``anchors`` choice."""
    check_anchors(anchors)
    require_label_words(batch, "anchor positions")
    return batch.label_mask(first_token_only=anchors == "first")


def check_layers(model, layers, what: str) -> list[int]:
    """Layer indices (default: all), each an int in range, or an error naming the model."""
    return validate.layers(model, layers, f"{what} layers", allow_empty=True)


def target_logits(
    model,
    batch: PromptBatch,
    *items,
    start_at_layer: int | None = None,
    residual: Float[Tensor, "batch seq d_model"] | None = None,
) -> Float[Tensor, "batch vocab"]:
    """Logits at each row's target q, with ``items`` attached for the forward.

    With ``start_at_layer`` the forward resumes from ``residual`` (the stream entering that
    layer, e.g. captured at ``blocks.{L}.hook_resid_pre``; see ``resume.forward_from``).
    Stays in the autograd graph when gradients are enabled.
    """
    if start_at_layer is not None and (
        residual is None or residual.shape[:2] != batch.tokens.shape
    ):
        shape = None if residual is None else tuple(residual.shape)
        raise IclMechError(
            f"resuming at layer {start_at_layer} needs the residual stream of the batch "
            f"[{len(batch)}, {batch.seq_len}, d_model], got {shape}"
        )
    stream = batch.tokens if start_at_layer is None else residual
    with attach(model, *items, batch=batch):
        stream = forward_from(
            model,
            stream,
            start=start_at_layer or 0,
            stop=model.cfg.n_layers,
            attention_mask=batch.attention_mask,
        )
    at_target = stream[torch.arange(len(batch)), batch.targets.to(stream.device)]
    return unembed(model, at_target)


def concat_examples(parts: Sequence, *fields: str):
    """Per-example results of several batches as one: the tensor ``fields`` concatenated over
    examples, everything else taken from the first part."""
    if not parts:
        raise IclMechError("concat: nothing to concatenate")
    joined = {name: torch.cat([getattr(p, name) for p in parts]) for name in fields}
    return dataclasses.replace(parts[0], **joined)
