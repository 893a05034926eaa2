"""One vector vocabulary: every kind takes ``layer``/``layers``, ``strength`` and ``positions``
as keywords in ``intervention`` and ``apply``; ``apply`` is never a silent no-op."""

import random

import pytest
import torch

from icl_mech import PromptBatch, cli, run, tasks
from icl_mech.anchors.reweighting import AnchorReweighting, TrainedBeta
from icl_mech.function_vectors import Settings as FunctionVectorSettings
from icl_mech.function_vectors.vector import FunctionVector
from icl_mech.hooks import HookSpec
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.icv import ICVSteering, extract_icv
from icl_mech.task_vectors import Settings as TaskVectorSettings
from icl_mech.task_vectors import draw_dummies, extract, mean_difference
from icl_mech.task_vectors.patching import AddToResidual, ReplaceResidual
from icl_mech.threads import torch_threads

ANTONYM = tasks.load("antonym")
SENTIMENT = tasks.load("sentiment")
PAIRS = tasks.load_pairs("negative_positive")[:6]
KINDS = ("theta", "mean-difference", "function-vector", "icv", "trained-beta")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def _vectors(model):
    rng = random.Random(0)
    sets = [ANTONYM.sample_demonstrations(3, rng) for _ in range(2)]
    dummies = draw_dummies(ANTONYM, sets, 2, seed=0)
    theta = extract(model, ANTONYM, sets, dummies, seed=0).mean()
    generator, name = torch.Generator().manual_seed(0), model.cfg.model_name
    d_model, n_layers, n_heads = model.cfg.d_model, model.cfg.n_layers, model.cfg.n_heads
    contributions = torch.randn(2, d_model, generator=generator)
    fv = FunctionVector(contributions.sum(0), contributions, ((0, 0), (1, 1)), {"model": name})
    beta = torch.randn(n_layers, n_heads, len(SENTIMENT.classes), generator=generator)
    return {
        "theta": theta,
        "mean-difference": mean_difference(model, theta, ANTONYM, dummies),
        "function-vector": fv,
        "icv": extract_icv(model, PAIRS),
        "trained-beta": TrainedBeta(beta, name, SENTIMENT.name, SENTIMENT.classes, d_model=d_model),
    }


# (keywords, the registry kind the keywords must build, as the method would build it by hand)
def _how(kind, vector, layer):
    if kind == "theta":
        return {"layer": layer}, ReplaceResidual(vector.at(layer)[0], layer, "last")
    if kind == "mean-difference":
        return {"layer": layer, "strength": 1.5}, AddToResidual({layer: vector.at(layer)[0]}, 1.5)
    if kind == "function-vector":
        return {"layer": layer, "strength": 2.0}, AddToResidual({layer: vector.values}, 2.0)
    if kind == "icv":
        return {"strength": 0.1}, ICVSteering(vector, 0.1)
    return {}, AnchorReweighting(vector.beta, vector.anchors)


def _batch(model, kind):
    if kind == "trained-beta":
        demos = list(SENTIMENT.examples[:2])
        prompts = [ICLPrompt.build(SENTIMENT, demos, q) for q in SENTIMENT.examples[4:7]]
    else:
        prompts = [ICLPrompt.zero_shot(ANTONYM, q) for q in ANTONYM.examples[30:33]]
    return PromptBatch.from_prompts(model, prompts)


@pytest.fixture(scope="module")
def tiny_vectors(tiny_llama):
    return _vectors(tiny_llama)


def _logits(model, batch, *items):
    with torch.no_grad():
        return run(model, batch, *items)


@pytest.mark.parametrize("kind", KINDS)
def test_positional_arguments_are_a_type_error_naming_the_keywords(kind, tiny_vectors, tiny_llama):
    vector = tiny_vectors[kind]
    with pytest.raises(TypeError, match=r"keyword arguments only.*layer=.*strength=.*positions="):
        vector.apply(tiny_llama, 5)
    with pytest.raises(TypeError, match=r"keyword arguments only.*layer=.*strength=.*positions="):
        vector.intervention(5)
    with pytest.raises(TypeError, match="did you mean strength="):
        vector.intervention(scale=2.0)
    with pytest.raises(TypeError, match="not both"):
        vector.intervention(layer=1, layers=[1])


