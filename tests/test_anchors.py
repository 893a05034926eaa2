"""Label words are anchors: saliency, flows, isolation, loyalty and AUC-ROC on tiny models."""

import pytest
import torch
import torch.nn.functional as F

from icl_mech import Capture, Demonstration, HookSpec, IclMechError, Task, attach, kinds, make
from icl_mech.anchors import (
    AnchorAuc,
    Flows,
    IsolateLabelWords,
    IsolateRandomWords,
    SaliencyProbe,
    anchor_auc,
    anchor_mask,
    cumulative_ratio,
    deep_layers,
    flow_values,
    flows,
    isolation_loyalty,
    jaccard,
    random_word_mask,
    roc_auc,
    saliency,
    shallow_layers,
    target_logits,
    top_k_jaccard,
)
from icl_mech.anchors.experiment import AnalysisSettings, analyse_prompts, task_prompts
from icl_mech.backends import is_bridge
from icl_mech.hooks import points
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.models import tiny_model
from icl_mech.prompt_batch import PromptBatch
from icl_mech.tasks import load


def make_batch(model, task="sentiment", n=3, seed=0):
    return PromptBatch.from_prompts(model, task_prompts(load(task), n, seed))


def multi_token_task() -> Task:
    """Sentiment with label words the tiny tokenizer splits into several tokens."""
    words = {"positive": "marvellous", "negative": "dreadful"}
    examples = [Demonstration(e.x, words[e.y]) for e in load("sentiment").examples]
    return Task("multi", tuple(examples), "Review: {x}\nSentiment:", ("marvellous", "dreadful"))


@pytest.fixture(scope="module")
def float64_model():
    model = tiny_model("llama", seed=1)
    model.cfg.dtype = torch.float64
    return model.double()


# ---------------------------------------------------------------- read-out and saliency


def test_target_logits_equal_full_forward(tiny):
    batch = make_batch(tiny)
    with torch.no_grad():
        full = tiny(batch.tokens, attention_mask=batch.attention_mask)[:, -1]
        fast = target_logits(tiny, batch)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_saliency_matches_finite_differences(float64_model):
    model = float64_model
    batch = make_batch(model, n=2)
    result = saliency(model, batch)
    labels = batch.gold

    def loss_with(layer, b, i, j, eps):
        def scale(pattern, hook):
            pattern = pattern.clone()
            pattern[b, :, i, j] *= 1 + eps
            return pattern

        spec = HookSpec(f"blocks.{layer}.attn.hook_pattern", scale)
        with torch.no_grad():
            logits = target_logits(model, batch, spec)[:, batch.class_token_ids]
        return F.cross_entropy(logits, labels, reduction="sum")

    row0 = batch.rows[0]
    q, p = row0.target, row0.label_first[0]
    edges = [(0, q, p), (1, q, p), (2, q, p), (0, p, p - 1), (1, p, p - 3), (1, q, q - 2)]
    # the bridge runs Hugging Face's attention, whose softmax is float32 even in a float64
    # model: a wider step (truncation error ~eps^2) and tolerances above float32 rounding of the
    # loss (~6e-8 over a step of 2 * eps)
    eps, rel, tol = (1e-2, 1e-2, 1e-5) if is_bridge(model) else (1e-5, 1e-5, 1e-10)
    for layer, i, j in edges:
        estimate = (loss_with(layer, 0, i, j, eps) - loss_with(layer, 0, i, j, -eps)) / (2 * eps)
        assert float(result.scores[0, layer, i, j]) == pytest.approx(
            abs(float(estimate)), rel=rel, abs=tol
        )


