"""The indirect effect of every attention head (Todd et al. 2024, §2).

1. Mean head outputs: every head's ``hook_z`` at the last token, averaged over clean ICL prompts.
2. Shuffled-label prompts: the same demonstrations with their answers permuted among them (no
   demonstration keeps its own answer), so the prompt no longer shows the task's mapping.
3. For each head (l, h): patch its mean output into the shuffled prompts at the last token and
   measure the increase of P(first token of the correct answer). That increase, averaged over
   the shuffled prompts, is the head's indirect effect.

Batched: patching the last token cannot change the keys and values of the earlier tokens, so
each batch's prefix runs once into a key/value cache; one last-token pass reads the unpatched
probability and the residual entering every layer; then per layer one pass of the last token
alone, starting at that layer, over ``n_heads`` copies of the batch (copy h patches head h).

Forward passes for N clean and M shuffled prompts in batches of B and L layers:
``ceil(N / B)`` (means, stopped after the deepest layer) + ``ceil(M / B) * (L + 2)`` (prefix,
unpatched last token, one per layer), against ``ceil(M / B) * (1 + L * n_heads)`` full passes
one head at a time (``naive_indirect_effects``, the reference it must equal).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from icl_mech import validate
from icl_mech.backends import is_bridge, unsupported
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.evaluation import answer_token_ids
from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.function_vectors.heads import PatchHeads, mean_head_outputs
from icl_mech.hooks import attach, points, run
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.interventions import Capture
from icl_mech.prompt_batch import PromptBatch, class_token_ids
from icl_mech.prompts import Demonstration, Task
from icl_mech.task_vectors.extract import sample_sets
from icl_mech.task_vectors.sweep import prefix_cache, repeat_cache


def shuffle_labels(
    demonstrations: Sequence[Demonstration], rng: random.Random
) -> list[Demonstration]:
    """The demonstrations with their answers permuted so that none keeps its own (a random
    derangement; with one demonstration nothing can move)."""
    answers = [d.y for d in demonstrations]
    order = list(range(len(answers)))
    if len(order) > 1:
        while any(i == j for i, j in enumerate(order)):
            rng.shuffle(order)
    return [Demonstration(d.x, answers[j]) for d, j in zip(demonstrations, order)]


def effect_prompts(
    task: Task, n_prompts: int, n_demonstrations: int = 5, seed: int = 0
) -> tuple[list[ICLPrompt], list[ICLPrompt]]:
    """(clean, shuffled) ICL prompts of ``n_prompts`` queries drawn from the task: each query's
    demonstrations never give it away (``Task.leaks``); the shuffled prompt is the clean one
    with its answers deranged."""
    n_prompts = validate.count(
        n_prompts, f"task {task.name!r}: n_prompts", maximum=len(task.examples)
    )
    rng = random.Random(seed)
    queries = rng.sample(list(task.examples), n_prompts)
    sets = sample_sets(task, n_prompts, n_demonstrations, seed, queries=queries)
    clean = [ICLPrompt.build(task, demos, q) for demos, q in zip(sets, queries)]
    shuffled = [ICLPrompt.build(task, shuffle_labels(d, rng), q) for d, q in zip(sets, queries)]
    return clean, shuffled


def check_answer_tokens(model, task: Task) -> None:
    """Answers are scored by their first token: label words sharing one, or an input→output task
    whose answers all start with the same token, would make every score meaningless."""
    if task.is_classification:
        class_token_ids(model.tokenizer, task)  # raises, naming the two label words
        return
    answers = sorted({e.y for e in task.examples})
    first = {
        model.tokenizer.encode(task.answer_prefix + a, add_special_tokens=False)[0] for a in answers
    }
    if len(answers) > 1 and len(first) == 1:
        token = model.tokenizer.decode(list(first))
        raise IclMechError(
            f"task {task.name!r}: all {len(answers)} distinct answers (e.g. {answers[:2]}) start "
            f"with the same token {token!r} on {model.cfg.model_name}; the indirect effect and "
            "first-token accuracy score an answer by its first token, so they could not tell the "
            "answers apart. Move the shared start into the template (e.g. template='{x} ->"
            f"{token.rstrip()}') so the answers begin with different tokens"
        )


def require_hooked(model) -> None:
    """Function vectors resume the forward at a layer for the last token alone; refuse a
    TransformerBridge before any work rather than fail inside it."""
    if is_bridge(model):
        raise unsupported(
            "function vectors",
            model,
            "the batched indirect effect resumes the forward at each layer (start_at_layer), "
            "which TransformerBridge does not provide; load the model with backend='hooked'",
        )


def _check_prompts(model, clean, shuffled) -> Task:
    require_hooked(model)
    if len(clean) == 0 or len(shuffled) == 0:
        raise IclMechError(
            f"indirect effect: {len(clean)} clean and {len(shuffled)} shuffled prompts; give "
            "at least one of each (see effect_prompts)"
        )
    task = shuffled[0].task
    if any(p.task.name != task.name for p in [*clean, *shuffled]):
        raise IclMechError("indirect effect: the clean and shuffled prompts must share one task")
    if any(p.answer is None for p in shuffled):
        raise IclMechError("indirect effect: every shuffled prompt's query needs its answer")
    check_answer_tokens(model, task)
    return task


def indirect_effects(
    model,
    clean: Sequence[ICLPrompt],
    shuffled: Sequence[ICLPrompt],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool | str = False,
) -> IndirectEffect:
    """The indirect effect of every head of ``layers`` (default: all), batched and cached (see
    the module docstring for the forward count)."""
    task = _check_prompts(model, clean, shuffled)
    layers = validate.layers(model, layers, "indirect_effects layers")
    validate.count(batch_size, "indirect_effects batch_size")
    means = mean_head_outputs(model, clean, layers, batch_size=batch_size)
    gold = answer_token_ids(model, shuffled)
    effects = torch.empty(len(shuffled), len(layers), model.cfg.n_heads)
    base = torch.empty(len(shuffled))
    forwards = math.ceil(len(clean) / batch_size)
    label = progress if isinstance(progress, str) else f"indirect effect {task.name}"
    groups = list(batched(model, shuffled, batch_size))
    for index, batch in tqdm(groups, desc=label, disable=not progress, leave=False):
        unpatched, patched = _batch_probabilities(model, batch, gold[index], means, layers)
        base[index] = unpatched
        effects[index] = einops.rearrange(
            patched - unpatched, "layer head batch -> batch layer head"
        )
        forwards += len(layers) + 1 + (batch.seq_len > 1)
    return IndirectEffect(task.name, tuple(layers), means, effects, base, len(clean), forwards)


def _batch_probabilities(
    model, batch: PromptBatch, gold: Int[Tensor, " batch"], means: Tensor, layers: list[int]
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "layer head batch"]]:
    n_heads, size = model.cfg.n_heads, len(batch)
    names = points(model, "hook_resid_pre", layers)
    with torch.no_grad():
        cache = prefix_cache(model, batch)
        cache.freeze()
        capture = Capture(names, positions="last")
        last = batch.tokens[:, -1:]
        with attach(model, capture):
            logits = model(last, attention_mask=torch.ones_like(last), past_kv_cache=cache)
        unpatched = _probability(logits[:, -1], gold)
        repeated = repeat_cache(cache, n_heads)  # [(head batch), ...]
        repeated.freeze()
        ones = torch.ones(n_heads * size, 1, dtype=repeated.previous_attention_mask.dtype)
        mask = torch.cat([repeated.previous_attention_mask, ones], dim=1)
        copy_of_row = einops.repeat(torch.arange(n_heads), "head -> (head batch)", batch=size)
        patched = torch.empty(len(layers), n_heads, size)
        for i, layer in enumerate(layers):
            items = [
                PatchHeads([(layer, h)], means[i, h][None], positions=(copy_of_row == h)[:, None])
                for h in range(n_heads)
            ]
            residual = einops.repeat(
                capture.activations[names[i]],
                "batch d_model -> (head batch) 1 d_model",
                head=n_heads,
            )
            with attach(model, *items):
                logits = model(
                    residual, start_at_layer=layer, attention_mask=mask, past_kv_cache=repeated
                )
            probability = _probability(logits[:, -1], gold.repeat(n_heads))
            patched[i] = einops.rearrange(probability, "(head batch) -> head batch", head=n_heads)
    return unpatched, patched


def naive_indirect_effects(
    model,
    clean: Sequence[ICLPrompt],
    shuffled: Sequence[ICLPrompt],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> IndirectEffect:
    """The reference: one full forward per head (and batch), patching that head alone."""
    task = _check_prompts(model, clean, shuffled)
    layers = validate.layers(model, layers, "naive_indirect_effects layers")
    means = mean_head_outputs(model, clean, layers, batch_size=batch_size)
    gold = answer_token_ids(model, shuffled)
    effects = torch.empty(len(shuffled), len(layers), model.cfg.n_heads)
    base = torch.empty(len(shuffled))
    forwards = math.ceil(len(clean) / batch_size)
    with torch.no_grad():
        for index, batch in batched(model, shuffled, batch_size):
            base[index] = _probability(run(model, batch)[:, -1], gold[index])
            for i, layer in enumerate(layers):
                for h in range(model.cfg.n_heads):
                    patch = PatchHeads([(layer, h)], means[i, h][None])
                    probability = _probability(run(model, batch, patch)[:, -1], gold[index])
                    effects[index, i, h] = probability - base[index]
            forwards += 1 + len(layers) * model.cfg.n_heads
    return IndirectEffect(task.name, tuple(layers), means, effects, base, len(clean), forwards)


def _probability(logits: Float[Tensor, "batch vocab"], gold: Int[Tensor, " batch"]) -> Tensor:
    probabilities = logits.float().softmax(-1)
    return probabilities[torch.arange(len(gold)), gold.to(logits.device)].cpu()
