"""Anchor re-weighting (icl_mech.anchors.reweighting)."""

import pandas as pd
import pytest
import torch

from icl_mech import HookSpec, IclMechError, PromptBatch, tasks, tiny_model
from icl_mech.anchors.compression import answer, encode_shared
from icl_mech.anchors.readout import target_logits
from icl_mech.anchors.reweighting import (
    AnchorReweighting,
    TrainedBeta,
    anchor_columns,
    auxiliary_loss,
    train_beta,
)
from icl_mech.anchors.reweighting_experiment import (
    ALL_TASKS,
    GAIN,
    ReweightingTable,
    predict_classes,
    split_for_reweighting,
)
from icl_mech.evaluation import build_prompts
from icl_mech.hooks import points
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.stats import bootstrap, paired
from icl_mech.threads import torch_threads

TASK = tasks.load("sentiment")


@pytest.fixture(autouse=True)
def _one_thread():
    """Two intra-op threads are many times slower than one when other processes share the cores."""
    with torch_threads(1):
        yield


def _shared_prompts(n=4):
    demos = [TASK.examples[0], TASK.examples[1]]
    return [ICLPrompt.build(TASK, demos, q) for q in TASK.examples[4 : 4 + n]]


def _beta(model, n_classes=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (model.cfg.n_layers, model.cfg.n_heads, n_classes)
    return torch.randn(shape, generator=generator)


def _reference_hook(beta, batch):
    """Scale pattern[b, h, q, p] by exp(beta[l, h, class(p)]), one element at a time."""

    def scale(pattern, hook):
        layer, out = int(hook.name.split(".")[1]), pattern.clone()
        for b, row in enumerate(batch.rows):
            for tokens, label in zip(row.labels, batch.demo_labels[b]):
                for p in tokens:
                    out[b, :, row.target, p] *= beta[layer, :, label].exp()
        return out

    return scale


def test_zero_beta_gives_exactly_the_unmodified_logits(tiny):
    batch = PromptBatch.from_prompts(tiny, build_prompts(TASK, 1, TASK.examples[:4], seed=0))
    zero = torch.zeros(tiny.cfg.n_layers, tiny.cfg.n_heads, 2)
    with torch.no_grad():
        assert torch.equal(
            target_logits(tiny, batch, AnchorReweighting(zero)), target_logits(tiny, batch)
        )
        cache, queries, _ = encode_shared(tiny, _shared_prompts())
        columns = anchor_columns(cache)
        plain = answer(tiny, cache, queries)
        assert torch.equal(
            answer(tiny, cache, queries, AnchorReweighting(zero, columns=columns)), plain
        )


def test_reweighting_matches_an_elementwise_reference(tiny):
    batch = PromptBatch.from_prompts(tiny, build_prompts(TASK, 2, TASK.examples[:3], seed=1))
    beta = _beta(tiny)
    reference = [
        HookSpec(p, _reference_hook(beta, batch)) for p in points(tiny, "attn.hook_pattern")
    ]
    with torch.no_grad():
        got = target_logits(tiny, batch, AnchorReweighting(beta))
        want = target_logits(tiny, batch, *reference)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - target_logits(tiny, batch)).abs().max() > 1e-3


def test_cached_demonstrations_give_the_full_prompt_reweighting(tiny):
    prompts = _shared_prompts()
    cache, queries, batch = encode_shared(tiny, prompts)
    beta = _beta(tiny, seed=2)
    with torch.no_grad():
        full = target_logits(tiny, batch, AnchorReweighting(beta))
        cached = answer(
            tiny, cache, queries, AnchorReweighting(beta, columns=anchor_columns(cache))
        )
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


def test_first_token_anchors_touch_one_token_per_label_word(tiny_llama):
    cache, _, batch = encode_shared(tiny_llama, _shared_prompts())
    every, first = anchor_columns(cache, "all"), anchor_columns(cache, "first")
    assert int((first >= 0).sum()) == len(batch.rows[0].labels) <= int((every >= 0).sum())


def test_training_lowers_the_auxiliary_loss_and_touches_no_parameter(tiny_llama):
    demos, aux, _ = split_for_reweighting(TASK, 4, 2, seed=0)
    trained = train_beta(
        tiny_llama, TASK, demos, aux, lr=0.1, epochs=3, batch_size=2, progress=False
    )
    before, after = trained.aux_loss
    assert after < before - 1e-4  # float32 noise is ~1e-7; a random bridge moves ~3e-4
    assert before == pytest.approx(auxiliary_loss(tiny_llama, None, TASK, demos, aux), abs=1e-5)
    assert after == pytest.approx(auxiliary_loss(tiny_llama, trained, TASK, demos, aux), abs=1e-5)
    assert all(p.grad is None for p in tiny_llama.parameters())
    assert trained.beta.abs().max() > 0 and not trained.beta.requires_grad
    again = train_beta(tiny_llama, TASK, demos, aux, lr=0.1, epochs=3, batch_size=2, progress=False)
    assert torch.equal(again.beta, trained.beta)  # deterministic