def test_saliency_gives_no_parameter_gradient_and_works_under_no_grad(tiny):
    batch = make_batch(tiny, n=2)
    reference = saliency(tiny, batch)
    with torch.set_grad_enabled(False):
        under_no_grad = saliency(tiny, batch)
    frozen = [(p, p.requires_grad) for p in tiny.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        with_frozen = saliency(tiny, batch)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    assert all(p.grad is None for p in tiny.parameters())
    assert all(p.requires_grad for p in tiny.parameters())  # flags restored
    assert reference.scores.abs().sum() > 0
    torch.testing.assert_close(under_no_grad.scores, reference.scores)
    torch.testing.assert_close(with_frozen.scores, reference.scores)


def test_probe_attached_without_gradients_says_so(tiny_llama):
    batch = make_batch(tiny_llama, n=1)
    probe = SaliencyProbe()
    with torch.no_grad():
        logits = target_logits(tiny_llama, batch, probe)
    with pytest.raises(IclMechError, match="not in the autograd graph"):
        probe.scores(logits.sum())
    with pytest.raises(IclMechError, match="no pattern was captured"):
        SaliencyProbe().scores(logits.sum())


def test_saliency_batched_equals_unbatched(tiny):
    batch = make_batch(tiny, n=3)
    together = saliency(tiny, batch)
    for b in range(len(batch)):
        alone = saliency(tiny, PromptBatch.from_prompts(tiny, [batch.prompts[b]]))
        offset = batch.seq_len - alone.scores.shape[-1]
        torch.testing.assert_close(
            together.scores[b, :, offset:, offset:], alone.scores[0], atol=1e-5, rtol=1e-4
        )
        assert float(together.scores[b, :, :offset].abs().sum()) == 0.0
        assert float(together.scores[b, :, :, :offset].abs().sum()) == 0.0


def test_saliency_layers_label_the_scores_in_the_order_given(tiny_llama):
    batch = make_batch(tiny_llama, n=2)
    every = saliency(tiny_llama, batch)
    chosen = saliency(tiny_llama, batch, layers=[2, 0, 2])
    assert chosen.layers == [2, 0] and chosen.scores.shape[1] == 2
    for i, layer in enumerate(chosen.layers):
        torch.testing.assert_close(chosen.scores[:, i], every.scores[:, layer])
    assert not torch.allclose(every.scores[:, 0], every.scores[:, 2])  # the order matters


def test_saliency_against_prediction_uses_the_models_choice(tiny_llama):
    batch = make_batch(tiny_llama, n=3)
    result = saliency(tiny_llama, batch, target="prediction")
    assert torch.equal(result.labels, result.predicted)


def test_saliency_sees_patterns_left_by_an_intervention(tiny_llama):
    batch = make_batch(tiny_llama, n=2)
    result = saliency(tiny_llama, batch, IsolateLabelWords([0]))
    forbidden = _forbidden_pairs(batch)
    assert float(result.scores[:, 0][forbidden].abs().max()) == 0.0
    assert float(result.scores[:, 1][forbidden].abs().max()) > 0.0


# ---------------------------------------------------------------- flows


def test_flows_on_a_hand_written_matrix():
    seq = 6  # position 0 is padding, anchors at 2 and 3, target q = 5
    scores = torch.full((1, 1, seq, seq), 1000.0)
    for i in range(1, seq):
        for j in range(1, i):
            scores[0, 0, i, j] = 10 * i + j
    valid = torch.tensor([[False, True, True, True, True, True]])
    anchors = torch.tensor([[False, False, True, True, False, False]])
    values = flow_values(scores, valid, anchors, torch.tensor([5]))[0, 0]
    wp = (21 + 31 + 32) / 3
    pq = (52 + 53) / 2
    ww = (41 + 42 + 43 + 51 + 54) / 5
    torch.testing.assert_close(values, torch.tensor([wp, pq, ww]))
    normalised = Flows(values[None, None], [0]).normalised()[0, 0]
    torch.testing.assert_close(normalised, torch.tensor([wp, pq, ww]) / (wp + pq + ww))


def test_flows_batched_equals_unbatched_and_frame(tiny):
    batch = make_batch(tiny, n=3)
    together = flows(saliency(tiny, batch), batch)
    for b in range(len(batch)):
        single = PromptBatch.from_prompts(tiny, [batch.prompts[b]])
        alone = flows(saliency(tiny, single), single)
        torch.testing.assert_close(together.values[b], alone.values[0], atol=1e-6, rtol=1e-4)
    frame = together.to_frame()
    assert len(frame) == 3 * tiny.cfg.n_layers * 3
    summary = together.summary()
    assert set(summary["flow"]) == {"S_wp", "S_pq", "S_ww"}
    sums = together.normalised().sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))


# ---------------------------------------------------------------- isolation and loyalty


def _forbidden_pairs(batch, rows=None):
    rows = batch.label_mask() if rows is None else rows
    seq = batch.seq_len
    earlier = torch.ones(seq, seq, dtype=torch.bool).tril(-1)
    real = batch.attention_mask.bool()
    return rows[:, :, None] & earlier & real[:, None, :]


