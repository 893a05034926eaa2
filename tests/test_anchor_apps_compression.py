"""Anchor-only context compression (icl_mech.anchors.compression)."""

import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from icl_mech import HookSpec, IclMechError, PromptBatch, make, tasks, tiny_model
from icl_mech.anchors.compression import (
    anchor_keep,
    answer,
    encode_context,
    encode_shared,
    split_prompts,
)
from icl_mech.anchors.compression_experiment import (
    METHODS,
    SELECTED,
    VARIANTS,
    CompressionTable,
    _query,
    compare_methods,
    one_demonstration_each,
    random_keep,
    split_for_compression,
    text_anchor,
)
from icl_mech.anchors.positions_continued import ContinuePositions
from icl_mech.anchors.readout import target_logits
from icl_mech.evaluation import build_prompts
from icl_mech.hooks import points
from icl_mech.icl_prompt import ROLES, ICLPrompt
from icl_mech.stats import bootstrap
from icl_mech.threads import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    """Two intra-op threads are many times slower than one when other processes share the cores."""
    with torch_threads(1):
        yield


def _batch(model, n=5, seed=0, shots=1):
    task = tasks.load("sentiment")
    pool, test = task.split(n, seed)
    return PromptBatch.from_prompts(model, build_prompts(pool, shots, test.examples, seed))


def _masked_reference(model, batch, keep):
    """The full prompt, its query rows forbidden to attend the context entries not kept."""
    dropped = torch.zeros_like(batch.tokens, dtype=torch.bool)
    query_rows = torch.zeros_like(dropped)
    for b, row in enumerate(batch.rows):
        pad, start = int((batch.attention_mask[b] == 0).sum()), row.query[0]
        dropped[b, pad:start] = ~keep[b, keep.shape[1] - (start - pad) :]
        query_rows[b, start:] = True
    forbidden = query_rows[:, None, :, None] & dropped[:, None, None, :]

    def mask(scores, hook):
        return scores.masked_fill(forbidden, float("-inf"))

    specs = [HookSpec(p, mask) for p in points(model, "attn.hook_attn_scores")]
    with torch.no_grad():
        return target_logits(model, batch, *specs)


def test_keeping_every_entry_reproduces_the_full_prompt(tiny):
    batch = _batch(tiny, n=6)  # other demonstrations per row, so rows are padded differently
    context, queries = split_prompts(batch)
    assert context.attention_mask.sum(1).unique().numel() > 1
    with torch.no_grad():
        full = target_logits(tiny, batch)
        cached = answer(tiny, encode_context(tiny, context), queries)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


def test_shared_demonstrations_are_encoded_once(tiny):
    task = tasks.load("sentiment")
    prompts = [ICLPrompt.build(task, list(task.examples[:2]), q) for q in task.examples[4:9]]
    cache, queries, batch = encode_shared(tiny, prompts)
    assert len(cache) == 1 and len(queries) == 5
    with torch.no_grad():
        torch.testing.assert_close(
            answer(tiny, cache, queries), target_logits(tiny, batch), atol=1e-4, rtol=0
        )


def test_hidden_anchor_equals_full_prompt_blind_to_dropped_entries(tiny):
    """Positions continue after the full context: an independent reference is the full prompt
    whose query rows may not attend the dropped entries."""
    batch = _batch(tiny, n=4)
    context, queries = split_prompts(batch)
    cache = encode_context(tiny, context)
    keep = anchor_keep(cache)
    assert 0 < int(keep.sum()) < int(cache.attention_mask.sum())
    with torch.no_grad():
        compressed = answer(tiny, cache.select(keep), queries)
        full = target_logits(tiny, batch)
    reference = _masked_reference(tiny, batch, keep)
    torch.testing.assert_close(compressed, reference, atol=1e-4, rtol=0)
    assert (compressed - full).abs().max() > 1e-2  # the reference is not the full prompt


def test_positions_counted_from_the_kept_entries_would_be_wrong(tiny):
    batch = _batch(tiny, n=3)
    context, queries = split_prompts(batch)
    cache = encode_context(tiny, context)
    small = cache.select(anchor_keep(cache))
    entries = [
        TransformerLensKeyValueCacheEntry(k, v, frozen=True)
        for k, v in zip(small.keys, small.values)
    ]
    naive = TransformerLensKeyValueCache(entries, small.attention_mask.clone(), frozen=True)
    with torch.no_grad():
        wrong = tiny(queries.tokens, attention_mask=queries.attention_mask, past_kv_cache=naive)
    reference = _masked_reference(tiny, batch, anchor_keep(cache))
    assert (wrong[:, -1] - reference).abs().max() > 1e-3


