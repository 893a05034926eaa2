"""The indirect effect of every attention head (Todd et al. 2024, §2).

1. Mean head outputs: every head's ``hook_z`` at the last token, averaged over clean ICL prompts.
2. Shuffled-label prompts: the same demonstrations with their answers permuted among them (no
   demonstration keeps its own answer), so the prompt no longer shows the task's mapping.
3. For each head (l, h): patch its mean output into the shuffled prompts at the last token and
   measure the increase of P(correct answer). That increase, averaged over the shuffled prompts,
   is the head's indirect effect. The correct answer is scored as everywhere
   (:mod:`icl_mech.scoring`): P(first content token), times P(the whitespace-only tokens
   before it) where the answer starts with such tokens; those rows run once more on their own
   with those tokens appended (teacher forcing; the patch stays on the prompt's last token).

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

from icl_mech import scoring, validate
from icl_mech.batching import batched
from icl_mech.errors import IclMechError
from icl_mech.function_vectors import attribution
from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.function_vectors.heads import PatchHeads, mean_head_outputs
from icl_mech.hooks import attach, points
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.interventions import Capture
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Demonstration, Task
from icl_mech.resume import forward_from
from icl_mech.task_vectors.extract import sample_sets
from icl_mech.task_vectors.sweep import prefix_cache

METHODS = ("exact", "attribution")


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


def _check_prompts(model, clean, shuffled) -> Task:
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
    scoring.check_answers(model, task)
    return task


def indirect_effects(
    model,
    clean: Sequence[ICLPrompt],
    shuffled: Sequence[ICLPrompt],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool | str = False,
    method: str = "exact",
) -> IndirectEffect:
    """The indirect effect of every head of ``layers`` (default: all), batched and cached (see
    the module docstring for the forward count). ``method="attribution"``: its first-order
    estimate from one forward and one backward per batch (:mod:`.attribution`, which says
    what it misses)."""
    method = validate.choice(method, "indirect_effects method", METHODS)
    task = _check_prompts(model, clean, shuffled)
    layers = validate.layers(model, layers, "indirect_effects layers")
    validate.count(batch_size, "indirect_effects batch_size")
    means = mean_head_outputs(model, clean, layers, batch_size=batch_size)
    gold = scoring.golds(model, shuffled)
    effects = torch.empty(len(shuffled), len(layers), model.cfg.n_heads)
    base = torch.empty(len(shuffled))
    forwards = math.ceil(len(clean) / batch_size)
    label = progress if isinstance(progress, str) else f"indirect effect {task.name}"
    groups = list(batched(model, shuffled, batch_size))
    scored = _batch_probabilities if method == "exact" else attribution.batch_estimates
    per_pass = len(layers) + 1 if method == "exact" else attribution.PASSES - 1
    for index, batch in tqdm(groups, desc=label, disable=not progress, leave=False):
        unpatched, patched, passes = _scored_probabilities(
            model, batch, [gold[i] for i in index], means, layers, scored
        )
        base[index] = unpatched
        effects[index] = einops.rearrange(
            patched - unpatched, "layer head batch -> batch layer head"
        )
        forwards += passes * (per_pass + (batch.seq_len > 1))
    return IndirectEffect(
        task.name, tuple(layers), means, effects, base, len(clean), forwards, method
    )


def _scored_probabilities(model, batch: PromptBatch, gold, means, layers, scored) -> tuple:
    """(unpatched, patched, cached passes): the batch as one, or, for its rows whose answers
    start with whitespace-only tokens, once more on their own with those tokens appended."""
    bare, passes = scoring.bare_rows(gold), 0
    unpatched, patched = (
        torch.empty(len(batch)),
        torch.empty(len(layers), model.cfg.n_heads, len(batch)),
    )
    if len(bare) < len(gold):
        first = [scoring.Gold(g.answer, (), g.content) for g in gold]  # bare rows: replaced
        unpatched, patched = scored(model, batch, first, means, layers)
        passes += 1
    if bare:
        chosen = [gold[i] for i in bare]
        forced = scoring.forced_tokens(chosen)
        sub = scoring.subset(batch, bare)
        unpatched[bare], patched[:, :, bare] = scored(model, sub, chosen, means, layers, forced)
        passes += 1
    return unpatched, patched, passes


def _batch_probabilities(
    model,
    batch: PromptBatch,
    gold: Sequence[scoring.Gold],
    means: Tensor,
    layers: list[int],
    forced: Int[Tensor, "batch extra"] | None = None,
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "layer head batch"]]:
    n_heads, size = model.cfg.n_heads, len(batch)
    names = points(model, "hook_resid_pre", layers)
    last = batch.tokens[:, -1:]
    if forced is not None:
        last = torch.cat([last, forced.to(last)], dim=1)
    steps = last.shape[1]
    with torch.no_grad():
        cache = prefix_cache(model, batch)
        capture = Capture(names, positions="all")
        with attach(model, capture):
            logits = cache.forward(model, last, torch.ones_like(last))
        unpatched = scoring.logit_probability(logits, gold)
        repeated = cache.repeat(n_heads)  # [(head batch), ...]
        ones = torch.ones(n_heads * size, steps, dtype=torch.long)
        copy_of_row = einops.repeat(torch.arange(n_heads), "head -> (head batch)", batch=size)
        at_prompt = torch.zeros(n_heads * size, steps, dtype=torch.bool)  # its last token only
        patched = torch.empty(len(layers), n_heads, size)
        for i, layer in enumerate(layers):
            items = []
            for h in range(n_heads):
                positions = at_prompt.clone()
                positions[:, 0] = copy_of_row == h
                items.append(PatchHeads([(layer, h)], means[i, h][None], positions=positions))
            residual = einops.repeat(
                capture.activations[names[i]],
                "batch step d_model -> (head batch) step d_model",
                head=n_heads,
            )
            with attach(model, *items):
                logits = forward_from(
                    model, residual, start=layer, attention_mask=ones, cache=repeated
                )
            probability = scoring.logit_probability(logits, list(gold) * n_heads)
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
    gold = scoring.golds(model, shuffled)
    effects = torch.empty(len(shuffled), len(layers), model.cfg.n_heads)
    base = torch.empty(len(shuffled))
    forwards = math.ceil(len(clean) / batch_size)
    with torch.no_grad():
        for index, batch in batched(model, shuffled, batch_size):
            rows = [gold[i] for i in index]
            base[index] = _naive_probability(model, batch, rows)
            for i, layer in enumerate(layers):
                for h in range(model.cfg.n_heads):
                    probability = _naive_probability(model, batch, rows, (layer, h), means[i, h])
                    effects[index, i, h] = probability - base[index]
            forwards += 1 + len(layers) * model.cfg.n_heads
    return IndirectEffect(task.name, tuple(layers), means, effects, base, len(clean), forwards)


def _naive_probability(model, batch, gold, head=None, mean=None) -> Float[Tensor, " batch"]:
    """P(correct answer) from one full forward, ``head`` patched to ``mean`` at the prompt's
    last token; the whitespace-only answer tokens, if any, appended (teacher forcing)."""
    tokens, mask, n = batch.tokens, batch.attention_mask, batch.seq_len
    if scoring.steps(gold) > 1:
        forced = scoring.forced_tokens(gold).to(tokens)
        tokens, mask = torch.cat([tokens, forced], 1), torch.cat([mask, torch.ones_like(forced)], 1)
    at = torch.zeros(tokens.shape, dtype=torch.bool)
    at[:, n - 1] = True
    items = [] if head is None else [PatchHeads([head], mean[None], positions=at)]
    with attach(model, *items):
        logits = model(tokens, attention_mask=mask)
    return scoring.logit_probability(logits[:, n - 1 :], gold)