@pytest.mark.parametrize("kind", ["label", "random"])
def test_isolated_patterns_are_zero_where_intended_and_rows_sum_to_one(tiny, kind):
    batch = make_batch(tiny, n=3)
    layers = [0, 2]
    if kind == "label":
        item, rows = IsolateLabelWords(layers), batch.label_mask()
    else:
        item, rows = IsolateRandomWords(layers, seed=3), random_word_mask(batch, seed=3)
    base = Capture(points(tiny, "attn.hook_pattern"))
    isolated = Capture(points(tiny, "attn.hook_pattern"))
    with torch.no_grad():
        target_logits(tiny, batch, base)
        target_logits(tiny, batch, item, isolated)
    forbidden = _forbidden_pairs(batch, rows)
    real = batch.attention_mask.bool()
    for layer in range(tiny.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_pattern"
        pattern = isolated.activations[name]
        sums = pattern.sum(-1)[real[:, None, :].expand_as(pattern[..., 0])]
        torch.testing.assert_close(sums, torch.ones_like(sums))
        at_forbidden = pattern.permute(0, 2, 3, 1)[forbidden]
        if layer in layers:
            assert float(at_forbidden.abs().max()) == 0.0
            diagonal = pattern.diagonal(dim1=-2, dim2=-1).permute(0, 2, 1)[rows]
            assert bool((diagonal == 1.0).all())
        else:
            assert float(at_forbidden.abs().max()) > 0.0
    # layer 0 rows that are not isolated see the same inputs, so they are unchanged
    name = "blocks.0.attn.hook_pattern"
    keep = (real & ~rows)[:, None, :, None].expand_as(base.activations[name])
    torch.testing.assert_close(isolated.activations[name][keep], base.activations[name][keep])


def test_isolating_zero_layers_gives_full_loyalty(tiny):
    batch = make_batch(tiny, n=3)
    loyalty = isolation_loyalty(tiny, batch, k=0)
    assert bool((loyalty.label == 1.0).all()) and bool((loyalty.word == 1.0).all())
    with torch.no_grad():
        base = target_logits(tiny, batch)
        nothing = target_logits(tiny, batch, IsolateLabelWords([]))
    assert torch.equal(base, nothing)


def test_deep_runs_resumed_from_the_residual_equal_full_runs(tiny):
    batch = make_batch(tiny, n=3)
    deep = deep_layers(tiny, 2)
    capture = Capture(points(tiny, "hook_resid_pre", deep[:1]))
    item = IsolateLabelWords(deep)
    with torch.no_grad():
        target_logits(tiny, batch, capture)
        residual = next(iter(capture.activations.values()))
        resumed = target_logits(tiny, batch, item, start_at_layer=deep[0], residual=residual)
        full = target_logits(tiny, batch, item)
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=1e-5)
    # and the shared-run loyalty equals the self-contained one
    reused = isolation_loyalty(tiny, batch, k=2)
    logits = target_logits(tiny, batch).detach()
    given = isolation_loyalty(tiny, batch, k=2, base_logits=logits, deep_residual=residual)
    assert torch.equal(reused.label, given.label)
    torch.testing.assert_close(reused.word, given.word)


def test_loyalty_batched_equals_unbatched(tiny):
    batch = make_batch(tiny, n=3)
    together = isolation_loyalty(tiny, batch, k=1, top_k=10)
    assert together.label.shape == (3, 4)
    for b in range(len(batch)):
        single = PromptBatch.from_prompts(tiny, [batch.prompts[b]])
        alone = isolation_loyalty(tiny, single, k=1, top_k=10)
        assert torch.equal(together.label[b], alone.label[0])
        torch.testing.assert_close(together.word[b], alone.word[0])
    assert set(together.summary()["isolated"]) == {"label", "random"}


def test_jaccard_and_label_loyalty_on_known_sets():
    a = torch.tensor([[1, 2, 3], [4, 5, 6]])
    b = torch.tensor([[3, 2, 1], [6, 7, 8]])
    torch.testing.assert_close(jaccard(a, b), torch.tensor([1.0, 1 / 5]))
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(top_k_jaccard(logits, logits.flip(-1), k=2), torch.tensor([0.0]))
    torch.testing.assert_close(top_k_jaccard(logits, logits * 2, k=3), torch.tensor([1.0]))


def test_random_words_avoid_labels_and_do_not_depend_on_batching(tiny_llama):
    batch = make_batch(tiny_llama, n=3)
    chosen = random_word_mask(batch, seed=5)
    assert torch.equal(chosen.sum(1), batch.label_mask().sum(1))
    assert not bool((chosen & batch.label_mask()).any())
    assert not bool(chosen[torch.arange(3), batch.targets].any())
    assert not bool((chosen & ~batch.attention_mask.bool()).any())
    assert not torch.equal(chosen, random_word_mask(batch, seed=6))
    for b in range(3):
        single = PromptBatch.from_prompts(tiny_llama, [batch.prompts[b]])
        offset = batch.seq_len - single.seq_len
        assert torch.equal(chosen[b, offset:], random_word_mask(single, seed=5)[0])
    assert torch.equal(random_word_mask(batch, n=2).sum(1), torch.full((3,), 2))