def test_batched_equals_one_by_one(tiny_llama):
    batch = _batch(tiny_llama, n=4)
    context, queries = split_prompts(batch)
    cache = encode_context(tiny_llama, context)
    small = cache.select(anchor_keep(cache))
    with torch.no_grad():
        together = answer(tiny_llama, small, queries)
        for b in range(len(batch)):
            one = torch.tensor([b])
            alone = encode_context(tiny_llama, context.take(one))
            alone = alone.select(anchor_keep(alone))
            torch.testing.assert_close(
                answer(tiny_llama, alone, queries.take(one))[0], together[b], atol=1e-5, rtol=0
            )


def test_random_keep_swaps_each_label_word_for_a_word_of_its_demonstration(tiny_llama):
    cache = encode_context(tiny_llama, split_prompts(_batch(tiny_llama, n=3))[0])
    anchors = anchor_keep(cache)
    drawn = random_keep(cache, anchors, seed=3)
    label = cache.roles == ROLES.index("label")
    assert torch.equal(drawn.sum(1), anchors.sum(1))
    assert torch.equal(drawn & ~label & anchors, anchors & ~label)  # formatting stays
    assert not (drawn & label).any() and not (drawn & ~cache.attention_mask.bool()).any()
    for b in range(len(cache)):  # one new entry between consecutive label words
        labels = torch.nonzero(label[b]).flatten().tolist()
        new = torch.nonzero(drawn[b] & ~anchors[b]).flatten().tolist()
        bounds = [-1] + [
            p for i, p in enumerate(labels) if i + 1 == len(labels) or labels[i + 1] > p + 1
        ]
        assert all(sum(lo < n < hi for n in new) >= 1 for lo, hi in zip(bounds, bounds[1:]))
    assert torch.equal(drawn, random_keep(cache, anchors, seed=3))
    assert not torch.equal(drawn, random_keep(cache, anchors, seed=4))


def test_text_anchor_drops_the_demonstration_inputs_only():
    task = tasks.load("sentiment")
    prompt = ICLPrompt.build(task, list(task.examples[:2]), task.examples[5])
    reduced = text_anchor(prompt)
    assert task.examples[0].x not in reduced.text and task.examples[5].x in reduced.text
    assert reduced.text.count("Sentiment:") == 3 and reduced.answer == prompt.answer


