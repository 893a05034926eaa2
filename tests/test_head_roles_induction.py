"""Induction and prefix-matching scores: a hand-built two-layer induction circuit, the tiny
models against a loop-by-loop reference, the embedded SmolLM2, errors and figures."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from icl_mech import IclMechError
from icl_mech.backends import TL_MAJOR
from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.head_roles.induction import (
    HeadScores,
    induction_scores,
    repeated_tokens,
    vocabulary,
)
from icl_mech.head_roles.induction_figures import induction_map, induction_vs_effect, spearman
from icl_mech.threads import torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads fight the other jobs on this 2-core machine; one is many times faster."""
    with torch_threads(1):
        yield


# --- a hand-built induction circuit -------------------------------------------------------------

VOCAB, N_CTX = 500, 48  # a large vocabulary: a random half rarely repeats a token
SCALE = 1000.0  # query scale: attention scores ~ SCALE / sqrt(d_head) apart, softmax ~ one-hot


@pytest.fixture(scope="module")
def circuit():
    """Two attention-only layers of one head, weights set by hand on one-hot subspaces of the
    residual stream: ``[token | position | previous token]`` (d_model = 2 * VOCAB + N_CTX).

    Layer 0 head 0 is a previous-token head: position i's query matches position i - 1's key
    (through the positional embedding); its value copies the token into the previous-token
    subspace. Layer 1 head 0 is an induction head: its query is the current token, its key the
    previous-token subspace, so it attends to the token after an earlier occurrence.

    The model has no tokenizer: tokens are drawn from all of its ``d_vocab`` and, as
    ``default_prepend_bos=False``, no BOS is needed."""
    if TL_MAJOR >= 4:
        pytest.skip("TransformerLens 4 has no HookedTransformer to build weights by hand")
    # TransformerLens 3.x only (4.x removed HookedTransformer)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    token, position, previous = 0, VOCAB, VOCAB + N_CTX  # where each subspace starts
    d_model, d_head = 2 * VOCAB + N_CTX, VOCAB
    cfg = HookedTransformerConfig(
        n_layers=2, n_heads=1, d_model=d_model, d_head=d_head, n_ctx=N_CTX, d_vocab=VOCAB,
        attn_only=True, normalization_type=None, positional_embedding_type="standard",
        default_prepend_bos=False, act_fn="relu", device="cpu", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    tokens, positions = torch.arange(VOCAB), torch.arange(N_CTX)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.embed.W_E[tokens, token + tokens] = 1.0
        model.pos_embed.W_pos[positions, position + positions] = 1.0
        model.unembed.W_U[token + tokens, tokens] = 1.0
        first, second = model.blocks[0].attn, model.blocks[1].attn
        first.W_Q[0, position + positions, positions] = SCALE  # query of i: e_i
        first.W_K[0, position + positions[:-1], positions[1:]] = 1.0  # key of i - 1: e_i
        first.W_V[0, token + tokens, tokens] = 1.0
        first.W_O[0, tokens, previous + tokens] = 1.0
        second.W_Q[0, token + tokens, tokens] = SCALE
        second.W_K[0, previous + tokens, tokens] = 1.0
        second.W_V[0, token + tokens, tokens] = 1.0
    return model.eval()


def test_hand_built_induction_head_scores_high_and_previous_token_head_low(circuit):
    scores = induction_scores(circuit, n_tokens=20, n_sequences=8, batch_size=3)
    induction, prefix = scores.mean_induction, scores.mean_prefix_matching
    assert induction.shape == (2, 1) and scores.induction.shape == (8, 2, 1)
    assert induction[1, 0] > 0.9, induction
    assert prefix[1, 0] < 0.1, prefix  # one position past the first occurrence, not on it
    assert induction[0, 0] < 0.1 and prefix[0, 0] < 0.1, (induction, prefix)
    assert scores.top(1) == [(1, 0)]
    assert scores.ranking() == [(1, 0), (0, 0)]


def test_no_bos_without_a_tokenizer_is_refused_where_the_model_prepends_one(circuit):
    circuit.cfg.default_prepend_bos = True
    try:
        with pytest.raises(IclMechError, match="default_prepend_bos"):
            induction_scores(circuit, n_tokens=5, n_sequences=1)
    finally:
        circuit.cfg.default_prepend_bos = False


# --- the tiny models ------------------------------------------------------------------------------


def reference(model, tokens: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores one query at a time, from a plain cached forward of each row."""
    offset = int(model.cfg.default_prepend_bos)  # BOS first, then the two copies
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    induction, prefix = (
        torch.zeros(len(tokens), layers, heads),
        torch.zeros(len(tokens), layers, heads),
    )
    for s, row in enumerate(tokens):
        _, cache = model.run_with_cache(row[None], attention_mask=torch.ones_like(row[None]))
        for layer in range(layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
            for j in range(n - 1):
                induction[s, layer] += pattern[:, offset + n + j, offset + j + 1] / (n - 1)
                prefix[s, layer] += pattern[:, offset + n + j, offset + j] / (n - 1)
    return induction, prefix


def test_tokens_are_repeated_random_non_special_ids_after_bos_where_the_model_prepends_it(tiny):
    tokens = repeated_tokens(tiny, n_tokens=12, n_sequences=5, seed=3)
    bos = tiny.cfg.default_prepend_bos
    assert tokens.shape == (5, 24 + bos)
    if bos:
        assert (tokens[:, 0] == tiny.tokenizer.bos_token_id).all()
    first, second = tokens[:, bos : bos + 12], tokens[:, bos + 12 :]
    assert torch.equal(first, second)
    special = torch.tensor(tiny.tokenizer.all_special_ids)
    assert not torch.isin(first, special).any()
    assert not torch.isin(vocabulary(tiny), special).any()
    assert len(vocabulary(tiny)) == tiny.cfg.d_vocab - len(special)
    assert torch.equal(tokens, repeated_tokens(tiny, n_tokens=12, n_sequences=5, seed=3))
    assert not torch.equal(tokens, repeated_tokens(tiny, n_tokens=12, n_sequences=5, seed=4))


def test_tiny_scores_match_the_reference_batched_and_unbatched(tiny):
    n, count = 10, 4
    scores = induction_scores(tiny, n_tokens=n, n_sequences=count, seed=1, batch_size=8)
    layers, heads = tiny.cfg.n_layers, tiny.cfg.n_heads
    assert isinstance(scores, HeadScores)
    assert scores.induction.shape == scores.prefix_matching.shape == (count, layers, heads)
    assert scores.mean_induction.shape == (layers, heads)
    for values in (scores.induction, scores.prefix_matching):
        assert ((values >= 0) & (values <= 1)).all()
    one = induction_scores(tiny, n_tokens=n, n_sequences=count, seed=1, batch_size=1)
    torch.testing.assert_close(one.induction, scores.induction, atol=1e-6, rtol=0)
    torch.testing.assert_close(one.prefix_matching, scores.prefix_matching, atol=1e-6, rtol=0)
    induction, prefix = reference(tiny, repeated_tokens(tiny, n, count, seed=1), n)
    torch.testing.assert_close(scores.induction, induction, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.prefix_matching, prefix, atol=1e-5, rtol=0)
    again = induction_scores(tiny, n_tokens=n, n_sequences=count, seed=1, batch_size=8)
    assert torch.equal(again.induction, scores.induction)
    assert torch.equal(again.prefix_matching, scores.prefix_matching)
    other = induction_scores(tiny, n_tokens=n, n_sequences=count, seed=2)
    assert not torch.allclose(other.induction, scores.induction)
    assert (scores.n_tokens, scores.seed, other.seed) == (n, 1, 2)


def test_top_and_ranking_order_by_mean_with_ties_by_layer_then_head():
    # means [[0.25, 0.5], [0.5, 0.25]] (exact in binary): two ties, broken by layer
    induction = torch.tensor([[[0.25, 0.5], [0.5, 0.125]], [[0.25, 0.5], [0.5, 0.375]]])
    scores = HeadScores(induction, 1 - induction, n_tokens=4, seed=0)
    assert scores.ranking() == [(0, 1), (1, 0), (0, 0), (1, 1)]
    assert scores.top(2) == [(0, 1), (1, 0)]
    assert scores.top(1, "prefix_matching") == [(0, 0)]
    assert scores.top(0) == []
    frame = scores.to_frame()
    assert list(frame.columns) == [
        "layer", "head", "induction", "induction_low", "induction_high", "prefix_matching",
        "prefix_matching_low", "prefix_matching_high", "n", "rank_induction",
    ]  # fmt: skip
    assert frame["rank_induction"].tolist() == [3, 1, 2, 4]
    assert frame["n"].tolist() == [2] * 4
    assert frame["induction"].tolist() == [0.25, 0.5, 0.5, 0.25]
    assert "L0H1" in repr(scores)


# --- the embedded SmolLM2 -----------------------------------------------------------------------


def test_smollm2_has_clear_induction_heads(embedded):
    # measured (8 sequences of 2 x 30 tokens, seed 0): the best head L18H6 scores 0.89, then
    # L17H4 0.78, L17H3 0.78, L17H5 0.64, L18H7 0.58; the median head 0.009
    scores = induction_scores(embedded, n_tokens=30, n_sequences=8, batch_size=8)
    mean = scores.mean_induction
    best = mean[scores.top(1)[0]]
    assert best > 0.5 and best > 20 * mean.median(), (best, mean.median())
    assert scores.prefix_matching.max() <= 1 and scores.induction.min() >= 0
    frame = scores.to_frame()
    assert len(frame) == embedded.cfg.n_layers * embedded.cfg.n_heads
    for score in ("induction", "prefix_matching"):
        assert (frame[f"{score}_low"] <= frame[score]).all()
        assert (frame[score] <= frame[f"{score}_high"]).all()
    assert frame.loc[frame["rank_induction"] == 1, "induction"].item() == pytest.approx(float(best))


# --- errors ---------------------------------------------------------------------------------------


def test_bad_arguments_are_errors_naming_the_value(tiny_gpt2):
    with pytest.raises(IclMechError, match="n_tokens=1 "):
        induction_scores(tiny_gpt2, n_tokens=1)
    # 2 * 256 + BOS = 513 positions, n_ctx is 512
    with pytest.raises(IclMechError, match=r"n_tokens=256 .*n_ctx=512.*2\.\.255"):
        induction_scores(tiny_gpt2, n_tokens=256)
    with pytest.raises(IclMechError, match="n_tokens=True"):
        induction_scores(tiny_gpt2, n_tokens=True)
    with pytest.raises(IclMechError, match="n_sequences=0"):
        induction_scores(tiny_gpt2, n_sequences=0)
    with pytest.raises(IclMechError, match="seed=-1"):
        induction_scores(tiny_gpt2, seed=-1)
    with pytest.raises(IclMechError, match="batch_size=0"):
        induction_scores(tiny_gpt2, n_tokens=4, n_sequences=1, batch_size=0)
    scores = HeadScores(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), n_tokens=4, seed=0)
    with pytest.raises(IclMechError, match="k=13.*12 heads"):
        scores.top(13)
    with pytest.raises(IclMechError, match="k=True"):
        scores.top(True)
    with pytest.raises(IclMechError, match="k=-1"):
        scores.top(-1)
    with pytest.raises(IclMechError, match="k=2.0"):
        scores.top(2.0)
    with pytest.raises(IclMechError, match="'inductoin'.*did you mean 'induction'"):
        scores.top(1, score="inductoin")
    with pytest.raises(IclMechError, match="'prefix'"):
        scores.ranking("prefix")


class SpecialTokenizer:
    """A tokenizer stand-in: ``size`` ids, of which ``special`` are special; BOS is 0."""

    bos_token_id = 0

    def __init__(self, special, size=3):
        self.all_special_ids, self.size = special, size

    def __len__(self):
        return self.size


def stand_in(d_vocab, tokenizer, prepend_bos=False):
    """What ``vocabulary`` and ``repeated_tokens`` read of a model."""
    cfg = SimpleNamespace(
        d_vocab=d_vocab, model_name="m", n_ctx=512, default_prepend_bos=prepend_bos
    )
    return SimpleNamespace(cfg=cfg, tokenizer=tokenizer)


def test_tokens_are_drawn_from_the_ordinary_ids_only():
    model = stand_in(6, SpecialTokenizer([0, 2], size=4), prepend_bos=True)
    assert vocabulary(model).tolist() == [1, 3]  # not 4, 5: past the tokenizer
    tokens = repeated_tokens(model, n_tokens=100, n_sequences=2, seed=0)
    assert (tokens[:, 0] == 0).all()
    assert set(tokens[:, 1:].unique().tolist()) == {1, 3}


def test_a_vocabulary_of_fewer_than_two_ordinary_tokens_is_refused():
    assert vocabulary(stand_in(2, None)).tolist() == [0, 1]
    with pytest.raises(IclMechError, match=r"m has 1 token id.*special tokens \[0, 2\]"):
        vocabulary(stand_in(5, SpecialTokenizer([0, 2])))
    with pytest.raises(IclMechError, match="m has 1 token id.*d_vocab=1"):
        induction_scores(stand_in(1, None), n_tokens=3)


# --- figures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_scores(tiny_llama):
    return induction_scores(tiny_llama, n_tokens=8, n_sequences=4, batch_size=2, progress="map")


def test_induction_map_draws_both_scores_with_a_colourbar(tiny_scores):
    fig = induction_map(tiny_scores, k=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3  # two panels and the colourbar
    assert [ax.get_title() for ax in fig.axes[:2]] == ["induction", "prefix matching"]
    circles = fig.axes[0].collections[-1].get_offsets()
    assert [(int(y), int(x)) for x, y in circles] == tiny_scores.top(3)
    fig.canvas.draw()


def test_induction_vs_effect_draws_the_heads_of_the_effect_layers(tiny_scores):
    generator = torch.Generator().manual_seed(0)
    n_heads = tiny_scores.n_heads

    def effect(task):
        values = torch.rand(5, 2, n_heads, generator=generator)
        return IndirectEffect(task, (1, 2), torch.zeros(2, n_heads, 16), values, torch.zeros(5), 3)

    effects = [effect("antonym"), effect("capital")]
    fig = induction_vs_effect(tiny_scores, effects)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # the scatter and its colourbar
    ax = fig.axes[0]
    drawn = ax.collections[0].get_offsets()
    assert len(drawn) == 2 * n_heads
    mean = (effects[0].mean + effects[1].mean).numpy().reshape(-1) / 2
    np.testing.assert_allclose(drawn[:, 1], mean, atol=1e-6)
    np.testing.assert_allclose(drawn[:, 0], tiny_scores.mean_induction[1:3].reshape(-1), atol=1e-6)
    rho = spearman(drawn[:, 0], drawn[:, 1])
    assert f"{rho:.2f}" in ax.get_title() and "mean over 2 tasks" in ax.get_title()
    assert any(t.get_text().startswith("L") for t in ax.texts)
    fig.canvas.draw()
    assert len(induction_vs_effect(tiny_scores, effects[0]).axes) == 2


def test_spearman_matches_scipy_and_is_nan_for_a_constant_axis():
    stats = pytest.importorskip("scipy.stats")
    x, y = np.array([0.1, 0.4, 0.4, 0.9, 0.3]), np.array([1.0, 0.2, 0.5, 0.7, 0.7])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert math.isnan(spearman(x, np.ones(5)))