def test_multi_token_label_words_all_tokens_or_first(tiny_llama):
    task = multi_token_task()
    prompts = task_prompts(task, 2, 0)
    batch = PromptBatch.from_prompts(tiny_llama, prompts)
    every, first = anchor_mask(batch, "all"), anchor_mask(batch, "first")
    assert bool((every.sum(1) > first.sum(1)).all())
    assert torch.equal(first.sum(1), torch.full((2,), 2))
    result = saliency(tiny_llama, batch, IsolateLabelWords([1], anchors="all"))
    assert float(result.scores[:, 1][_forbidden_pairs(batch, every)].abs().max()) == 0.0
    assert not torch.equal(flows(result, batch, "all").values, flows(result, batch, "first").values)
    scores_sum = anchor_auc(tiny_llama, batch, anchors="all", span="sum").scores
    scores_first = anchor_auc(tiny_llama, batch, anchors="first").scores
    assert bool((scores_sum >= scores_first - 1e-6).all())


# ---------------------------------------------------------------- AUC-ROC and R_l


def test_roc_auc_on_known_scores():
    positive = torch.tensor([False, False, True, True])
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), positive) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), positive) == pytest.approx(1.0)
    assert roc_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), positive) == pytest.approx(0.0)
    assert roc_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), positive) == pytest.approx(0.5)
    nan_left_out = torch.tensor([0.1, float("nan"), 0.35, 0.8])
    assert roc_auc(nan_left_out, positive) == pytest.approx(1.0)
    assert torch.isnan(torch.tensor(roc_auc(torch.rand(4), torch.zeros(4, dtype=torch.bool))))
    torch.testing.assert_close(
        cumulative_ratio(torch.tensor([0.5, 0.7, 0.9])), torch.tensor([0.0, 1 / 3, 1.0])
    )
    torch.testing.assert_close(
        cumulative_ratio(torch.tensor([0.8, 0.3, 0.6])), torch.tensor([1.5, 0.5, 1.0])
    )
    assert bool(cumulative_ratio(torch.tensor([0.4, 0.6, 0.3])).isnan().all())


def test_anchor_auc_pooled_and_macro_on_known_scores():
    # 3 examples, 1 layer, 2 classes; predicted classes 0, 1, 1
    scores = torch.tensor([[[0.9, 0.2]], [[0.3, 0.6]], [[0.5, 0.4]]])
    result = AnchorAuc(scores, torch.tensor([0, 1, 1]), [0])
    # positives 0.9, 0.6, 0.4 vs negatives 0.2, 0.3, 0.5: 8 of 9 pairs ranked right
    assert float(result.auc()[0]) == pytest.approx(8 / 9)
    macro = AnchorAuc(scores, torch.tensor([0, 1, 1]), [0], average="macro")
    # class 0: pos 0.9 vs neg 0.3, 0.5 -> 1; class 1: pos 0.6, 0.4 vs neg 0.2 -> 1
    assert float(macro.auc()[0]) == pytest.approx(1.0)
    frame = result.to_frame()
    assert list(frame.columns) == ["task", "layer", "auc", "auc_low", "auc_high", "n", "R"]
    assert (frame["auc_low"] <= frame["auc"]).all() and (frame["auc"] <= frame["auc_high"]).all()


def test_class_scores_are_the_targets_attention_on_each_label_word(tiny):
    batch = make_batch(tiny, task="topic", n=2)
    capture = Capture(points(tiny, "attn.hook_pattern"))
    with torch.no_grad():
        target_logits(tiny, batch, capture)
    result = anchor_auc(tiny, batch)
    for b, (positions, classes) in enumerate(zip(batch.rows[0:2], batch.demo_labels)):
        for layer in range(tiny.cfg.n_layers):
            pattern = capture.activations[f"blocks.{layer}.attn.hook_pattern"][b]
            for tokens, c in zip(positions.labels, classes):
                expected = pattern[:, positions.target, tokens].sum()
                assert float(result.scores[b, layer, c]) == pytest.approx(float(expected), 1e-5)


