"""Mean ablation of heads: a prompt's own mean changes nothing, the values written position by
position (padding and past-the-end included), the exclusion sets, the random control heads, and
the errors before any forward."""

from __future__ import annotations

import random

import pytest
import torch
from spies import no_forward

from icl_mech import Capture, HookSpec, IclMechError, PromptBatch, attach, run, tasks
from icl_mech.batching import TextBatch
from icl_mech.function_vectors import effect_prompts
from icl_mech.head_roles.ablation import (
    MeanAblateHeads,
    exclusion_sets,
    mean_ablation,
    random_heads,
)
from icl_mech.head_roles.token_loss import sentences
from icl_mech.threads import torch_threads

HEADS = [(0, 1), (1, 0), (1, 3), (2, 2)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads fight the other jobs on this 2-core machine; one is many times faster."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def texts():
    """Texts of different lengths (so a batch of them is left-padded)."""
    kept = sentences()
    return [kept[0], kept[1] + " " + kept[2], kept[3], kept[4] + " " + kept[5] + " " + kept[6]]


def all_heads(model) -> list[tuple[int, int]]:
    return [(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def reader(names: list[str], into: dict) -> list[HookSpec]:
    """Hooks keeping a copy of the activation at each point (a ``Capture`` cannot be attached
    with a ``TextBatch``: it asks the batch for ``seq_len``); attached after the ablation at
    the same point, they see its output."""

    def keep(activation, hook):
        into[hook.name] = activation.detach().clone()

    return [HookSpec(name, keep) for name in names]


def head_outputs(model, batch, heads) -> torch.Tensor:
    """``[batch, n, pos, d_head]``: the heads' ``hook_z``, unablated."""
    names = sorted({f"blocks.{layer}.attn.hook_z" for layer, _ in heads})
    capture = Capture(names, positions="all")
    with torch.no_grad(), attach(model, capture):
        model(batch.tokens, attention_mask=batch.attention_mask)
    return torch.stack(
        [capture.activations[f"blocks.{layer}.attn.hook_z"][:, :, h] for layer, h in heads], dim=1
    )


# --- a prompt's own mean changes nothing ---------------------------------------------------------


def test_a_prompts_own_mean_changes_nothing(tiny, texts):
    """Exactly: alone, and as its row of a left-padded batch (its real positions)."""
    padded = TextBatch.from_texts(tiny, texts)
    assert padded.attention_mask.eq(0).any()
    with torch.no_grad():
        before = run(tiny, padded)
    for i, text in enumerate(texts):
        own = mean_ablation(tiny, [text], HEADS)
        alone = TextBatch.from_texts(tiny, [text])
        real = padded.attention_mask[i].bool()
        with torch.no_grad():
            torch.testing.assert_close(run(tiny, alone, own), run(tiny, alone), atol=0, rtol=0)
            after = run(tiny, padded, own)
        torch.testing.assert_close(after[i, real], before[i, real], atol=0, rtol=0)
        others = [j for j in range(len(texts)) if j != i]  # the ablation does act on them
        assert (after[others] - before[others]).abs().max() > 1e-4


def test_an_icl_prompts_own_mean_changes_nothing(tiny, texts):
    task = tasks.load("antonym")
    clean, _ = effect_prompts(task, 3, n_demonstrations=2, seed=0)
    batch = PromptBatch.from_prompts(tiny, clean)
    own = mean_ablation(tiny, clean[:1], HEADS)
    with torch.no_grad():
        torch.testing.assert_close(
            run(tiny, batch, own)[0, batch.attention_mask[0].bool()],
            run(tiny, batch)[0, batch.attention_mask[0].bool()],
            atol=0,
            rtol=0,
        )


# --- the values written --------------------------------------------------------------------------


def test_the_means_are_per_position_over_the_prompts_that_reach_it(tiny, texts):
    """``means[i, p]``: head i's output at position p (from each text's first real token),
    averaged over the texts long enough to have one; ``pooled[i]`` over every real position."""
    ablation = mean_ablation(tiny, texts, HEADS, batch_size=3)
    outputs = [head_outputs(tiny, TextBatch.from_texts(tiny, [t]), HEADS)[0] for t in texts]
    longest = max(o.shape[1] for o in outputs)
    assert ablation.means.shape == (len(HEADS), longest, tiny.cfg.d_head)
    for p in (0, 3, longest - 1):
        reach = [o[:, p] for o in outputs if o.shape[1] > p]
        torch.testing.assert_close(ablation.means[:, p], torch.stack(reach).mean(0))
    pooled = torch.cat(outputs, dim=1).mean(1)
    torch.testing.assert_close(ablation.pooled, pooled)
    # the mean over the texts of their outputs at p is the mean written at p: the ablation
    # changes nothing in expectation at the first position every text reaches
    torch.testing.assert_close(
        torch.stack([o[:, 0] for o in outputs]).mean(0), ablation.means[:, 0]
    )


def test_the_ablation_writes_the_mean_of_each_position_and_the_pooled_mean_past_the_end(
    tiny, texts
):
    """Captured after the ablation at the same hook: row r, real position q (counted from its
    first real token) holds ``means[i, q]``, positions past the longest averaged text hold
    ``pooled[i]``. The rows are the texts with 6 tokens appended, left-padded."""
    ablation = mean_ablation(tiny, texts, HEADS, batch_size=2)
    longest = ablation.means.shape[1]
    batch = TextBatch.from_texts(tiny, texts)
    extra = torch.randint(5, 100, (len(texts), 6), generator=torch.Generator().manual_seed(0))
    tokens = torch.cat([batch.tokens, extra], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(extra)], dim=1)
    names = sorted({f"blocks.{layer}.attn.hook_z" for layer, _ in HEADS})
    after: dict = {}
    with torch.no_grad(), attach(tiny, ablation, *reader(names, after), batch=batch):
        tiny(tokens, attention_mask=mask)
    padding = (batch.attention_mask == 0).sum(1).tolist()
    past_the_end = 0
    for i, (layer, head) in enumerate(HEADS):
        z = after[f"blocks.{layer}.attn.hook_z"][:, :, head]
        for row, start in enumerate(padding):
            for position in range(start, tokens.shape[1]):
                q = position - start
                expected = ablation.means[i, q] if q < longest else ablation.pooled[i]
                past_the_end += q >= longest
                assert torch.equal(z[row, position], expected), (i, row, position)
    assert past_the_end >= 6 * len(HEADS)


def test_heads_not_ablated_are_untouched(tiny, texts):
    ablation = mean_ablation(tiny, texts[:2], [(1, 0)])
    batch = TextBatch.from_texts(tiny, texts)
    before = head_outputs(tiny, batch, [(1, 1), (1, 3), (0, 0)])
    names = ["blocks.1.attn.hook_z", "blocks.0.attn.hook_z"]
    after: dict = {}
    with torch.no_grad(), attach(tiny, ablation, *reader(names, after), batch=batch):
        tiny(batch.tokens, attention_mask=batch.attention_mask)
    same_layer = after[names[0]][:, :, [1, 3]]  # [batch, pos, 2, d_head]
    assert torch.equal(same_layer, before[:, :2].transpose(1, 2))
    assert torch.equal(after[names[1]][:, :, 0], before[:, 2])
    ablated = after[names[0]][:, :, 0]
    assert not torch.equal(ablated, head_outputs(tiny, batch, [(1, 0)])[:, 0])


# --- exclusion sets and random heads -------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5])
def test_exclusion_sets_are_disjoint_and_exclude_the_other_kinds_top_k(tiny_llama, k):
    """Random rankings of the 12 heads. Two disjoint sets of k exist iff each kind keeps k heads
    outside the other's top k and both keep 2k together: then the sets are built, else an
    error names k (k=5 is infeasible for about a third of the rankings)."""
    heads = all_heads(tiny_llama)
    outcomes = {"built": 0, "refused": 0}
    for seed in range(60):
        rng = random.Random(seed)
        induction, fv = rng.sample(heads, len(heads)), rng.sample(heads, len(heads))
        left = set(heads) - set(fv[:k]), set(heads) - set(induction[:k])
        possible = min(len(left[0]), len(left[1])) >= k and len(left[0] | left[1]) >= 2 * k
        if not possible:
            with pytest.raises(IclMechError, match=rf"k={k}\b"):
                exclusion_sets(induction, fv, k)
            outcomes["refused"] += 1
            continue
        first, second = exclusion_sets(induction, fv, k)
        outcomes["built"] += 1
        assert len(first) == len(set(first)) == k and len(second) == len(set(second)) == k
        assert not set(first) & set(second)
        assert not set(first) & set(fv[:k]) and not set(second) & set(induction[:k])
        # each holds its ranking's best heads outside the other kind's top k and the other set
        assert first == [h for h in induction if h not in fv[:k] and h not in second][:k]
        assert second == [h for h in fv if h not in induction[:k] and h not in first][:k]
    assert outcomes["built"] > 0 and (outcomes["refused"] > 0) == (k == 5)
    same = random.Random(0).sample(heads, len(heads))  # one ranking twice: the sets share none
    first, second = exclusion_sets(same, same, 1)
    assert first == [same[1]] and second == [same[2]]


def test_exclusion_sets_refuse_a_k_too_large(tiny_llama):
    heads = all_heads(tiny_llama)
    rng = random.Random(0)
    induction, fv = rng.sample(heads, len(heads)), rng.sample(heads, len(heads))
    for k in (len(heads), 9, 7):  # fewer than k heads left outside the other kind's top k
        with pytest.raises(IclMechError, match=rf"k={k}\b.*choose a smaller k"):
            exclusion_sets(induction, fv, k)
    same = rng.sample(heads, len(heads))  # 7 heads left to each, but not 5 + 5 disjoint ones
    with pytest.raises(IclMechError, match=r"k=5\b.*cannot both reach 5"):
        exclusion_sets(same, same, 5)
    with pytest.raises(IclMechError, match="same heads"):
        exclusion_sets(induction, fv[:-1], 2)


def test_random_heads_match_the_layers_and_avoid_the_given_heads(tiny_llama):
    like = [(2, 1), (0, 3), (2, 0)]  # two draws from layer 2's other two heads
    exclude = [(0, 0)]
    for seed in range(30):
        drawn = random_heads(tiny_llama, like, exclude, seed=seed)
        assert [layer for layer, _ in drawn] == [layer for layer, _ in like]
        assert len(set(drawn)) == len(drawn)
        assert not set(drawn) & (set(like) | set(exclude))
        assert drawn == random_heads(tiny_llama, like, exclude, seed=seed)
    assert len({tuple(random_heads(tiny_llama, like, seed=s)) for s in range(30)}) > 1
    # a layer with no head left: the nearest layer with one (tiny llama: layers 0..2, 4 heads)
    full_layer = [(2, 0), (2, 1), (2, 2)], [(2, 3)]
    for seed in range(10):
        drawn = random_heads(tiny_llama, *full_layer, seed=seed)
        assert [layer for layer, _ in drawn] == [1, 1, 1]
    one_left = random_heads(tiny_llama, [(0, 0), (0, 1)], [(0, 2)], seed=0)
    assert one_left[0] == (0, 3) and one_left[1][0] == 1
    everything = [(layer, h) for layer in range(3) for h in range(4)]
    with pytest.raises(IclMechError, match="random heads are asked for outside 12 heads"):
        random_heads(tiny_llama, everything[:6], everything[6:])


# --- errors before any forward -------------------------------------------------------------------


@pytest.mark.parametrize(
    "means, pooled, named",
    [
        (torch.zeros(2, 5, 16), torch.zeros(2, 16), r"means have shape \[2, 5, 16\]"),
        (torch.zeros(3, 5, 8), torch.zeros(3, 16), r"means have shape \[3, 5, 8\]"),
        (torch.zeros(3, 16), torch.zeros(3, 16), r"MeanAblateHeads means .*shape \[3, 16\]"),
        (torch.zeros(3, 5, 16), torch.zeros(2, 16), r"pooled has shape \[2, 16\]"),
    ],
)
def test_wrong_shapes_are_refused_before_any_forward(tiny_llama, texts, means, pooled, named):
    heads = [(0, 1), (1, 0), (2, 3)]
    batch = TextBatch.from_texts(tiny_llama, texts)
    with no_forward(tiny_llama), pytest.raises(IclMechError, match=named):
        run(tiny_llama, batch, MeanAblateHeads(heads, means, pooled))
    assert all(not p.fwd_hooks for p in tiny_llama.hook_dict.values())