def test_clear_errors(tiny_llama, tiny_gpt2):
    task = tasks.load("sentiment")
    with pytest.raises(IclMechError, match="zero-shot"):
        split_prompts(
            PromptBatch.from_prompts(tiny_llama, build_prompts(task, 0, task.examples[:2]))
        )
    context, queries = split_prompts(_batch(tiny_llama, n=3))
    cache = encode_context(tiny_llama, context)
    with pytest.raises(IclMechError, match="no label positions"):
        anchor_keep(cache, roles=("template", "separator"))
    with pytest.raises(IclMechError, match="unknown roles"):
        anchor_keep(cache, roles=("labels",))
    with pytest.raises(IclMechError, match="cannot be used with tiny-gpt2"):
        answer(tiny_gpt2, cache, queries)
    with pytest.raises(IclMechError, match="other weights"):
        answer(tiny_model("llama", seed=1), cache, queries)
    with pytest.raises(IclMechError, match="3 contexts but 2 queries"):
        answer(tiny_llama, cache, queries.take(torch.tensor([0, 1])))
    with pytest.raises(IclMechError, match="keep mask has shape"):
        cache.select(torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(IclMechError, match="other demonstration tokens"):
        context.shared()


def test_continue_positions_is_a_catalogued_kind():
    item = make("continue-positions", start=torch.tensor([5]), gap=torch.tensor([2]),
                query_mask=torch.ones(1, 3))  # fmt: skip
    assert isinstance(item, ContinuePositions) and "gap=Tensor[1]" in repr(item)


def test_keeping_everything_is_the_full_prompt_and_dropping_the_label_words_is_not(tiny_llama):
    task = tasks.load("sentiment")
    prompts = one_demonstration_each(task, 4, seed=0)
    cache, queries, batch = encode_shared(tiny_llama, prompts)
    label = cache.roles == ROLES.index("label")
    anchors = anchor_keep(cache)
    with torch.no_grad():
        full = target_logits(tiny_llama, batch)
        everything = answer(tiny_llama, cache.select(cache.attention_mask.bool()), queries)
        kept = answer(tiny_llama, cache.select(anchors), queries)
        without_labels = answer(tiny_llama, cache.select(anchors & ~label), queries)
    torch.testing.assert_close(everything, full, atol=1e-4, rtol=0)
    assert (kept - without_labels).abs().max() > 1e-2


def test_selection_queries_are_held_out_and_share_the_demonstrations():
    task = tasks.load("sentiment")
    test, select = split_for_compression(task, 8, 10, seed=3)
    assert len(test) == 8 and len(select) == 10
    assert [p.text for p in test] == [p.text for p in one_demonstration_each(task, 8, seed=3)]
    queries = lambda prompts: {_query(p) for p in prompts}  # noqa: E731
    assert not queries(test) & queries(select)
    context = lambda p: p.text[: p.text.rindex(_query(p))]  # noqa: E731
    assert {context(p) for p in test + select} == {context(test[0])}
    assert not any(_query(p) in context(p) for p in select)  # no demonstration is a query


def test_each_method_reports_what_it_keeps_and_top_is_chosen_on_the_selection(tiny_llama):
    task = tasks.load("sentiment")
    test, select = split_for_compression(task, 4, 6, seed=0)
    rows = dict(compare_methods(tiny_llama, test, 3, 5, 0, select))
    assert tuple(rows) == METHODS
    cache, _, _ = encode_shared(tiny_llama, test)
    text_cache, _, _ = encode_shared(tiny_llama, [text_anchor(p) for p in test])
    labels, anchors = (
        int((cache.roles == ROLES.index("label")).sum()),
        int(anchor_keep(cache).sum()),
    )
    kept = {method: {r["kept"] for r in records} for method, records in rows.items()}
    assert kept["ICL"] == {int(cache.kept[0])} and kept["Text_anchor"] == {int(text_cache.kept[0])}
    assert kept["Hidden_anchor (label words)"] == {labels}
    assert kept["Hidden_random (label words)"] == {labels}
    assert kept["Hidden_anchor (label + formatting)"] == {anchors}
    assert kept["Hidden_random (label + formatting)"] == {anchors} and labels < anchors
    for variant in VARIANTS:
        top = rows[f"Hidden_random-top ({variant}, {SELECTED})"]
        draws = rows[f"Hidden_random ({variant})"]
        assert len(top) == 4 and len(draws) == 12
        chosen = [r for r in draws if r["draw"] == top[0]["draw"]]
        assert chosen == top  # one of the draws, scored on the test queries
        # the choice maximises label loyalty on the held-out queries
        on_selection = {
            d: selection_loyalty(tiny_llama, test, select, variant, d) for d in range(3)
        }
        assert on_selection[top[0]["draw"]] == max(on_selection.values())


def selection_loyalty(model, test, select, variant, draw):
    cache, queries, batch = encode_shared(model, list(test) + list(select))
    keep = random_keep(cache, anchor_keep(cache, VARIANTS[variant]), seed=draw)
    with torch.no_grad():
        full, drawn = answer(model, cache, queries), answer(model, cache.select(keep), queries)
    ids = batch.class_token_ids
    same = full[:, ids].argmax(-1) == drawn[:, ids].argmax(-1)
    return float(same[len(test) :].float().mean())


def test_table_intervals_are_the_shared_bootstrap_over_test_queries():
    records = [
        dict(task=t, seed=s, method=m, draw=d, item=i, query=f"q{i + s}", kept=k, context=9,
             label_loyalty=float((i + d) % 2), word_loyalty=0.1 * i, accuracy=float(i % 3 == 0))
        for t in ("a", "b") for s in (0, 1) for m, k, draws in (("ICL", 9, 1), ("R", 3, 2))
        for d in range(draws) for i in range(5)
    ]  # fmt: skip
    table = CompressionTable(records).table()
    assert list(table["kept"]) == [9, 3]
    per_query = CompressionTable(records).per_query()
    assert len(per_query) == 2 * 2 * 2 * 5  # draws averaged
    random_rows = per_query[per_query["method"] == "R"]
    assert set(random_rows["label_loyalty"]) == {0.5}
    expected = bootstrap(random_rows["word_loyalty"] * 100, random_rows["unit"])
    assert expected.n == 12  # queries q0..q5 of two tasks: seeds repeat q1..q4
    row = table.loc["R"]
    assert (row["word_loyalty"], row["word_loyalty_low"], row["word_loyalty_high"]) == (
        pytest.approx(expected.value),
        pytest.approx(expected.low),
        pytest.approx(expected.high),
    )
    assert row["word loyalty (%)"] == expected.format(1) and row["n"] == 12