@pytest.mark.parametrize("kind", KINDS)
def test_keywords_build_what_the_registry_kind_does(kind, tiny_vectors, tiny_llama):
    vector, batch = tiny_vectors[kind], _batch(tiny_llama, kind)
    how, reference = _how(kind, vector, 1)
    expected = _logits(tiny_llama, batch, reference)
    assert not torch.allclose(expected, _logits(tiny_llama, batch))
    torch.testing.assert_close(_logits(tiny_llama, batch, vector.intervention(**how)), expected)
    with torch.no_grad(), vector.apply(tiny_llama, batch=batch, **how) as hooked:
        inside = hooked(batch.tokens, attention_mask=batch.attention_mask)
    torch.testing.assert_close(inside, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_apply_without_with_steers_until_removed(kind, tiny_vectors, tiny_llama):
    vector, batch = tiny_vectors[kind], _batch(tiny_llama, kind)
    how, _ = _how(kind, vector, 1)
    plain = _logits(tiny_llama, batch)
    handle = vector.apply(tiny_llama, batch=batch, **how)
    try:
        steered = _logits(tiny_llama, batch)
    finally:
        handle.remove()
    assert not torch.allclose(steered, plain), "apply without with changed nothing"
    assert torch.equal(_logits(tiny_llama, batch), plain), "hooks left after remove()"
    handle.remove()  # twice is harmless


@pytest.mark.parametrize("kind", KINDS)
def test_strength_zero_changes_nothing(kind, tiny_vectors, tiny_llama):
    vector, batch = tiny_vectors[kind], _batch(tiny_llama, kind)
    how, _ = _how(kind, vector, 1)
    plain = _logits(tiny_llama, batch)
    zero = _logits(tiny_llama, batch, vector.intervention(**{**how, "strength": 0.0}))
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-6)


def test_replacement_strength_interpolates(tiny_vectors, tiny_llama):
    theta, batch = tiny_vectors["theta"], _batch(tiny_llama, "theta")
    point = "blocks.1.hook_resid_post"
    clean = _state(tiny_llama, batch, point)
    half = _state(tiny_llama, batch, point, theta.intervention(layer=1, strength=0.5))
    torch.testing.assert_close(half[:, -1], 0.5 * clean[:, -1] + 0.5 * theta.at(1)[0])
    assert torch.equal(half[:, :-1], clean[:, :-1])
    full = _state(tiny_llama, batch, point, theta.intervention(layer=1))
    assert torch.equal(full[:, -1], theta.at(1)[0].expand_as(full[:, -1]))


def _state(model, batch, point, *items):
    store = {}

    def keep(activation, hook):
        store["value"] = activation.detach().clone()

    with torch.no_grad():
        run(model, batch, *items, HookSpec(point, keep))
    return store["value"]


def test_trained_beta_layers_and_fixed_positions(tiny_vectors, tiny_llama):
    beta, batch = tiny_vectors["trained-beta"], _batch(tiny_llama, "trained-beta")
    only = beta.beta.clone()
    only[[0, 2]] = 0.0
    expected = _logits(tiny_llama, batch, AnchorReweighting(only, beta.anchors))
    torch.testing.assert_close(_logits(tiny_llama, batch, beta.intervention(layer=1)), expected)
    with pytest.raises(Exception, match="positions are fixed"):
        beta.intervention(positions="all")


@pytest.mark.embedded
@pytest.mark.parametrize("kind", KINDS)
def test_keywords_give_the_registry_kinds_logits_on_the_embedded_model(kind, embedded):
    vector = _vectors(embedded)[kind]
    batch = _batch(embedded, kind)
    how, reference = _how(kind, vector, 12 if kind != "theta" else 1)
    with torch_threads(1):
        torch.testing.assert_close(
            _logits(embedded, batch, vector.intervention(**how)),
            _logits(embedded, batch, reference),
            rtol=0,
            atol=0,
        )


@pytest.mark.parametrize("old, new", [("scale", "strength"), ("shots", "n_demonstrations")])
def test_an_old_word_for_a_setting_names_the_one_word(old, new, capsys):
    if new in TaskVectorSettings.keys():
        with pytest.raises(Exception, match=f"'{old}' is called '{new}'"):
            TaskVectorSettings.quick(**{old: 2})
    with pytest.raises(Exception, match=f"'{old}' is called '{new}'"):
        FunctionVectorSettings.quick(**{old: 2})
    argv = ["reproduce", "function-vectors", "--quick", "--model", "tiny-llama"]
    assert cli.main([*argv, "--set", f"{old}=2"]) == 2
    assert f"'{old}' is called '{new}'" in capsys.readouterr().err