def test_predict_classes_is_the_argmax_of_the_full_prompt(tiny_gpt2):
    demos, _, test = split_for_reweighting(TASK, 6, 1, seed=0)
    predicted, gold = predict_classes(tiny_gpt2, TASK, demos, test, batch_size=4)
    batch = PromptBatch.from_prompts(tiny_gpt2, [ICLPrompt.build(TASK, demos, q) for q in test])
    with torch.no_grad():
        want = batch.class_logits(tiny_gpt2(batch.tokens, attention_mask=batch.attention_mask))
    assert torch.equal(predicted, want.argmax(-1)) and torch.equal(gold, batch.gold)


def test_save_and_load(tmp_path, tiny_llama, tiny_gpt2):
    beta = TrainedBeta(_beta(tiny_llama), "tiny-llama-3L", "sentiment", TASK.classes, losses=[0.5])
    beta.save(tmp_path / "beta")
    loaded = TrainedBeta.load(tmp_path / "beta", tiny_llama)
    assert torch.equal(loaded.beta, beta.beta) and loaded.classes == beta.classes
    with pytest.raises(IclMechError, match="does not fit"):
        TrainedBeta.load(tmp_path / "beta", tiny_model("llama", n_layers=2))


def test_clear_errors(tiny_llama):
    batch = PromptBatch.from_prompts(tiny_llama, build_prompts(TASK, 1, TASK.examples[:2]))
    with pytest.raises(IclMechError, match=r"needs \[n_layers, n_heads, n_classes\]"):
        target_logits(tiny_llama, batch, AnchorReweighting(torch.zeros(3, 2, 2)))
    with pytest.raises(IclMechError, match="covers 1 classes"):
        target_logits(tiny_llama, batch, AnchorReweighting(torch.zeros(3, 4, 1)))
    zero_shot = PromptBatch.from_prompts(tiny_llama, build_prompts(TASK, 0, TASK.examples[:2]))
    with pytest.raises(IclMechError, match="no label word"):
        target_logits(tiny_llama, zero_shot, AnchorReweighting(torch.zeros(3, 4, 2)))
    with pytest.raises(IclMechError, match="needs label positions"):
        cache, queries, _ = encode_shared(tiny_llama, _shared_prompts())
        answer(tiny_llama, cache, queries, AnchorReweighting(torch.zeros(3, 4, 2)))
    with pytest.raises(IclMechError, match="no label positions"):
        AnchorReweighting(torch.zeros(3, 4, 2), columns=torch.full((1, 5), -1)).specs(
            tiny_llama, None
        )
    with pytest.raises(IclMechError, match="lr > 0"):
        train_beta(tiny_llama, TASK, [], [], lr=0.0)


def test_batched_equals_one_by_one(tiny_llama):
    prompts = build_prompts(TASK, 1, TASK.examples[:3], seed=2)  # other demonstrations per row
    beta = _beta(tiny_llama, seed=3)
    with torch.no_grad():
        batch = PromptBatch.from_prompts(tiny_llama, prompts)
        together = target_logits(tiny_llama, batch, AnchorReweighting(beta))
        for b, prompt in enumerate(prompts):
            alone = PromptBatch.from_prompts(tiny_llama, [prompt])
            got = target_logits(tiny_llama, alone, AnchorReweighting(beta))[0]
            torch.testing.assert_close(got, together[b], atol=1e-5, rtol=0)


def test_table_gives_intervals_and_a_paired_gain_per_task_and_overall():
    conditions = {"vanilla 1-shot": 0, "vanilla 5-shot": 1, "re-weighted 1-shot": 2}
    records = [
        dict(task=t, seed=s, condition=c, item=i, query=f"q{i + s}",
             correct=float((i + k + (t == "b")) % 3 == 0))
        for t in ("a", "b") for s in (0, 1) for c, k in conditions.items() for i in range(6)
    ]  # fmt: skip
    table = ReweightingTable(records, []).table()
    assert list(table.index) == ["a", "b", ALL_TASKS]
    frame = pd.DataFrame(records)
    for name in table.index:
        part = frame if name == ALL_TASKS else frame[frame["task"] == name]
        by = {c: part[part["condition"] == c].reset_index(drop=True) for c in conditions}
        units = (by["vanilla 1-shot"]["task"] + "/" + by["vanilla 1-shot"]["query"]).tolist()
        gain = paired(by["re-weighted 1-shot"]["correct"] * 100,
                      by["vanilla 1-shot"]["correct"] * 100, units)  # fmt: skip
        accuracy = bootstrap(by["vanilla 5-shot"]["correct"] * 100, units)
        row = table.loc[name]
        assert row[GAIN] == gain.format(1) and row["gain_low"] == pytest.approx(gain.low)
        assert row["gain"] == pytest.approx(row["reweighted_1_shot"] - row["vanilla_1_shot"])
        assert row["vanilla 5-shot"] == accuracy.format(1)
        assert row["n"] == len(set(units)) == (7 if name != ALL_TASKS else 14)