def test_anchor_auc_batched_equals_unbatched(tiny):
    batch = make_batch(tiny, task="topic", n=3)
    together = anchor_auc(tiny, batch)
    for b in range(3):
        alone = anchor_auc(tiny, PromptBatch.from_prompts(tiny, [batch.prompts[b]]))
        torch.testing.assert_close(together.scores[b], alone.scores[0], atol=1e-5, rtol=1e-4)
        assert int(together.predicted[b]) == int(alone.predicted[0])


def test_analyse_prompts_keeps_prompt_order(tiny_llama):
    prompts = task_prompts(load("topic"), 4, 0)
    settings = AnalysisSettings(k=1, batch_size=3)
    analysis = analyse_prompts(tiny_llama, prompts, settings)
    for i in (0, 3):
        alone = analyse_prompts(tiny_llama, prompts[i : i + 1], settings)
        torch.testing.assert_close(
            analysis.flows.values[i], alone.flows.values[0], rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(
            analysis.auc.scores[i], alone.auc.scores[0], rtol=1e-4, atol=1e-6
        )
    assert len(analysis.to_frame()) == tiny_llama.cfg.n_layers


# ---------------------------------------------------------------- bad input and registry


def test_bad_input_raises_clear_errors(tiny_llama):
    model = tiny_llama
    batch = make_batch(model, n=2)
    with pytest.raises(IclMechError, match="out of range"):
        saliency(model, batch, layers=[0, 3])
    with pytest.raises(IclMechError, match=r"layer 5 out of range"):
        with attach(model, IsolateLabelWords([5]), batch=batch):
            pass
    with pytest.raises(IclMechError, match="k=4 layers"):
        shallow_layers(model, 4)
    with pytest.raises(IclMechError, match="k=4 layers"):
        isolation_loyalty(model, batch, k=4)
    with pytest.raises(IclMechError, match="k=-1"):
        deep_layers(model, -1)
    zero_shot = PromptBatch.from_prompts(model, [ICLPrompt.zero_shot(load("sentiment"), "fine.")])
    for call in (
        lambda: saliency(model, zero_shot),
        lambda: isolation_loyalty(model, zero_shot, k=1),
        lambda: anchor_auc(model, zero_shot),
        lambda: attach(model, IsolateLabelWords([0]), batch=zero_shot).__enter__(),
    ):
        with pytest.raises(IclMechError, match="no label word"):
            call()
    io = PromptBatch.from_prompts(model, task_prompts(load("antonym"), 1, 0, n_demonstrations=2))
    with pytest.raises(IclMechError, match="classification task"):
        saliency(model, io)
    with pytest.raises(IclMechError, match="anchors"):
        anchor_mask(batch, "middle")
    with pytest.raises(IclMechError, match="target"):
        saliency(model, batch, target="oracle")
    with pytest.raises(IclMechError, match="top_k"):
        isolation_loyalty(model, batch, k=1, top_k=0)
    with pytest.raises(IclMechError, match="fewer than"):
        random_word_mask(batch, n=10_000)
    for bad in (dict(anchors="middle"), dict(span="max"), dict(top_k=0), dict(tasks=("nope",))):
        with pytest.raises(IclMechError):
            AnalysisSettings(**bad)
    with pytest.raises(IclMechError, match="k=9"):
        analyse_prompts(model, task_prompts(load("sentiment"), 1, 0), AnalysisSettings(k=9))
    assert all(p.grad is None for p in model.parameters())


def test_kinds_are_catalogued():
    assert {"saliency", "isolate", "isolate-label-words", "isolate-random-words"} <= set(kinds())
    assert "query-attention" in kinds()
    item = make("isolate-label-words", layers=[0], anchors="first")
    assert repr(item) == "IsolateLabelWords(layers=[0], anchors='first')"


def test_reproduce_writes_every_figure_and_table(tiny_llama, tmp_path):
    from icl_mech.runner import reproduce

    report = reproduce("anchors", tiny_llama, quick=True, k=1, n_test=2, out=tmp_path,
                       progress=False)  # fmt: skip
    names = {p.name for p in tmp_path.iterdir()}
    expected = {"anchors_flows.png", "anchors_loyalty.png", "anchors_auc.png"}
    assert expected <= names and {"anchors_summary.md", "anchors_report.json"} <= names
    assert all((tmp_path / name).stat().st_size > 0 for name in names)
    assert set(report.headline) == {"sentiment", "topic"}
    assert set(report.headline["topic"]["loyalty"]) == {
        "shallow_label",
        "shallow_random",
        "deep_label",
        "deep_random",
    }
